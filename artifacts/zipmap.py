"""Serve a classifier's ZipMap output from the probabilities tensor it is built from.

skl2onnx converts a classifier with a ZipMap node at the end by default: onnxruntime then turns
the `[rows, labels]` probabilities into one Python dict per row (holding the GIL), and the worker
turns those dicts back into the `[rows, labels]` tensor it writes (`parameters.labels`). Both
steps are per-row Python work that changes nothing in the numbers.

`unzipped` rewrites the graph in memory before onnxruntime loads it: each ZipMap whose output is
a graph output read by no other node becomes an Identity of its input, and its labels are taken
from the node's `classlabels_*` attribute, in the order ZipMap builds each map with. The file
and its sha256 are untouched (the rewrite is done on every load, the same way). Measured on the
bench's random forest (16 features, 4 classes, 50 trees), onnxruntime alone at 16 rows a run:
787k rows/s with the ZipMap, 1.02M without (1.30x; medians of 5) (`python -m bench.zipmap`).

A model that keeps its weights in external data files is loaded as it is (its ZipMap outputs
are read row by row, as before): rewriting it would mean copying every weight into memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

ML_DOMAIN = "ai.onnx.ml"
MARKER = b"ZipMap"  # the op type appears in the bytes of any model that has one


def unzipped(source: Path | bytes) -> tuple[Path | bytes, dict[str, list[Any]]]:
    """`source`, or the bytes of its graph with the servable ZipMaps turned into Identity; and the
    labels of each output that was a ZipMap's, by output name.

    Never raises for a model it cannot read: onnxruntime loads `source` then, and says why.
    """
    data = source if isinstance(source, bytes) else _read(source)
    if data is None or MARKER not in data:
        return source, {}
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # onnxruntime's error will name the problem
        return source, {}
    if _has_external_data(model):
        return source, {}
    labels = _rewrite(model.graph)
    if not labels:
        return source, {}
    return model.SerializeToString(), labels


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _tensors(model.graph))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, and those in node attributes and subgraphs."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _rewrite(graph: onnx.GraphProto) -> dict[str, list[Any]]:
    """Turn each servable ZipMap of `graph` (its top level) into an Identity; the labels by output."""
    outputs = {output.name: output for output in graph.output}
    read = {name for node in graph.node for name in node.input}
    labels: dict[str, list[Any]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "ZipMap" or node.domain != ML_DOMAIN or len(node.output) != 1:
            continue
        name = node.output[0]
        found = _labels(node)
        if name not in outputs or name in read or found is None:
            continue
        graph.node[index].CopyFrom(helper.make_node("Identity", [node.input[0]], [name], name=node.name))
        outputs[name].CopyFrom(
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None, len(found)], outputs[name].doc_string)
        )
        labels[name] = found
    return labels


def _labels(node: onnx.NodeProto) -> list[Any] | None:
    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s":
            return [int(label) for label in attribute.ints]
        if attribute.name == "classlabels_strings":
            return [label.decode("utf-8") for label in attribute.strings]
    return None
