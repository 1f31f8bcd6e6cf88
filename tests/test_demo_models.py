"""The demo model builders write models that onnxruntime loads and scores as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from demo import models


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failing-model test would otherwise print a kernel error
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_mlp_rows_are_probability_distributions(tmp_path: Path) -> None:
    """Every MLP output row is non-negative, has `classes` entries and sums to 1."""
    session = _session(models.make_mlp(tmp_path / "mlp.onnx", features=8, classes=3))
    rows = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)

    (probabilities,) = session.run(["probabilities"], {"x": rows})

    assert probabilities.shape == (5, 3)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), np.ones(5), rtol=1e-5)


def test_mlp_declares_a_symbolic_batch_dimension(tmp_path: Path) -> None:
    """The MLP's input and output batch dimension is the symbol "N"."""
    session = _session(models.make_mlp(tmp_path / "mlp.onnx", features=8, classes=3))

    assert _signature(session.get_inputs()[0]) == ("x", "tensor(float)", ["N", 8])
    assert _signature(session.get_outputs()[0]) == ("probabilities", "tensor(float)", ["N", 3])


def test_mlp_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Two builds with the same seed write byte-identical files."""
    first = models.make_mlp(tmp_path / "a.onnx", seed=7)
    second = models.make_mlp(tmp_path / "b.onnx", seed=7)

    assert first.read_bytes() == second.read_bytes()


def test_mlp_scale_gives_a_different_version(tmp_path: Path) -> None:
    """Same seed, different scale: the two models disagree on the same rows."""
    rows = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    v1 = _session(models.make_mlp(tmp_path / "v1.onnx", scale=1.0)).run(None, {"x": rows})[0]
    v2 = _session(models.make_mlp(tmp_path / "v2.onnx", scale=3.0)).run(None, {"x": rows})[0]

    assert not np.allclose(v1, v2)


def test_sklearn_model_matches_sklearn(tmp_path: Path) -> None:
    """The converted classifier gives scikit-learn's labels and probabilities for the same rows."""
    session = _session(models.make_sklearn_classifier(tmp_path / "skl.onnx"))
    rows = models.sklearn_sample_rows(20)
    expected_labels, expected_proba = models.sklearn_reference(rows)

    labels, zipmap = session.run(None, {"x": rows})

    np.testing.assert_array_equal(expected_labels, labels)
    proba = np.array([[row[c] for c in sorted(row)] for row in zipmap])
    np.testing.assert_allclose(expected_proba, proba, atol=1e-5)


def test_sklearn_model_has_default_zipmap_outputs(tmp_path: Path) -> None:
    """Default skl2onnx options: an int64 label tensor and a sequence-of-maps probability output."""
    session = _session(models.make_sklearn_classifier(tmp_path / "skl.onnx"))

    assert [_signature(i) for i in session.get_inputs()] == [("x", "tensor(float)", [None, 4])]
    assert [_signature(o) for o in session.get_outputs()] == [
        ("output_label", "tensor(int64)", [None]),
        ("output_probability", "seq(map(int64,tensor(float)))", []),
    ]


def test_failing_model_scores_good_rows(tmp_path: Path) -> None:
    """Rows whose first feature is in [0, 10) score to the truncated first feature."""
    session = _session(models.make_failing_model(tmp_path / "fail.onnx", features=4))
    rows = np.array([[0, 5, 5, 5], [3.7, 0, 0, 0], [9.9, 1, 2, 3]], dtype=np.float32)

    (y,) = session.run(None, {"x": rows})

    np.testing.assert_array_equal(np.array([[0], [3], [9]], dtype=np.float32), y)


def test_failing_model_raises_for_a_bad_row(tmp_path: Path) -> None:
    """A batch holding one row with first feature 100 makes onnxruntime raise InvalidArgument."""
    session = _session(models.make_failing_model(tmp_path / "fail.onnx", features=4))
    rows = np.array([[1, 0, 0, 0], [100, 0, 0, 0]], dtype=np.float32)

    with pytest.raises(InvalidArgument, match="indices element out of data bounds, idx=100"):
        session.run(None, {"x": rows})


def test_fixed_batch_model_declares_batch_of_one(tmp_path: Path) -> None:
    """The fixed-batch model's input shape is exactly [1, 4] and it sums the features."""
    session = _session(models.make_fixed_batch_model(tmp_path / "fixed.onnx", features=4))

    (y,) = session.run(None, {"x": np.array([[1, 2, 3, 4]], dtype=np.float32)})

    assert _signature(session.get_inputs()[0]) == ("x", "tensor(float)", [1, 4])
    np.testing.assert_array_equal(np.array([[10]], dtype=np.float32), y)


def test_int_model_sums_int64_rows(tmp_path: Path) -> None:
    """The int model maps INT64 [N, 3] ids to their INT64 [N, 1] row sums."""
    session = _session(models.make_int_model(tmp_path / "int.onnx"))
    ids = np.array([[1, 2, 3], [2**40, 0, -1]], dtype=np.int64)

    (total,) = session.run(None, {"ids": ids})

    assert _signature(session.get_outputs()[0]) == ("total", "tensor(int64)", ["N", 1])
    np.testing.assert_array_equal(np.array([[6], [2**40 - 1]], dtype=np.int64), total)


def test_install_model_uses_repository_layout(tmp_path: Path) -> None:
    """install_model writes <root>/<name>/<version>/model.onnx and passes builder options on."""
    path = models.install_model(tmp_path, "iris", "2", models.make_mlp, features=4)

    assert path == tmp_path / "iris" / "2" / "model.onnx"
    assert _signature(_session(path).get_inputs()[0]) == ("x", "tensor(float)", ["N", 4])


@pytest.mark.parametrize(
    "builder",
    [
        models.make_mlp,
        models.make_sklearn_classifier,
        models.make_failing_model,
        models.make_fixed_batch_model,
        models.make_int_model,
    ],
)
def test_models_are_tiny(tmp_path: Path, builder: models.ModelBuilder) -> None:
    """Every demo model file stays under 8 KB."""
    assert builder(tmp_path / "m.onnx").stat().st_size < 8 * 1024


def _signature(arg: ort.NodeArg) -> tuple[str, str, list[int | str | None]]:
    return arg.name, arg.type, list(arg.shape)
