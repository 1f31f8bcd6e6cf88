"""Step 1 of `model optimize --prune`: zero small weights, or remove whole hidden units (onnx and numpy only).

    magnitude   in every float weight initializer (two or more dimensions) that a MatMul, Gemm or Conv
                multiplies by, zero exactly round(S * size) of the values with the smallest |w|. Biases and
                shape tensors are left alone. The file keeps its size (a zero is four bytes like any float)
                but compresses far better; onnxruntime's CPU kernels are dense, so it is not faster.
    structured  for each layer k whose output reaches layer k+1 only through an optional bias Add and
                element-wise activations (Relu, LeakyRelu, Sigmoid, Tanh, Identity), remove the share S of
                layer k's outputs (hidden units of MatMul/Gemm, output channels of a Conv followed by a Conv)
                whose incoming weights have the smallest L2 norm: their weights and bias entries in layer k,
                their input rows (channels) in layer k+1. For dense layers, what a removed unit still added
                whatever the input (its activation at zero input, act(bias)) is folded into layer k+1's bias,
                so a unit whose weights are all zero is removed exactly. Smaller matrices: less work per row.

A layer is skipped, and the record says why, when the graph does not allow it: a tensor on the way
read by another node or a graph output, a weight or bias shared with another node, a grouped Conv,
a transposed Gemm input, a last layer (whose width is the model's output).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from schemas.errors import ConfigError

PRUNE_METHODS = ("none", "magnitude", "structured")
WEIGHT_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (1,)}  # inputs that may be weights

Array = np.ndarray[Any, Any]
ACTIVATIONS: dict[str, Callable[[Array, onnx.NodeProto], Array]] = {
    "Relu": lambda x, node: np.maximum(x, 0),
    "LeakyRelu": lambda x, node: np.where(x > 0, x, _attribute(node, "alpha", 0.01) * x),
    "Sigmoid": lambda x, node: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, node: np.tanh(x),
    "Identity": lambda x, node: x,
}


@dataclass(frozen=True)
class Layer:
    """A MatMul, Gemm or Conv with an initializer weight: which axes of it index outputs and inputs."""

    node: onnx.NodeProto
    kind: str  # "dense" or "conv"
    weight: str
    out_axis: int
    in_axis: int
    bias: str | None  # an initializer added to the outputs (Gemm's C, Conv's B, or a following Add's)
    bias_scale: float  # what a contribution to the output is in units of the bias (Gemm: alpha / beta)
    output: str  # the tensor after the bias
    steps: tuple[str, ...]  # the tensors between the node and `output`

    @property
    def label(self) -> str:
        return f"{self.node.op_type}({self.weight})"


def prune(model: onnx.ModelProto, method: str, sparsity: float) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A pruned copy of `model` and the record of what was pruned and skipped; ConfigError if nothing could be."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    record = magnitude(pruned, sparsity) if method == "magnitude" else structured(pruned, sparsity)
    return pruned, record


# ---------------------------------------------------------------------------------------------
# magnitude


def magnitude(model: onnx.ModelProto, sparsity: float) -> dict[str, Any]:
    """Zero the `sparsity` share of smallest |w| in each weight of `model` (in place); the record."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    names = sorted({name for name in weight_inputs(graph) if _is_float_matrix(initializers.get(name))})
    if not names:
        raise ConfigError(
            "nothing to prune: the model has no float weight initializer feeding a MatMul, Gemm or Conv "
            "(tree ensembles and ai.onnx.ml linear models keep their parameters in attributes); try --quantize"
        )
    tensors = {}
    for name in names:
        array = zero_smallest(numpy_helper.to_array(initializers[name]), sparsity)
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))
        tensors[name] = {"size": int(array.size), "zeros": int((array == 0).sum())}
    return {"method": "magnitude", "sparsity": sparsity, "tensors": tensors}


def weight_inputs(graph: onnx.GraphProto) -> Iterator[str]:
    """The inputs of MatMul, Gemm and Conv nodes that may be weights (never biases)."""
    for node in graph.node:
        for index in WEIGHT_OPS.get(node.op_type, ()):
            if index < len(node.input):
                yield node.input[index]


def zero_smallest(array: Array, sparsity: float) -> Array:
    """A copy of `array` with round(sparsity * size) of its values of smallest |value| set to zero."""
    count = round(sparsity * array.size)
    flat = array.copy().reshape(-1)
    if count:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0
    return flat.reshape(array.shape)


def _is_float_matrix(tensor: onnx.TensorProto | None) -> bool:
    return tensor is not None and len(tensor.dims) >= 2 and tensor.data_type in _FLOAT_TYPES


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


# ---------------------------------------------------------------------------------------------
# structured


class _Graph:
    """Who reads what in a graph, and its initializers as arrays (changed ones written back by `save`)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.arrays: dict[str, Array] = {}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        self.uses: Counter[str] = Counter()
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
            self.uses.update(set(node.input) | _subgraph_reads(node))
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}

    def array(self, name: str) -> Array:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self.arrays[name]

    def only_reader(self, tensor: str) -> onnx.NodeProto | str:
        """The one node that reads `tensor`, or why there is not exactly one."""
        readers = self.readers.get(tensor, [])
        if tensor in self.outputs:
            return f"tensor {tensor!r} is a graph output"
        if len(readers) != 1 or self.uses[tensor] != 1:
            return f"tensor {tensor!r} has {max(len(readers), self.uses[tensor])} consumers"
        return readers[0]

    def private(self, name: str) -> bool:
        """An initializer read by one node only, and not a graph input that a caller could override."""
        return name in self.initializers and self.uses[name] == 1 and name not in self.inputs

    def save(self) -> None:
        for name, array in self.arrays.items():
            self.initializers[name].CopyFrom(numpy_helper.from_array(array, name))


def structured(model: onnx.ModelProto, sparsity: float) -> dict[str, Any]:
    """Remove the `sparsity` share of hidden units (channels) wherever the graph allows (in place); the record."""
    graph = _Graph(model.graph)
    pruned: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    changed: set[str] = set()
    before = _parameters(graph)
    for node in model.graph.node:
        layer = as_layer(graph, node)
        if isinstance(layer, str):
            if layer:
                skipped.append({"layer": f"{node.op_type}({_weight_name(node)})", "reason": layer})
            continue
        outcome = prune_pair(graph, layer, sparsity)
        if isinstance(outcome, str):
            skipped.append({"layer": layer.label, "reason": outcome})
        else:
            pruned.append(outcome)
            changed.update(outcome.pop("tensors"))
    if not pruned:
        reasons = "; ".join(f"{s['layer']}: {s['reason']}" for s in skipped) or "no MatMul, Gemm or Conv layers"
        raise ConfigError(f"nothing to prune: no layer can lose units ({reasons}); try --prune magnitude")
    graph.save()
    _forget_shapes(model.graph, changed)
    return {
        "method": "structured",
        "sparsity": sparsity,
        "pruned": pruned,
        "skipped": skipped,
        "parameters": [before, _parameters(graph)],
    }


def as_layer(graph: _Graph, node: onnx.NodeProto) -> Layer | str:
    """`node` as a layer whose outputs can be pruned, or why not ("" for nodes that are no layer at all)."""
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return ""
    weight = node.input[1]
    tensor = graph.initializers.get(weight)
    if not _is_float_matrix(tensor) or weight in graph.inputs:
        return "its weight is not a float initializer"
    if node.op_type == "Conv":
        return _conv_layer(graph, node, weight)
    if len(tensor.dims) != 2:  # type: ignore[union-attr]
        return "its weight is not a matrix"
    if node.op_type == "Gemm":
        return _gemm_layer(graph, node, weight)
    return _with_bias_add(graph, node, weight, out_axis=1, in_axis=0)


def _conv_layer(graph: _Graph, node: onnx.NodeProto, weight: str) -> Layer | str:
    if _attribute(node, "group", 1) != 1:
        return "a grouped Conv"
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias not in graph.initializers:
        return "its bias is not an initializer"
    return Layer(node, "conv", weight, 0, 1, bias, 1.0, node.output[0], (node.output[0],))


def _gemm_layer(graph: _Graph, node: onnx.NodeProto, weight: str) -> Layer | str:
    if _attribute(node, "transA", 0):
        return "a Gemm with transA"
    transposed = bool(_attribute(node, "transB", 0))
    out_axis, in_axis = (0, 1) if transposed else (1, 0)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is None:
        return _with_bias_add(graph, node, weight, out_axis=out_axis, in_axis=in_axis)
    units = graph.initializers[weight].dims[out_axis]
    beta = _attribute(node, "beta", 1.0)
    if bias not in graph.initializers or not _is_bias(graph.initializers[bias], units) or beta == 0:
        return "its C is not a per-unit bias initializer"
    scale = _attribute(node, "alpha", 1.0) / beta
    return Layer(node, "dense", weight, out_axis, in_axis, bias, scale, node.output[0], (node.output[0],))


def _with_bias_add(graph: _Graph, node: onnx.NodeProto, weight: str, *, out_axis: int, in_axis: int) -> Layer:
    """A dense layer, with the bias of an Add that alone reads its output (as skl2onnx writes MatMul + Add)."""
    units = graph.initializers[weight].dims[out_axis]
    reader = graph.only_reader(node.output[0])
    if isinstance(reader, onnx.NodeProto) and reader.op_type == "Add":
        bias = next((name for name in reader.input if name != node.output[0]), "")
        if bias in graph.initializers and _is_bias(graph.initializers[bias], units):
            steps = (node.output[0], reader.output[0])
            return Layer(node, "dense", weight, out_axis, in_axis, bias, 1.0, reader.output[0], steps)
    return Layer(node, "dense", weight, out_axis, in_axis, None, 1.0, node.output[0], (node.output[0],))


def prune_pair(graph: _Graph, layer: Layer, sparsity: float) -> dict[str, Any] | str:
    """Remove the weakest outputs of `layer` and the matching inputs of the layer it feeds; or why not."""
    found = follow(graph, layer)
    if isinstance(found, str):
        return found
    following, activations, steps = found
    shared = [n for n in (layer.weight, layer.bias, following.weight) if n and not graph.private(n)]
    if shared:
        return f"initializer {shared[0]!r} is shared with another node (or is a graph input)"
    units = graph.array(layer.weight).shape[layer.out_axis]
    remove = min(int(sparsity * units), units - 1)
    if remove == 0:
        return f"a share of {sparsity:g} of its {units} units is none"
    keep = np.sort(np.argsort(_norms(graph.array(layer.weight), layer.out_axis), kind="stable")[remove:])
    folded = _fold(graph, layer, following, activations, keep) if layer.kind == "dense" else False
    _cut(graph, layer, following, keep)
    return {
        "layer": layer.label,
        "next": following.label,
        "units": units,
        "removed": remove,
        "folded": folded,
        "tensors": steps,
    }


def follow(graph: _Graph, layer: Layer) -> tuple[Layer, list[onnx.NodeProto], list[str]] | str:
    """The layer `layer` feeds through element-wise activations, those activations, and the tensors between."""
    tensor, activations, steps = layer.output, [], list(layer.steps)
    while True:
        reader = graph.only_reader(tensor)
        if isinstance(reader, str):
            return reader
        if reader.op_type not in ACTIVATIONS:
            break
        activations.append(reader)
        tensor = reader.output[0]
        steps.append(tensor)
    following = as_layer(graph, reader)
    if isinstance(following, str) or following.kind != layer.kind or reader.input[0] != tensor:
        return f"its output feeds {reader.op_type}, not the data input of another {layer.kind} layer"
    return following, activations, steps


def _fold(graph: _Graph, layer: Layer, following: Layer, activations: list[onnx.NodeProto], keep: Array) -> bool:
    """Add what the removed units give at zero input, act(bias), to the next layer's bias; False if it has none."""
    weight = graph.array(following.weight)
    removed = np.setdiff1d(np.arange(weight.shape[following.in_axis]), keep)
    value = graph.array(layer.bias).reshape(-1)[removed] if layer.bias else np.zeros(len(removed), weight.dtype)
    for node in activations:
        value = ACTIVATIONS[node.op_type](value, node)
    rows = np.take(weight, removed, axis=following.in_axis)
    contribution = value @ rows if following.in_axis == 0 else rows @ value
    if not contribution.any():
        return True
    if following.bias is None or not graph.private(following.bias):
        return False
    bias = graph.array(following.bias)
    graph.arrays[following.bias] = (bias + following.bias_scale * contribution.reshape(bias.shape)).astype(bias.dtype)
    return True


def _cut(graph: _Graph, layer: Layer, following: Layer, keep: Array) -> None:
    graph.arrays[layer.weight] = np.take(graph.array(layer.weight), keep, axis=layer.out_axis)
    if layer.bias:
        graph.arrays[layer.bias] = np.take(graph.array(layer.bias), keep, axis=-1)
    graph.arrays[following.weight] = np.take(graph.array(following.weight), keep, axis=following.in_axis)


def _norms(weight: Array, out_axis: int) -> Array:
    """The L2 norm of each output's incoming weights."""
    moved = np.moveaxis(weight, out_axis, 0)
    norms: Array = np.sqrt((moved.reshape(len(moved), -1).astype(np.float64) ** 2).sum(axis=1))
    return norms


def _is_bias(tensor: onnx.TensorProto, units: int) -> bool:
    return list(tensor.dims) in ([units], [1, units])


def _parameters(graph: _Graph) -> int:
    """The values in the float weight initializers of the graph's layers."""
    names = {n for n in weight_inputs(graph.graph) if _is_float_matrix(graph.initializers.get(n))}
    return int(sum(graph.array(name).size for name in names))


def _forget_shapes(graph: onnx.GraphProto, tensors: set[str]) -> None:
    """Drop the recorded shapes of tensors whose width changed (onnxruntime infers them again)."""
    kept = [info for info in graph.value_info if info.name not in tensors]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _weight_name(node: onnx.NodeProto) -> str:
    return node.input[1] if len(node.input) > 1 else "?"


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names read inside a node's subgraphs (If, Loop, Scan bodies may read outer tensors)."""
    found: set[str] = set()
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in sub.node:
                found.update(inner.input)
                found.update(_subgraph_reads(inner))
    return found


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default
