"""Step 2 of `model optimize` and the runs of `model tune`: the sample models run on, and what is measured on it.

The sample is rows from a file (CSV, JSON Lines, .npy) or seeded random rows generated from the
parent's signature, cut into batches. Measured for `optimize`: per-row latency of both models, timed
interleaved, and per output the max/mean absolute difference and the label agreement (see
`compare_output`); for `tune`: the time of every run of one model for a while (`time_runs`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.runtime import LoadedModel
from producer.files import read_chunks
from schemas.errors import ConfigError
from schemas.tensors import DATATYPES, Tensor

SAMPLE_BATCHES = 16  # a generated sample is 16 batches: agreement resolves 1/1024 at batch 64, not 1/64
SAMPLE_SEED = 0
LATENCY_RUNS = 30
WARMUP_RUNS = 3
MIN_TIMED_RUNS = 5  # `time_runs` times at least this many, however short its time
PROBABILITY_SUM_TOLERANCE = 1e-3

Feeds = dict[str, np.ndarray[Any, Any]]
Clock = Callable[[], int]


def sample_feeds(model: LoadedModel, sample: Path | None, batch: int, count: int = SAMPLE_BATCHES) -> list[Feeds]:
    """The batches to measure on: the rows of `sample`, or `count` generated ones when there is no file."""
    return file_feeds(model, sample, batch) if sample else generate_feeds(model, batch, count)


def measure(parent: LoadedModel, candidate: LoadedModel, feeds: Sequence[Feeds], clock: Clock) -> dict[str, Any]:
    """Outputs compared on the sample, and per-row latency of both, timed interleaved."""
    expected, actual = run_all(parent, feeds), run_all(candidate, feeds)
    parent_latency, latency = time_interleaved(parent, candidate, feeds[0], clock)
    return {
        "rows": int(sum(len(next(iter(f.values()))) for f in feeds)),
        "parent_latency_us_per_row": parent_latency,
        "latency_us_per_row": latency,
        "outputs": {name: compare_output(expected[name], actual[name]) for name in expected},
    }


def generate_feeds(model: LoadedModel, batch: int, count: int = SAMPLE_BATCHES) -> list[Feeds]:
    """`count` seeded random batches from the signature: normal floats, small ints; free dims = batch."""
    rng = np.random.default_rng(SAMPLE_SEED)
    step = model.fixed_batch or batch
    arrays: Feeds = {}
    for spec in model.inputs:
        if not spec.shape or spec.datatype == "BYTES":
            raise ConfigError(
                f"cannot generate rows for input {spec.name!r} {spec.datatype} {spec.shape}; use --sample"
            )
        shape = (step * count, *(batch if d is None else d for d in spec.shape[1:]))
        dtype = DATATYPES[spec.datatype]
        values = (
            rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 2 if dtype.kind == "b" else 10, shape)
        )
        arrays[spec.name] = values.astype(dtype)
    return split_batches(arrays, model.fixed_batch, step)


def file_feeds(model: LoadedModel, path: Path, batch: int) -> list[Feeds]:
    """Batches of rows from a CSV, JSON Lines or .npy file, for a model with one [rows, features] input."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 2:
        raise ConfigError(f"{path}: rows files fit models with one [rows, features] input; {model.inputs} differs")
    spec = model.inputs[0]
    chunks = list(read_chunks(path))
    if not chunks or any(not isinstance(chunk, np.ndarray) for chunk in chunks):
        raise ConfigError(f"{path}: holds no rows (V2 request objects are not rows)")
    rows = np.concatenate([c for c in chunks if isinstance(c, np.ndarray)])
    if spec.shape[1] is not None and rows.shape[1] != spec.shape[1]:
        raise ConfigError(f"{path}: rows have {rows.shape[1]} columns; input {spec.name!r} takes {spec.shape[1]}")
    return split_batches({spec.name: rows.astype(DATATYPES[spec.datatype])}, model.fixed_batch, batch)


def split_batches(arrays: Feeds, fixed_batch: int | None, batch: int) -> list[Feeds]:
    """Batches of `batch` rows; only whole ones for a model that fixes its batch size."""
    step = fixed_batch or batch
    total = len(next(iter(arrays.values())))
    total = total - total % step if fixed_batch else total
    if total == 0:
        raise ConfigError(f"the model takes batches of exactly {step} rows; give at least {step} rows")
    return [{k: a[start : start + step] for k, a in arrays.items()} for start in range(0, total, step)]


def run_all(model: LoadedModel, feeds: Sequence[Feeds]) -> dict[str, Tensor]:
    """Every output of `model` over all `feeds`, the batches' rows concatenated."""
    batches = [model.run(feed) for feed in feeds]
    return {
        name: Tensor(name, first.datatype, np.concatenate([b[name].data for b in batches]), first.parameters)
        for name, first in batches[0].items()
    }


def time_interleaved(parent: LoadedModel, candidate: LoadedModel, feed: Feeds, clock: Clock) -> tuple[float, float]:
    """Median microseconds per row of each model (one intra-op thread, as a worker process runs them),
    runs alternating so that both see the same machine state."""
    rows = len(next(iter(feed.values())))
    for _ in range(WARMUP_RUNS):
        parent.run(feed)
        candidate.run(feed)
    times: tuple[list[int], list[int]] = ([], [])
    for _ in range(LATENCY_RUNS):
        for model, spent in zip((parent, candidate), times, strict=True):
            start = clock()
            model.run(feed)
            spent.append(clock() - start)
    parent_us, candidate_us = (round(statistics.median(t) / rows / 1000, 3) for t in times)
    return parent_us, candidate_us


def time_runs(model: LoadedModel, feeds: Sequence[Feeds], seconds: float, clock: Clock) -> list[int]:
    """Nanoseconds of each run of `model` on `feeds` in turn, for about `seconds` (at least
    MIN_TIMED_RUNS runs), after WARMUP_RUNS untimed ones."""
    for run in range(WARMUP_RUNS):
        model.run(feeds[run % len(feeds)])
    spent: list[int] = []
    started = now = clock()
    while len(spent) < MIN_TIMED_RUNS or now - started < seconds * 1e9:
        before = now
        model.run(feeds[len(spent) % len(feeds)])
        now = clock()
        spent.append(now - before)
    return spent


def compare_output(expected: Tensor, actual: Tensor) -> dict[str, Any]:
    """Max/mean absolute difference (float outputs) and label agreement (labels, probabilities)."""
    if expected.shape != actual.shape:
        return {"shape": [list(expected.shape), list(actual.shape)]}
    rows = max(len(expected.data), 1)
    if expected.data.dtype.kind not in "fc":
        same = (expected.data == actual.data).reshape(rows, -1).all(axis=1)
        return {"label_agreement": round(float(same.mean()), 6)}
    difference = np.abs(expected.data.astype(np.float64) - actual.data.astype(np.float64))
    result: dict[str, Any] = {
        "max_abs_diff": float(difference.max(initial=0.0)),
        "mean_abs_diff": float(difference.mean()) if difference.size else 0.0,
    }
    if is_probabilities(expected):
        agree = expected.data.argmax(axis=1) == actual.data.argmax(axis=1)
        result["label_agreement"] = round(float(agree.mean()), 6)
    return result


def is_probabilities(tensor: Tensor) -> bool:
    """Whether a float output holds class probabilities: `parameters.labels`, or [rows, classes] rows that sum to 1."""
    data = tensor.data
    if tensor.parameters and "labels" in tensor.parameters:
        return True
    if data.ndim != 2 or data.shape[1] < 2 or data.size == 0:
        return False
    in_range = bool(((data >= 0) & (data <= 1)).all())
    return in_range and bool(np.allclose(data.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE))
