"""The benchmark's models, built here, and the requests each scenario sends them.

mlp     MLP 8 -> 32 -> 3, softmax (demo.models.make_mlp)          x FP32 [N, 8]
mlp32   MLP 32 -> 256 -> 256 -> 1, sigmoid: a typical tabular width  x FP32 [N, 32]
mlp64   MLP 64 -> 256 -> 256 -> 8, softmax                          x FP32 [N, 64]
forest  RandomForestClassifier (50 trees, depth 8, 16 features, 4 classes) converted by
        skl2onnx with its defaults: a label and a ZipMap of probabilities  x FP32 [N, 16]
cnn     four 3x3 convolutions (64, 128, 256, 512 channels, stride 2) -> global average pool
        -> 10 classes, batch fixed at 1: about 7.5 ms an image on one core, a model whose
        inference dominates (16 to 64 channels took 0.5 ms, less than Kafka takes to move
        the image's 602 KB: echo 290-365 images/s)                   image FP32 [1, 3, 224, 224]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from onnx import TensorProto, helper, numpy_helper

from demo.models import OPSET, save_graph, write_model
from schemas import headers as h
from schemas.codec import encode_request

VERSION = "1"

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


@dataclass(frozen=True)
class BenchModel:
    """A model a scenario serves: its input, the shape of one row, and how to build it."""

    name: str
    input_name: str
    row_shape: tuple[int, ...]
    build: Callable[[Path], Path]
    fixed_batch: int | None = None  # a model whose first dimension is fixed (the CNN: 1)

    def install(self, root: Path) -> Path:
        """Build the model as `<root>/<name>/1/model.onnx`; its path."""
        return self.build(root / self.name / VERSION / "model.onnx")

    def rows(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` rows of random inputs (FP32, standard normal)."""
        return np.random.default_rng(seed).normal(size=(count, *self.row_shape)).astype(np.float32)


def make_requests(
    model: BenchModel, count: int, rows: int, binary: bool, seed: int = 0, first: int = 0
) -> list[Record]:
    """`count` V2 requests of `rows` rows each; the key is the request id `r<first + i>`. `binary`:
    Triton's binary tensor extension (raw little-endian bytes after the JSON header, its length in a header)."""
    data = model.rows(count * rows, seed).reshape(count, rows, *model.row_shape)
    encode = _binary_request if binary else _json_request
    return [encode(model.input_name, f"r{first + i}", data[i]) for i in range(count)]


def _json_request(name: str, request_id: str, rows: np.ndarray) -> Record:
    return request_id.encode(), encode_request({name: rows}, id=request_id), []


def _binary_request(name: str, request_id: str, rows: np.ndarray) -> Record:
    raw = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "id": request_id,
            "inputs": [
                {
                    "name": name,
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
        }
    )
    return request_id.encode(), header + raw, [(h.BINARY_HEADER_LENGTH, str(len(header)).encode())]


# ---------------------------------------------------------------------------------------------
# builders


def build_mlp(path: Path) -> Path:
    from demo.models import make_mlp

    return make_mlp(path, features=8, hidden=32, classes=3)


def build_mlp32(path: Path) -> Path:
    return _deep_mlp(path, [32, 256, 256, 1], "Sigmoid")


def build_mlp64(path: Path) -> Path:
    return _deep_mlp(path, [64, 256, 256, 8], "Softmax")


def _deep_mlp(path: Path, widths: list[int], last: str) -> Path:
    rng = np.random.default_rng(0)
    nodes, arrays, current = [], {}, "x"
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        arrays[f"w{layer}"] = rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        arrays[f"b{layer}"] = np.zeros(n_out, np.float32)
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"g{layer}"]))
        current = f"g{layer}"
        if layer < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"]))
            current = f"r{layer}"
    if last == "Softmax":
        nodes.append(helper.make_node(last, [current], ["y"], axis=-1))
    else:
        nodes.append(helper.make_node(last, [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", widths[-1]])],
        initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    return save_graph(graph, path)


def build_forest(path: Path) -> Path:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(n_samples=2000, n_features=16, n_informative=8, n_classes=4, random_state=0)
    forest = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0).fit(
        features.astype(np.float32), labels
    )
    converted = to_onnx(
        forest, initial_types=[("x", FloatTensorType([None, 16]))], target_opset={"": OPSET, "ai.onnx.ml": 3}
    )
    return write_model(converted, path)


def build_cnn(path: Path) -> Path:
    rng = np.random.default_rng(0)
    channels = [3, 64, 128, 256, 512]  # ResNet's stage widths: 7.5 ms an image on one core (bench/README.md)
    nodes, arrays, current = [], {}, "image"
    for layer, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
        arrays[f"k{layer}"] = rng.normal(0.0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        arrays[f"c{layer}"] = np.zeros(c_out, np.float32)
        conv = helper.make_node(
            "Conv",
            [current, f"k{layer}", f"c{layer}"],
            [f"v{layer}"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
        nodes += [conv, helper.make_node("Relu", [f"v{layer}"], [f"a{layer}"])]
        current = f"a{layer}"
    arrays["fc"] = rng.normal(0.0, 0.1, (channels[-1], 10)).astype(np.float32)
    arrays["fb"] = np.zeros(10, np.float32)
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    return save_graph(graph, path)


MODELS = {
    m.name: m
    for m in (
        BenchModel("mlp", "x", (8,), build_mlp),
        BenchModel("mlp32", "x", (32,), build_mlp32),
        BenchModel("mlp64", "x", (64,), build_mlp64),
        BenchModel("forest", "x", (16,), build_forest),
        BenchModel("cnn", "image", (3, 224, 224), build_cnn, fixed_batch=1),
    )
}
