"""A classifier's ZipMap output is served from its input tensor (artifacts.zipmap): the same numbers,
the same labels, no dict per row; a model the rewrite cannot take is served as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from artifacts.runtime import load_model
from artifacts.zipmap import unzipped
from demo import models

ROWS = models.sklearn_sample_rows(9)


def _zipmap_rows(path: Path, output: str = "output_probability") -> list[dict[Any, float]]:
    """What onnxruntime's own ZipMap gives: one {label: probability} dict per row."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return list(session.run(None, {"x": ROWS})[names.index(output)])


def _string_label_classifier(path: Path) -> Path:
    """The demo classifier trained with string class names: ZipMap's labels are classlabels_strings."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    features, labels = models._classification_data(0)
    names = np.array(["cat", "dog", "eel"])[labels]
    fitted = LogisticRegression(max_iter=500).fit(features.astype(np.float32), names)
    converted = to_onnx(
        fitted,
        initial_types=[("x", FloatTensorType([None, models.SKLEARN_FEATURES]))],
        target_opset={"": models.OPSET, "ai.onnx.ml": 3},
    )
    return models.write_model(converted, path)


@pytest.mark.parametrize("builder", [models.make_sklearn_classifier, _string_label_classifier])
def test_the_served_tensor_is_zipmaps_rows_in_its_label_order(tmp_path: Path, builder: Any) -> None:
    """Labels in the order ZipMap builds each map with; column j of row i is map i's value for label j."""
    path = builder(tmp_path / "classifier.onnx")
    expected = _zipmap_rows(path)

    model = load_model(path, "clf", "1")
    probabilities = model.run({"x": ROWS})["output_probability"]

    labels = probabilities.parameters["labels"]
    assert list(expected[0]) == labels
    assert ("FP32", (len(ROWS), len(labels))) == (probabilities.datatype, probabilities.data.shape)
    np.testing.assert_array_equal([[row[label] for label in labels] for row in expected], probabilities.data)


def test_the_file_is_untouched_and_the_graph_has_no_zipmap(tmp_path: Path) -> None:
    """The rewrite is of the bytes onnxruntime loads; the file (and so its sha256) stays as pushed."""
    path = models.make_sklearn_classifier(tmp_path / "classifier.onnx")
    before = path.read_bytes()

    graph, labels = unzipped(path)

    assert isinstance(graph, bytes) and {"output_probability": [0, 1, 2]} == labels
    assert before == path.read_bytes()
    rewritten = onnx.load_model_from_string(graph)
    assert "ZipMap" not in {node.op_type for node in rewritten.graph.node}
    onnx.checker.check_model(rewritten)


def test_a_model_without_zipmap_is_passed_through(tmp_path: Path) -> None:
    path = models.make_mlp(tmp_path / "mlp.onnx")

    assert (path, {}) == unzipped(path)


def test_a_zipmap_read_by_another_node_is_kept(tmp_path: Path) -> None:
    """Only a ZipMap at the graph's end is rewritten: one whose maps feed another node stays as it is."""
    model = onnx.load(str(models.make_sklearn_classifier(tmp_path / "classifier.onnx")))
    model.graph.node.append(helper.make_node("Identity", ["output_probability"], ["maps"]))
    model.graph.output.append(helper.make_value_info("maps", model.graph.output[1].type))
    path = tmp_path / "read.onnx"
    onnx.save(model, str(path))

    assert (path, {}) == unzipped(path)


def test_a_model_with_external_data_keeps_its_zipmap(tmp_path: Path) -> None:
    """Weights in a file beside the model: loaded from its folder as it is; the maps read row by row."""
    model = onnx.load(str(models.make_sklearn_classifier(tmp_path / "classifier.onnx")))
    for node in model.graph.node:  # x + 0 first: an initializer to keep outside (the classifier's are attributes)
        node.input[:] = ["shifted" if name == "x" else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("Add", ["x", "zero"], ["shifted"]))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(models.SKLEARN_FEATURES, np.float32), "zero"))
    path = tmp_path / "external" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    expected = _zipmap_rows(path)

    assert (path, {}) == unzipped(path)
    probabilities = load_model(path, "clf", "1").run({"x": ROWS})["output_probability"]
    assert {"labels": [0, 1, 2]} == probabilities.parameters
    np.testing.assert_array_equal([[row[c] for c in (0, 1, 2)] for row in expected], probabilities.data)
