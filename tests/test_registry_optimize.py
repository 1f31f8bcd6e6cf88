"""`model optimize`: derived versions are measured against their parent and gated before they register."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from artifacts.manifest import Manifest, TensorSpec
from artifacts.registry import Registry
from artifacts.runtime import LoadedModel, load_model
from demo.models import make_mlp, make_sklearn_mlp, sklearn_mlp_data
from registry.optimize import judge, make_options, optimize_model
from schemas.errors import ConfigError
from streamscore import cli


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The parents, built once: a scikit-learn MLPClassifier (ZipMap output) and a 32x128x2 Gemm MLP."""
    folder = tmp_path_factory.mktemp("models")
    # Unscaled random weights give logits of std ~11: int8 then moves probabilities by ~0.1 and flips
    # ~1% of labels among 3-4 classes on random rows, which the default gate rightly refuses.
    # scale=0.1 brings the logits to the range of a trained model.
    return {
        "sklearn": make_sklearn_mlp(folder / "sklearn.onnx"),
        "mlp": make_mlp(folder / "mlp.onnx", features=32, hidden=128, classes=2, scale=0.1),
    }


def push(registry: Registry, path: Path, name: str, *, compress: bool) -> Manifest:
    """Register `path` as version 1 of `name` with a manifest built from the file (as `model push` does)."""
    content = path.read_bytes()
    model = onnx.load_model_from_string(content)
    session = load_model(path, name, "1")
    manifest = Manifest(
        name=name,
        version="1",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        artifact="model.onnx.gz" if compress else "model.onnx",
        compression="gzip" if compress else "none",
        opset={o.domain or "ai.onnx": o.version for o in model.opset_import},
        inputs=[TensorSpec(s.name, s.datatype, list(s.shape)) for s in session.inputs],
        outputs=[TensorSpec(s.name, s.datatype, None) for s in session.outputs],
        created_at="2026-01-01T00:00:00Z",
        source=str(path),
        metadata={"team": "fraud"},
    )
    registry.add(manifest, gzip.compress(content) if compress else content)
    return manifest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder of the test's registry."""
    return tmp_path / "registry"


@pytest.fixture
def registry(root: Path, models: dict[str, Path]) -> Registry:
    """A fresh registry holding version 1 of `sklearn` (stored gzip-compressed) and of `mlp`."""
    registry = Registry.at(root)
    for name, path in models.items():
        push(registry, path, name, compress=name == "sklearn")
    return registry


def load_version(registry: Registry, name: str, version: str, folder: Path) -> LoadedModel:
    """A registered version, loaded from its checked bytes."""
    path = folder / f"{name}-{version}.onnx"
    path.write_bytes(registry.read_model(name, version))
    return load_model(path, name, version)


def write_csv(path: Path, rows: np.ndarray) -> Path:
    np.savetxt(path, rows, delimiter=",", header=",".join(f"f{i}" for i in range(rows.shape[1])), comments="")
    return path


@pytest.mark.parametrize("name", ["sklearn", "mlp"])
def test_dynamic_quantization_shrinks_the_model_and_keeps_its_labels(
    registry: Registry, tmp_path: Path, name: str
) -> None:
    """Dynamic int8 gives a smaller version that passes the default gate, with parent, measurements and history."""
    # the trained model is measured on rows like its training data; the random MLP on generated rows
    sample = write_csv(tmp_path / "sample.csv", sklearn_mlp_data()[0]) if name == "sklearn" else None

    result = optimize_model(registry, name, "1", make_options(quantize="dynamic", sample=sample))

    assert (True, "2") == (result.accepted, result.version)
    parent, child = registry.manifest(name, "1"), registry.manifest(name, "2")
    assert child.size < parent.size
    agreements = [o["label_agreement"] for o in result.measurements["outputs"].values() if "label_agreement" in o]
    assert agreements and min(agreements) >= 0.99
    assert ("1", result.measurements, parent.metadata) == (child.parent, child.measurements, child.metadata)
    assert f"optimize {name} 1: graph=extended, quantize=dynamic" == child.source
    # stored compressed when the parent is, or when gzip saves 5 % (int8 weights of the MLP do)
    assert ("gzip", True) == (child.compression, "ai.onnx" in child.opset)
    assert [("optimize", "registered 2")] == [(e["event"], e["result"]) for e in parent.history]
    assert (parent.size, child.size) == (parent.history[0]["parent_size"], parent.history[0]["size"])


def test_tight_tolerance_refuses_and_records_the_refusal(registry: Registry) -> None:
    """A tolerance quantization cannot meet registers nothing and names the output in the recorded reason."""
    result = optimize_model(registry, "sklearn", "1", make_options(quantize="dynamic", tolerance=1e-9))

    assert (False, None) == (result.accepted, result.version)
    assert "output 'output_probability': max abs diff" in result.reason
    assert ["1"] == registry.versions("sklearn")
    history = registry.manifest("sklearn", "1").history
    assert [("refused", result.reason)] == [(e["result"], e["reason"]) for e in history]


def test_graph_optimization_keeps_outputs_within_1e_5(registry: Registry, tmp_path: Path) -> None:
    """Graph-only optimization at "extended" registers a version whose outputs match the parent's within 1e-5."""
    result = optimize_model(registry, "mlp", "1", make_options(graph="extended"))

    assert result.accepted
    rows = np.random.default_rng(1).standard_normal((100, 32)).astype(np.float32)
    parent, child = load_version(registry, "mlp", "1", tmp_path), load_version(registry, "mlp", "2", tmp_path)
    expected, actual = parent.run({"x": rows})["probabilities"].data, child.run({"x": rows})["probabilities"].data
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    assert result.measurements["outputs"]["probabilities"]["max_abs_diff"] <= 1e-5


def test_static_quantization_with_a_calibration_csv(registry: Registry, tmp_path: Path) -> None:
    """Static int8 calibrated on CSV rows of the training distribution shrinks the scikit-learn model and passes."""
    rows, _ = sklearn_mlp_data()
    calibration = write_csv(tmp_path / "calibration.csv", rows[:256])
    sample = write_csv(tmp_path / "sample.csv", rows[256:])

    result = optimize_model(
        registry, "sklearn", "1", make_options(quantize="static", calibration=calibration, sample=sample)
    )

    assert result.accepted, result.reason
    assert 344 == result.measurements["rows"]
    assert registry.manifest("sklearn", "2").size < registry.manifest("sklearn", "1").size


def test_cli_registers_a_quantized_version_and_prints_the_table(
    registry: Registry, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`model optimize mlp 1 --quantize dynamic` exits 0 and prints sizes, latencies and the outcome."""
    code = cli.main(["model", "--model-root", str(root), "optimize", "mlp", "1", "--quantize", "dynamic"])

    out = capsys.readouterr().out
    assert 0 == code
    assert "size (bytes)" in out and "latency (us/row)" in out and "probabilities" in out
    assert "registered mlp version 2 (parent 1)" in out


def test_cli_refuses_with_a_tight_tolerance(registry: Registry, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--tolerance 1e-9` with quantization exits non-zero, says why, and adds no version."""
    argv = ["model", "--model-root", str(root), "optimize", "mlp", "1", "--quantize", "dynamic", "--tolerance", "1e-9"]

    code = cli.main(argv)

    assert 1 == code
    assert "refused: output 'probabilities': max abs diff" in capsys.readouterr().out
    assert ["1"] == registry.versions("mlp")


def test_judge_names_every_failing_output() -> None:
    """The gate lists each output beyond the tolerance or below the label agreement, and passes otherwise."""
    outputs = {
        "label": {"label_agreement": 0.98},
        "proba": {"max_abs_diff": 0.2, "mean_abs_diff": 0.01, "label_agreement": 1.0},
    }
    assert (
        "output 'label': label agreement 0.9800 < minimum 0.99; output 'proba': max abs diff 0.2 > tolerance 0.05"
        == judge(outputs, tolerance=0.05, min_label_agreement=0.99)
    )
    assert None is judge(outputs, tolerance=0.5, min_label_agreement=0.9)


def test_options_default_tolerance_and_checks() -> None:
    """Quantizing loosens the default tolerance; static quantization requires calibration rows."""
    assert (1e-3, 0.05) == (make_options().tolerance, make_options(quantize="dynamic").tolerance)
    with pytest.raises(ConfigError, match="--calibration"):
        make_options(quantize="static")
