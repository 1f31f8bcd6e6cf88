"""What a registry in an object store costs against a folder: push and load of one model, median of rounds.

    python -m bench.objectstore [--hidden 2048] [--rounds 3]

The object store is the tests' local S3 API server (moto_server on 127.0.0.1, tests/s3server.py,
in memory, SigV4 checked): the figures are the client's and the protocol's overhead on loopback,
not a cloud bucket's latency. For each round it pushes a fresh version to a folder and to the
bucket (`model push` without compression), then loads it as a worker does (`ModelStore.load`:
read, sha256 of every file, onnxruntime session, warm-up): from the folder, from the bucket with
an empty cache, and from the bucket with the cache filled by that load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from artifacts.registry import Registry
from demo.models import make_mlp
from registry.push import push_model
from worker.store import ModelStore

STEPS = ("push folder", "push s3", "load folder", "load s3 (cold cache)", "load s3 (warm cache)")


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def one_round(model: Path, folder: Path, url: str, cache: Path, version: str) -> dict[str, float]:
    """Seconds of each step for one new version."""
    times = {
        "push folder": timed(lambda: push_model(Registry.at(folder), model, name="m", version=version, compress=False)),
        "push s3": timed(lambda: push_model(Registry.at(url), model, name="m", version=version, compress=False)),
        "load folder": timed(lambda: ModelStore(folder, default_name="m").load("m", version)),
    }
    cold = cache / f"cold-{version}"
    times["load s3 (cold cache)"] = timed(lambda: ModelStore(url, default_name="m", cache=cold).load("m", version))
    times["load s3 (warm cache)"] = timed(lambda: ModelStore(url, default_name="m", cache=cold).load("m", version))
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.objectstore", description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048, help="hidden units of the MLP (its size)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from tests import s3server  # the dev extra's moto_server, as the tests run it

    server = s3server.start()
    try:
        os.environ.update(server.environ())  # this process is the edge: obstore reads the AWS variables
        url = f"s3://{server.new_bucket()}/bench"
        with tempfile.TemporaryDirectory(prefix="streamscore-objectstore-") as work:
            model = make_mlp(Path(work) / "m.onnx", features=256, hidden=args.hidden)
            rounds = [
                one_round(model, Path(work) / "registry", url, Path(work) / "cache", str(n + 1))
                for n in range(args.rounds)
            ]
            size = model.stat().st_size
    finally:
        s3server.stop(server.process)
    print(f"model {size} bytes, median of {args.rounds} rounds (seconds):")
    for step in STEPS:
        values = [r[step] for r in rounds]
        print(f"  {step:<22} {statistics.median(values):8.3f}   ({', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
