"""Labelled rows for `model evaluate`, what a model predicts from its outputs, and the metrics of a prediction.

Reading a model's outputs (all pure, on the tensors `artifacts.runtime` gives, where a ZipMap is
already a [rows, classes] tensor with its classes in `parameters.labels`):

    label          the first output of ints, bools or strings with one value per row (skl2onnx's
                   `output_label`); else the class of the highest probability
    probabilities  the first float [rows, classes] output with `parameters.labels` or whose rows
                   are probabilities (`registry.measure.is_probabilities`); its classes are the
                   labels, else the column numbers 0, 1, ...
    value          a regression: the first float output with one value per row, not probabilities
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registry import metrics
from registry.measure import is_probabilities
from schemas.errors import ConfigError
from schemas.tensors import Tensor

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class LabelledRows:
    """The rows of a labelled CSV: features, labels as text (and as numbers when they all are), where from."""

    path: Path
    sha256: str
    label: str
    features: Array  # float64 [rows, features]
    labels: Array  # str [rows]
    numbers: Array | None  # float64 [rows], when every label is a number

    def describe(self) -> dict[str, Any]:
        """The data as recorded in an evaluate event."""
        return {"path": str(self.path), "sha256": self.sha256, "rows": len(self.labels), "label": self.label}


@dataclass(frozen=True)
class Prediction:
    """What a model said for every row: labels (text), class probabilities and their classes, or values."""

    labels: Array | None = None
    probabilities: Array | None = None
    classes: tuple[str, ...] = ()
    values: Array | None = None


def read_labelled(path: Path, label: str) -> LabelledRows:
    """The rows of a CSV with a header: column `label` holds the labels, every other column a number."""
    try:
        content = path.read_bytes()
        lines = [row for row in csv.reader(content.decode("utf-8").splitlines()) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read {path}: {error}; give a CSV file with a header line") from None
    if not lines or label not in lines[0]:
        header = ", ".join(lines[0]) if lines else "nothing"
        raise ConfigError(f"{path}: no column {label!r} in its header ({header}); name the label column with --label")
    at = lines[0].index(label)
    body = lines[1:]
    if not body or any(len(row) != len(lines[0]) for row in body):
        raise ConfigError(f"{path}: needs rows after the header, each with {len(lines[0])} fields")
    try:
        features = np.array([[float(v) for i, v in enumerate(row) if i != at] for row in body], dtype=np.float64)
    except ValueError as error:
        raise ConfigError(f"{path}: a feature is not a number ({error}); only column {label!r} may hold text") from None
    labels = metrics.label_text([row[at] for row in body])
    return LabelledRows(path, hashlib.sha256(content).hexdigest(), label, features, labels, _numbers(labels))


def _numbers(labels: Array) -> Array | None:
    try:
        return labels.astype(np.float64)
    except ValueError:
        return None


def read_prediction(outputs: dict[str, Tensor]) -> Prediction:
    """The labels, probabilities or values in a model's outputs (see the module's docstring)."""
    rows = len(next(iter(outputs.values())).data) if outputs else 0
    found: dict[str, Any] = {}
    for tensor in outputs.values():
        data = tensor.data
        per_row = data.ndim == 1 or (data.ndim == 2 and data.shape[1] == 1)
        if "labels" not in found and data.dtype.kind in "iubUSO" and per_row and len(data) == rows:
            found["labels"] = metrics.label_text(data)
        elif "probabilities" not in found and data.dtype.kind == "f" and is_probabilities(tensor):
            found["probabilities"] = data
            labels = (tensor.parameters or {}).get("labels") or range(data.shape[1])
            found["classes"] = tuple(metrics.label_text(list(labels)))
        elif "values" not in found and data.dtype.kind == "f" and per_row and len(data) == rows:
            found["values"] = data.reshape(-1)
    if "labels" not in found and "probabilities" in found:
        found["labels"] = np.array(found["classes"])[found["probabilities"].argmax(axis=1)]
    return Prediction(**found)


def score(prediction: Prediction, data: LabelledRows) -> dict[str, float]:
    """Every metric that applies: accuracy and F1 for labels, AUC with probabilities, RMSE for values."""
    truth = data.labels[: _rows(prediction)]
    found: dict[str, float] = {}
    if prediction.labels is not None:
        found["accuracy"] = metrics.accuracy(truth, prediction.labels)
        found["f1"] = metrics.f1(truth, prediction.labels)
    classes = metrics.sorted_classes(truth)
    if prediction.probabilities is not None and len(classes) >= 2 and set(classes) <= set(prediction.classes):
        found["auc"] = metrics.auc(truth, prediction.probabilities, prediction.classes)
    if prediction.labels is None and prediction.values is not None and data.numbers is not None:
        found["rmse"] = metrics.rmse(data.numbers[: len(prediction.values)], prediction.values)
    return found


def agreement(prediction: Prediction, reference: Prediction) -> float | None:
    """The share of rows where both give the same label (None when either gives none)."""
    if prediction.labels is None or reference.labels is None or len(prediction.labels) != len(reference.labels):
        return None
    return float((prediction.labels == reference.labels).mean())


def _rows(prediction: Prediction) -> int:
    for array in (prediction.labels, prediction.values):
        if array is not None:
            return len(array)
    return 0
