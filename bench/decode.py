"""Micro-benchmark of the worker's per-record decoding (`worker.pipeline.decode`), no broker.

    python -m bench.decode [--records 50000] [--repeat 7]

Encodes one-row V2 JSON requests of 8, 16 and 32 FP32 features (the hot path), with and without
a correlation header, and prints the best per-record time of `repeat` passes over `records` records
(CPU time of this process, so that other processes on the machine disturb it less).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from schemas.codec import Limits, encode_request
from schemas.records import InputRecord
from worker.pipeline import decode

TRACEPARENT = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def make_records(count: int, features: int, headers: tuple[tuple[str, bytes], ...]) -> list[InputRecord]:
    """`count` records, each a one-row request of `features` random floats."""
    rows = np.random.default_rng(features).random((count, features), dtype=np.float32)
    return [
        InputRecord("in", 0, i, encode_request({"x": rows[i : i + 1]}, id=f"r{i}"), None, headers, 0, 0)
        for i in range(count)
    ]


def best_per_record(records: list[InputRecord], repeat: int) -> float:
    """The best time of `repeat` passes of decoding every record, per record, in microseconds."""
    limits = Limits()
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for record in records:
            decode(record, limits)
        best = min(best, time.process_time() - started)
    return best / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for features in (8, 16, 32):
        for headers in ((), (TRACEPARENT,)):
            records = make_records(args.records, features, headers)
            micros = best_per_record(records, args.repeat)
            print(f"{features:3d} features, {len(headers)} header(s): {micros:6.3f} us per record", flush=True)


if __name__ == "__main__":
    main()
