"""`model evaluate` scores labelled rows per version and records it; `promote --require-better` reads the records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from artifacts.registry import Registry
from demo.models import make_mlp, make_sklearn_mlp, sklearn_mlp_data
from registry import metrics
from registry.evaluate import evaluate_versions, require_better
from registry.labelled import read_labelled
from registry.push import push_model
from schemas.errors import ConfigError
from streamscore import cli

Array = np.ndarray[Any, Any]


def write_labelled(path: Path, rows: Array, labels: Array) -> Path:
    """A CSV with a header: feature columns f0, f1, ... then `label`."""
    header = ",".join([*(f"f{i}" for i in range(rows.shape[1])), "label"])
    body = [",".join([*(repr(float(v)) for v in row), str(label)]) for row, label in zip(rows, labels, strict=True)]
    path.write_text("\n".join([header, *body]) + "\n")
    return path


@pytest.mark.parametrize("classes", [2, 4])
def test_f1_and_auc_match_scikit_learn(classes: int) -> None:
    """Binary F1 of the positive class / macro F1, and (one-vs-rest macro) AUC with ties, as scikit-learn has them."""
    rng = np.random.default_rng(classes)
    truth = rng.integers(0, classes, 500)
    scores = rng.dirichlet(np.ones(classes), 500).round(2)  # rounded: ties
    scores /= scores.sum(axis=1, keepdims=True)
    predicted = scores.argmax(axis=1)
    text = [str(c) for c in range(classes)]
    expected_auc = roc_auc_score(truth, scores[:, 1] if classes == 2 else scores, multi_class="ovr")

    assert pytest.approx(expected_auc, abs=1e-12) == metrics.auc(metrics.label_text(truth), scores, text)
    expected_f1 = f1_score(truth, predicted, average="binary" if classes == 2 else "macro")
    assert pytest.approx(expected_f1, abs=1e-12) == metrics.f1(metrics.label_text(truth), metrics.label_text(predicted))


def test_labels_compare_as_text_whatever_their_type() -> None:
    """1, 1.0, "1" and b"1" are one class; "1.5" and "yes" stay as they are."""
    assert ["1", "1", "1", "1", "1.5", "yes"] == list(metrics.label_text([1, 1.0, "1", b"1", "1.5", "yes"]))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """Versions 1 (a scikit-learn MLPClassifier with a ZipMap output) and 2 (the same one trained on other rows)."""
    registry = Registry.at(tmp_path / "registry")
    push_model(registry, make_sklearn_mlp(tmp_path / "one.onnx"), name="classifier")
    push_model(registry, make_sklearn_mlp(tmp_path / "two.onnx", seed=1), name="classifier")
    return registry


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The rows version 1 was trained on, with their labels."""
    rows, labels = sklearn_mlp_data()
    return write_labelled(tmp_path / "labelled.csv", rows, labels)


def test_evaluate_scores_each_version_and_records_it(registry: Registry, data: Path) -> None:
    """Accuracy, F1 and AUC of each version from its ZipMap and label outputs, recorded with the data's sha256."""
    rows = read_labelled(data, "label")
    found = evaluate_versions(registry, "classifier", [], rows, "1", seconds=0.01)

    one, two = found
    assert ("1", "2", 1.0) == (one.version, two.version, one.agreement)
    assert one.metrics["accuracy"] > 0.9 > two.metrics["accuracy"]  # version 2 never saw these rows
    assert (256, "default") == (one.batch, one.batch_source)
    [event] = registry.manifest("classifier", "2").history
    assert ("evaluate", rows.sha256, 600) == (event["event"], event["data"]["sha256"], event["data"]["rows"])
    assert two.metrics == event["metrics"] and {"accuracy", "f1", "auc"} == set(event["metrics"])


def test_evaluate_a_regression_gives_rmse(tmp_path: Path) -> None:
    """A model with one float value per row is scored by RMSE against numeric labels (and no label agreement)."""
    registry = Registry.at(tmp_path / "registry")
    push_model(registry, make_mlp(tmp_path / "one.onnx", features=4, hidden=8, classes=1), name="score")
    rows = np.random.default_rng(0).standard_normal((50, 4))
    data = write_labelled(tmp_path / "labelled.csv", rows, np.full(50, 0.5))

    [found] = evaluate_versions(registry, "score", ["1"], read_labelled(data, "label"), None, seconds=0.01)

    assert pytest.approx(0.5) == found.metrics["rmse"]  # a one-class softmax always says 1.0
    assert found.agreement is None


def test_cli_prints_the_metric_per_version_as_json(
    registry: Registry, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json` prints the data's digest, the current version and each version's metrics."""
    code = cli.main(
        [
            *("model", "--model-root", str(tmp_path / "registry"), "evaluate", "classifier", "2"),
            *("--data", str(data), "--label", "label", "--current", "1", "--seconds", "0.01", "--json"),
        ]
    )

    body = orjson.loads(capsys.readouterr().out)
    assert (0, "1", ["2"]) == (code, body["current"], [v["version"] for v in body["versions"]])
    assert read_labelled(data, "label").sha256 == body["data"]["sha256"]


def test_require_better_refuses_a_worse_candidate_and_says_what_to_run(registry: Registry, data: Path) -> None:
    """Before any evaluation it names the command; after it, version 2's lower accuracy is refused, 1 passes."""
    with pytest.raises(ConfigError, match="2 of classifier has no recorded accuracy; run `streamscore model evaluate"):
        require_better(registry, "classifier", "2", "1", "accuracy")

    evaluate_versions(registry, "classifier", [], read_labelled(data, "label"), "1", seconds=0.01)

    with pytest.raises(ConfigError, match=r"refusing to promote classifier 2: its accuracy 0\.\d+ is worse than"):
        require_better(registry, "classifier", "2", "1", "accuracy")
    require_better(registry, "classifier", "1", "2", "accuracy")


def test_require_better_needs_the_current_version_on_the_same_data(
    registry: Registry, data: Path, tmp_path: Path
) -> None:
    """Evaluations on different files are not compared: the current version's record on the other file is missing."""
    rows, labels = sklearn_mlp_data()
    other = write_labelled(tmp_path / "other.csv", rows[:300], labels[:300])
    evaluate_versions(registry, "classifier", ["1"], read_labelled(other, "label"), None, seconds=0.01)
    evaluate_versions(registry, "classifier", ["2"], read_labelled(data, "label"), None, seconds=0.01)

    with pytest.raises(ConfigError, match="current version 1 of classifier has no accuracy recorded on the data"):
        require_better(registry, "classifier", "2", "1", "accuracy")


def test_a_missing_label_column_is_named(tmp_path: Path) -> None:
    """--label naming no column says which columns there are."""
    path = write_labelled(tmp_path / "d.csv", np.zeros((2, 2)), np.zeros(2))

    with pytest.raises(ConfigError, match=r"no column 'target' in its header \(f0, f1, label\)"):
        read_labelled(path, "target")
