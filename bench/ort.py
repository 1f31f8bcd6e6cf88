"""onnxruntime alone: rows per second of `session.run` on pre-built batches, no Kafka, no JSON."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.loops import make_session
from bench.models import BenchModel

BATCHES_PREBUILT = 64


def measure_ort(model: BenchModel, model_path: Path, batch_rows: int, seconds: float) -> tuple[float, float]:
    """Run batches of `batch_rows` rows for about `seconds`: rows per second, and seconds per batch."""
    session = make_session(model_path)
    batch_rows = model.fixed_batch or batch_rows
    prebuilt = max(1, min(BATCHES_PREBUILT, 64_000_000 // max(1, batch_rows * 4 * int(np.prod(model.row_shape)))))
    batches = [model.rows(batch_rows, seed) for seed in range(prebuilt)]
    session.run(None, {model.input_name: batches[0]})  # warm up
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {model.input_name: batches[runs % prebuilt]})
        runs += 1
    return runs * batch_rows / elapsed, elapsed / runs
