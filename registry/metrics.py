"""Pure metrics for `model evaluate`, with numpy alone (the tests cross-check them against scikit-learn).

    accuracy   share of rows whose predicted label is the true one
    f1         two classes: F1 of the positive class (the last in sorted order, "1" of 0/1);
               more: the unweighted mean of every class's F1 (macro), over the classes seen in either
    auc        ROC AUC from the probabilities: two classes, of the positive class's column; more, the
               mean of each class against the rest (macro one-vs-rest), ties counted as half
    rmse       root mean squared error of a float prediction against numeric labels

Labels are compared as text: 1, 1.0 and "1" are the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from artifacts.manifest import version_key
from schemas.errors import ConfigError

Array = np.ndarray[Any, Any]
METRICS = ("accuracy", "f1", "auc", "rmse")
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "auc": True, "rmse": False}


def label_text(values: Array | Sequence[Any]) -> Array:
    """Labels as text: integral numbers without a decimal point, bytes decoded."""
    return np.array([_one_label(value) for value in np.asarray(values, dtype=object).reshape(-1)], dtype=str)


def _one_label(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return str(int(number)) if number.is_integer() else value
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def sorted_classes(*labels: Array) -> list[str]:
    """Every class seen, sorted with numbers in numeric order ("2" before "10")."""
    return sorted({str(label) for array in labels for label in array}, key=version_key)


def accuracy(truth: Array, predicted: Array) -> float:
    return float((truth == predicted).mean())


def f1(truth: Array, predicted: Array) -> float:
    """Binary F1 of the positive class, or macro F1 over more classes."""
    classes = sorted_classes(truth, predicted)
    chosen = classes[-1:] if len(classes) == 2 else classes
    return float(np.mean([_f1_of(truth, predicted, label) for label in chosen]))


def _f1_of(truth: Array, predicted: Array, label: str) -> float:
    true_positive = int(((truth == label) & (predicted == label)).sum())
    wrong = int(((truth == label) != (predicted == label)).sum())
    return 0.0 if true_positive == 0 else 2 * true_positive / (2 * true_positive + wrong)


def auc(truth: Array, scores: Array, classes: Sequence[str]) -> float:
    """ROC AUC of the [rows, classes] probabilities `scores`, whose columns are `classes`."""
    seen = sorted_classes(truth)
    missing = [label for label in seen if label not in classes]
    if len(seen) < 2 or missing:
        raise ConfigError(
            f"AUC needs at least two classes in the labels, each with a probability column; labels have {seen}, "
            f"the model's probabilities {list(classes)}"
        )
    if len(seen) == 2:
        return binary_auc(truth == seen[1], scores[:, list(classes).index(seen[1])])
    return float(np.mean([binary_auc(truth == label, scores[:, list(classes).index(label)]) for label in seen]))


def binary_auc(positive: Array, score: Array) -> float:
    """The probability that a positive row scores above a negative one (Mann-Whitney U over average ranks)."""
    ranks = average_ranks(score.astype(np.float64))
    count = int(positive.sum())
    negatives = len(positive) - count
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * negatives))


def average_ranks(values: Array) -> Array:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks: Array = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2)[group]
    return ranks


def rmse(truth: Array, predicted: Array) -> float:
    return float(np.sqrt(np.mean((truth.astype(np.float64) - predicted.astype(np.float64)) ** 2)))


def is_worse(metric: str, candidate: float, current: float) -> bool:
    """Whether `candidate` is worse than `current` on `metric` (equal is not worse)."""
    return candidate < current if HIGHER_IS_BETTER[metric] else candidate > current
