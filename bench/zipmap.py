"""What serving a ZipMap output from its input tensor saves (artifacts.zipmap), by measurement.

    python -m bench.zipmap [--rows 16] [--runs 3000] [--rounds 5]

The bench's random forest (bench/models.py, skl2onnx's default ZipMap output) is run by
onnxruntime alone, one intra-op thread as the worker, on the same `--rows`-row arrays: as
converted (a dict per row), and as the worker loads it (the ZipMap an Identity of its input).
The two alternate within each round; it prints each one's median rows/s and the ratio. No broker.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from artifacts.zipmap import unzipped
from bench.models import build_forest


def session(model: Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(model) if isinstance(model, Path) else model, options, providers=["CPUExecutionProvider"]
    )


def rows_per_s(run: ort.InferenceSession, features: np.ndarray, runs: int) -> float:
    run.run(None, {"x": features})
    started = time.perf_counter()
    for _ in range(runs):
        run.run(None, {"x": features})
    return runs * len(features) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zipmap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16, help="rows a run (the forest scenario's requests: 16)")
    parser.add_argument("--runs", type=int, default=3000, help="model runs a measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, alternating")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="streamscore-zipmap-") as folder:
        path = build_forest(Path(folder) / "forest.onnx")
        rewritten, labels = unzipped(path)
        sessions = {"zipmap": session(path), "served": session(rewritten)}
    print(f"the forest's ZipMap outputs, served from their input: {labels}", file=sys.stderr)
    features = np.random.default_rng(0).random((args.rows, 16), dtype=np.float32)
    found: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, run in sessions.items():
            found[name].append(rows_per_s(run, features, args.runs))
    medians = {name: statistics.median(values) for name, values in found.items()}
    for name, values in found.items():
        runs = ", ".join(f"{v / 1000:,.0f}k" for v in values)
        print(f"{name:<7} {medians[name]:>12,.0f} rows/s (median of {args.rounds}: {runs})")
    print(f"served / zipmap: {medians['served'] / medians['zipmap']:.2f}x at {args.rows} rows a run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
