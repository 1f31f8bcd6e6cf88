"""Builders that write tiny ONNX models for tests, ``make demo`` and the benchmarks.

Every builder has the shape ``make_xxx(path, ...) -> Path``: it writes one model file (creating
parent directories), checks it with ``onnx.checker``, and returns the path. Output is deterministic
for a given seed. Graphs are built with ``onnx.helper`` directly, except the scikit-learn one, which
goes through ``skl2onnx`` with its default options on purpose (a ZipMap probability output).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the lowest IR version that carries opset 17; onnxruntime 1.17+ loads it.
IR_VERSION = 8
BATCH_DIM = "N"
SKLEARN_FEATURES = 4
SKLEARN_CLASSES = 3
SKLEARN_SAMPLES = 200
FAILING_TABLE_SIZE = 10

ModelBuilder = Callable[..., Path]


def make_mlp(
    path: Path,
    features: int = 8,
    hidden: int = 32,
    classes: int = 3,
    seed: int = 0,
    scale: float = 1.0,
) -> Path:
    """Write a Gemm-Relu-Gemm-Softmax classifier: ``x`` FP32 [N, features] -> ``probabilities``.

    ``scale`` multiplies the logits, so two models with the same seed but different scales give
    different probabilities (two "versions" of one model).
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.5, (features, hidden)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, hidden).astype(np.float32)
    w2 = (rng.normal(0.0, 0.5, (hidden, classes)) * scale).astype(np.float32)
    b2 = (rng.normal(0.0, 0.1, classes) * scale).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_tensor("x", TensorProto.FLOAT, [BATCH_DIM, features])],
        [_tensor("probabilities", TensorProto.FLOAT, [BATCH_DIM, classes])],
        initializer=_initializers(w1=w1, b1=b1, w2=w2, b2=b2),
    )
    return save_graph(graph, path)


def make_sklearn_classifier(path: Path, seed: int = 0) -> Path:
    """Write a scikit-learn LogisticRegression converted by skl2onnx with default options.

    Input ``x`` FP32 [None, 4]; outputs ``output_label`` INT64 [None] and ``output_probability``,
    a ZipMap (sequence of ``{class: probability}`` maps). Use :func:`sklearn_reference` for the
    labels and probabilities scikit-learn itself predicts.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = _train_sklearn_classifier(seed)
    onnx_model = to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, SKLEARN_FEATURES]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    return write_model(onnx_model, path)


def sklearn_reference(rows: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's ``(predict, predict_proba)`` on ``rows`` for the model of ``seed``."""
    model = _train_sklearn_classifier(seed)
    features = np.asarray(rows, dtype=np.float32)
    return model.predict(features), model.predict_proba(features)


def sklearn_sample_rows(count: int = 8, seed: int = 0) -> np.ndarray:
    """Return ``count`` FP32 rows drawn from the same distribution the classifier was trained on."""
    features, _ = _classification_data(seed)
    return features[:count].astype(np.float32)


def make_failing_model(path: Path, features: int = 4) -> Path:
    """Write a model that raises inside onnxruntime when a row's first feature is >= 10.

    ``y`` = ``table[int(x[:, 0])]`` with a 10-entry table, so rows with a first feature in [0, 10)
    score fine and a row with e.g. 100 makes Gather fail with an out-of-bounds index
    (``onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument``).
    """
    table = np.arange(FAILING_TABLE_SIZE, dtype=np.float32).reshape(FAILING_TABLE_SIZE, 1)
    nodes = [
        helper.make_node("Gather", ["x", "zero"], ["first"], name="first_feature", axis=1),
        helper.make_node("Cast", ["first"], ["index"], name="to_index", to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["y"], name="lookup", axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "failing",
        [_tensor("x", TensorProto.FLOAT, [BATCH_DIM, features])],
        [_tensor("y", TensorProto.FLOAT, [BATCH_DIM, 1])],
        initializer=_initializers(zero=np.array(0, dtype=np.int64), table=table),
    )
    return save_graph(graph, path)


def make_slow_model(path: Path, size: int = 64) -> Path:
    """Write a model as slow as its input asks: ``x`` FP32 [N, 1] -> ``y`` FP32 [N, 1] = ``x``.

    A Loop runs ``max(x)`` times a [size, size] matrix product (a few microseconds each), so a batch
    holding a row of 1,000,000 runs for seconds while rows of 1 take microseconds (for
    inference-timeout tests).
    """
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "weights"], ["acc_out"], name="spin"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
        ],
        "spin_body",
        [
            _tensor("i", TensorProto.INT64, []),
            _tensor("cond_in", TensorProto.BOOL, []),
            _tensor("acc_in", TensorProto.FLOAT, [size, size]),
        ],
        [_tensor("cond_out", TensorProto.BOOL, []), _tensor("acc_out", TensorProto.FLOAT, [size, size])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["most"], keepdims=0, name="most"),
        helper.make_node("Cast", ["most"], ["trips"], to=TensorProto.INT64, name="trips"),
        helper.make_node("Loop", ["trips", "true", "start"], ["spun"], body=body, name="spin_loop"),
        helper.make_node("Identity", ["x"], ["y"], name="echo"),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [_tensor("x", TensorProto.FLOAT, [BATCH_DIM, 1])],
        [_tensor("y", TensorProto.FLOAT, [BATCH_DIM, 1])],
        initializer=_initializers(
            true=np.array(True),
            start=np.eye(size, dtype=np.float32),
            weights=np.eye(size, dtype=np.float32),
        ),
    )
    return save_graph(graph, path)


def make_fixed_batch_model(path: Path, features: int = 4) -> Path:
    """Write a batch-of-one model: ``x`` FP32 [1, features] -> ``y`` FP32 [1, 1], the row sum."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "fixed_batch",
        [_tensor("x", TensorProto.FLOAT, [1, features])],
        [_tensor("y", TensorProto.FLOAT, [1, 1])],
        initializer=_initializers(axes=np.array([1], dtype=np.int64)),
    )
    return save_graph(graph, path)


def make_int_model(path: Path) -> Path:
    """Write an integer model: ``ids`` INT64 [N, 3] -> ``total`` INT64 [N, 1], the row sums."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["ids", "axes"], ["total"], keepdims=1)],
        "int_sum",
        [_tensor("ids", TensorProto.INT64, [BATCH_DIM, 3])],
        [_tensor("total", TensorProto.INT64, [BATCH_DIM, 1])],
        initializer=_initializers(axes=np.array([1], dtype=np.int64)),
    )
    return save_graph(graph, path)


def make_expanding_model(path: Path, features: int = 4, repeats: int = 50_000) -> Path:
    """Write a model whose output is `repeats` times wider than its input (``x`` -> ``y`` FP32
    [N, features * repeats]): a few rows make a result larger than a Kafka record may be."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "expanding",
        [_tensor("x", TensorProto.FLOAT, [BATCH_DIM, features])],
        [_tensor("y", TensorProto.FLOAT, [BATCH_DIM, features * repeats])],
        initializer=_initializers(repeats=np.array([1, repeats], dtype=np.int64)),
    )
    return save_graph(graph, path)


def install_model(root: Path, name: str, version: str, builder: ModelBuilder, **kwargs: Any) -> Path:
    """Build a model into the repository layout ``<root>/<name>/<version>/model.onnx``."""
    return builder(Path(root) / name / version / "model.onnx", **kwargs)


def _classification_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(  # type: ignore[no-any-return]
        n_samples=SKLEARN_SAMPLES,
        n_features=SKLEARN_FEATURES,
        n_informative=3,
        n_redundant=0,
        n_classes=SKLEARN_CLASSES,
        random_state=seed,
    )


def _train_sklearn_classifier(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    features, labels = _classification_data(seed)
    return LogisticRegression(max_iter=1000).fit(features.astype(np.float32), labels)


def _tensor(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _initializers(**arrays: np.ndarray) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(array, name) for name, array in arrays.items()]


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    """Check `graph` as a model of this opset and IR version, and write it to `path` (folders made)."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="streamscore-demo",
    )
    model.ir_version = IR_VERSION
    return write_model(model, path)


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, path)
    return path


SKLEARN_MLP_FEATURES = 32
SKLEARN_MLP_CLASSES = 4
SKLEARN_MLP_HIDDEN = 128


def make_sklearn_mlp(path: Path, seed: int = 0) -> Path:
    """Write a scikit-learn MLPClassifier (32 features, 128 hidden, 4 classes) converted by skl2onnx.

    Default converter options, as for :func:`make_sklearn_classifier`: ``x`` FP32 [None, 32] ->
    ``output_label`` INT64 and a ZipMap ``output_probability``. Unlike a LogisticRegression (an
    ``ai.onnx.ml`` LinearClassifier), its MatMul weights are what int8 quantization shrinks.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    features, labels = sklearn_mlp_data(seed=seed)
    # 500 iterations: it converges (about 330), so no ConvergenceWarning reaches strict pytest
    model = MLPClassifier(hidden_layer_sizes=(SKLEARN_MLP_HIDDEN,), max_iter=500, random_state=seed)
    model.fit(features, labels)
    onnx_model = to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, SKLEARN_MLP_FEATURES]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    return write_model(onnx_model, path)


def sklearn_mlp_data(count: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rows, labels)`` of the distribution :func:`make_sklearn_mlp` trains on (FP32 rows)."""
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=count,
        n_features=SKLEARN_MLP_FEATURES,
        n_informative=12,
        n_classes=SKLEARN_MLP_CLASSES,
        random_state=seed,
    )
    return features.astype(np.float32), labels
