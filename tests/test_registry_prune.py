"""`model optimize --prune`: magnitude zeros exactly their share, structured pruning removes units where it may."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from artifacts.registry import Registry
from demo.models import make_mlp, save_graph
from registry.optimize import effect, make_options, optimize_model
from registry.prune import prune
from registry.push import push_model
from schemas.errors import ConfigError
from streamscore import cli

Array = np.ndarray[Any, Any]


def graph_model(
    nodes: list[onnx.NodeProto],
    arrays: dict[str, Array],
    inputs: dict[str, list[Any]],
    outputs: dict[str, list[Any]],
    path: Path,
) -> onnx.ModelProto:
    """A checked FP32 model of `nodes` with `arrays` as initializers, written to `path` and loaded back."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializer=[numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    return onnx.load(save_graph(graph, path))


def run(model: onnx.ModelProto, feeds: dict[str, Array]) -> list[Array]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, feeds)]


def arrays_of(model: onnx.ModelProto) -> dict[str, Array]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dead_unit_mlp(path: Path) -> onnx.ModelProto:
    """x[N,8] -> Gemm(16) -> Relu -> MatMul+Add(12) -> Tanh -> Gemm(transB, 4) -> Softmax, where 8 of the 16
    first hidden units and 6 of the 12 second ones have all-zero incoming weights but a non-zero bias."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 1, (8, 16)).astype(np.float32)
    w1[:, ::2] = 0  # units 0, 2, 4, ... are dead: they output relu(b1) whatever the input
    b1 = np.abs(rng.normal(0, 1, 16)).astype(np.float32) + 0.1
    w2 = rng.normal(0, 1, (16, 12)).astype(np.float32)
    w2[:, 6:] = 0
    b2 = rng.normal(0, 1, (1, 12)).astype(np.float32)
    w3 = rng.normal(0, 1, (4, 12)).astype(np.float32)  # [out, in]: read with transB=1
    b3 = rng.normal(0, 1, 4).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["t2"]),
        helper.make_node("Gemm", ["t2", "w3", "b3"], ["logits"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    arrays = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    return graph_model(nodes, arrays, {"x": ["N", 8]}, {"y": ["N", 4]}, path)


def rows(features: int = 8, count: int = 64) -> Array:
    return np.random.default_rng(7).standard_normal((count, features)).astype(np.float32)


def test_magnitude_zeros_exactly_the_share_of_each_weight_and_leaves_biases(tmp_path: Path) -> None:
    """At sparsity 0.3 each weight matrix has round(0.3 * size) zeros, its largest values kept; biases untouched."""
    model = onnx.load(make_mlp(tmp_path / "mlp.onnx", features=8, hidden=32, classes=3))
    before = arrays_of(model)

    pruned, record = prune(model, "magnitude", 0.3)

    after = arrays_of(pruned)
    assert {"w1": {"size": 256, "zeros": 77}, "w2": {"size": 96, "zeros": 29}} == record["tensors"]
    for name in ("w1", "w2"):
        assert round(0.3 * before[name].size) == int((after[name] == 0).sum())
        kept = after[name] != 0
        assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
        np.testing.assert_array_equal(before[name][kept], after[name][kept])
    for name in ("b1", "b2"):
        np.testing.assert_array_equal(before[name], after[name])


def test_structured_removes_dead_units_without_changing_outputs(tmp_path: Path) -> None:
    """Half the hidden units of both layers go, and the smaller model (checker-valid) scores as the original."""
    model = dead_unit_mlp(tmp_path / "dead.onnx")

    pruned, record = prune(model, "structured", 0.5)

    onnx.checker.check_model(pruned, full_check=True)
    shapes = {name: array.shape for name, array in arrays_of(pruned).items()}
    assert {"w1": (8, 8), "b1": (8,), "w2": (8, 6), "b2": (1, 6), "w3": (4, 6), "b3": (4,)} == shapes
    assert [("Gemm(w1)", 8), ("MatMul(w2)", 6)] == [(p["layer"], p["removed"]) for p in record["pruned"]]
    assert [8 * 16 + 16 * 12 + 12 * 4, 8 * 8 + 8 * 6 + 6 * 4] == record["parameters"]
    np.testing.assert_allclose(run(model, {"x": rows()})[0], run(pruned, {"x": rows()})[0], rtol=0, atol=1e-6)


def test_structured_removes_dead_conv_channels_without_changing_outputs(tmp_path: Path) -> None:
    """A Conv feeding a Conv through Relu loses its all-zero output channels, and the outputs stay the same."""
    rng = np.random.default_rng(5)
    k1 = rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32)
    k1[4:] = 0
    c1 = np.concatenate([rng.normal(0, 1, 4), np.zeros(4)]).astype(np.float32)
    k2 = rng.normal(0, 1, (2, 8, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "k1", "c1"], ["v1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["v1"], ["a1"]),
        helper.make_node("Conv", ["a1", "k2"], ["y"]),
    ]
    model = graph_model(
        nodes, {"k1": k1, "c1": c1, "k2": k2}, {"image": [1, 3, 6, 6]}, {"y": [1, 2, 4, 4]}, tmp_path / "cnn.onnx"
    )
    image = rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)

    pruned, _ = prune(model, "structured", 0.5)

    assert {"k1": (4, 3, 3, 3), "c1": (4,), "k2": (2, 4, 3, 3)} == {n: a.shape for n, a in arrays_of(pruned).items()}
    np.testing.assert_allclose(run(model, {"image": image})[0], run(pruned, {"image": image})[0], atol=1e-5)


def test_a_hidden_tensor_with_two_consumers_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """r1 is read by the next layer and by a ReduceSum output: layer 1 is skipped, saying so; layer 2 is pruned."""
    rng = np.random.default_rng(1)
    arrays = {
        "w1": rng.normal(0, 1, (4, 8)).astype(np.float32),
        "w2": rng.normal(0, 1, (8, 8)).astype(np.float32),
        "w3": rng.normal(0, 1, (8, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("MatMul", ["r2", "w3"], ["y"]),
        helper.make_node("ReduceSum", ["r1"], ["total"], keepdims=1),
    ]
    model = graph_model(nodes, arrays, {"x": ["N", 4]}, {"y": ["N", 2], "total": [1, 1]}, tmp_path / "two.onnx")

    pruned, record = prune(model, "structured", 0.5)

    assert ["MatMul(w2)"] == [p["layer"] for p in record["pruned"]]
    assert {"layer": "MatMul(w1)", "reason": "tensor 'r1' has 2 consumers"} == record["skipped"][0]
    assert (4, 8) == arrays_of(pruned)["w1"].shape
    onnx.checker.check_model(pruned, full_check=True)


def test_a_shared_weight_is_skipped_and_nothing_prunable_is_an_error(tmp_path: Path) -> None:
    """Two layers reading one weight matrix cannot lose units: ConfigError naming the shared initializer."""
    w = np.random.default_rng(2).normal(0, 1, (6, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    model = graph_model(nodes, {"w": w}, {"x": ["N", 6]}, {"y": ["N", 6]}, tmp_path / "shared.onnx")

    with pytest.raises(ConfigError, match="initializer 'w' is shared with another node"):
        prune(model, "structured", 0.5)


def test_effect_says_when_a_version_is_neither_faster_nor_smaller() -> None:
    """Same bytes and the same time per row: the record says not smaller and no faster."""
    measured = {"size": 100, "parent_size": 100, "gzip_size": 90, "parent_gzip_size": 90}
    found = effect({**measured, "parent_latency_us_per_row": 2.0, "latency_us_per_row": 1.98})

    assert (False, False) == (found["smaller"], found["faster"])
    assert found["summary"].startswith("not smaller (size 100 -> 100 bytes (+0%)")
    assert "no faster (within 5 %) (2.000 -> 1.980 us/row)" in found["summary"]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry holding version 1 of `mlp` (a 32x128x2 Gemm MLP with the logits of a trained model) and of
    `dead` (`dead_unit_mlp`)."""
    registry = Registry.at(tmp_path / "registry")
    push_model(registry, make_mlp(tmp_path / "mlp.onnx", features=32, hidden=128, classes=2, scale=0.1), name="mlp")
    dead_unit_mlp(tmp_path / "dead.onnx")
    push_model(registry, tmp_path / "dead.onnx", name="dead")
    return registry


def test_the_gate_refuses_a_version_pruned_past_what_its_labels_survive(registry: Registry) -> None:
    """Magnitude pruning at 0.95 moves the outputs past the tolerance: refused, recorded with the pruning."""
    result = optimize_model(registry, "mlp", "1", make_options(prune="magnitude", sparsity=0.95))

    assert (False, ["1"]) == (result.accepted, registry.versions("mlp"))
    assert "output 'probabilities': max abs diff" in result.reason
    [event] = registry.manifest("mlp", "1").history
    assert ("refused", "magnitude", 0.95) == (event["result"], event["prune"]["method"], event["prune"]["sparsity"])


def test_cli_prunes_quantizes_and_prints_what_was_removed(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--prune structured --sparsity 0.5 --quantize dynamic` registers a smaller version and prints the units."""
    code = cli.main(
        [
            *("model", "--model-root", str(tmp_path / "registry"), "optimize", "dead", "1"),
            *("--prune", "structured", "--sparsity", "0.5", "--quantize", "dynamic", "--tolerance", "0.1"),
        ]
    )

    out = capsys.readouterr().out
    assert 0 == code, out
    assert "  Gemm(w1): 8 of 16 units removed, and their inputs in MatMul(w2)\n" in out
    assert "  Gemm(w3): skipped, its output feeds Softmax, not the data input of another dense layer\n" in out
    child = registry.manifest("dead", "2")
    assert "optimize dead 1: graph=extended, quantize=dynamic, prune=structured 0.5" == child.source
    assert child.size < registry.manifest("dead", "1").size
    assert child.measurements is not None and child.measurements["effect"]["smaller"]


def test_prune_needs_a_sparsity_between_0_and_1() -> None:
    """--prune without --sparsity, or a sparsity of 1, is refused before anything runs."""
    for sparsity in (None, 0.0, 1.0):
        with pytest.raises(ConfigError, match="--prune needs --sparsity S with 0 < S < 1"):
            make_options(prune="magnitude", sparsity=sparsity)
