"""onnxruntime alone: rows per second of `session.run` on pre-built batches, no Kafka, no JSON."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.config import INPUT_NAME, MLP_FEATURES
from bench.loops import make_session

BATCHES_PREBUILT = 64


def measure_ort(model_path: Path, batch_rows: int, seconds: float) -> float:
    """Run batches of `batch_rows` rows for about `seconds`; return rows per second."""
    session = make_session(model_path)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(batch_rows, MLP_FEATURES)).astype(np.float32) for _ in range(BATCHES_PREBUILT)]
    session.run(None, {INPUT_NAME: batches[0]})  # warm up
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {INPUT_NAME: batches[runs % BATCHES_PREBUILT]})
        runs += 1
    return runs * batch_rows / elapsed
