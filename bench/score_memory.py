"""Memory of a batch job: `streamscore score` on a large file, its peak RSS and the worker's.

    python -m bench.score_memory [--rows 10000000] [--rows-per-request 100] [--format npy|csv]

On its own broker, one `streamscore worker` process (the bench MLP, 8 features) serves while
`streamscore score FILE --out OUT` publishes the file's rows, collects every result and writes
the predictions in input order. Both run as subprocesses; their peak resident memory (VmHWM,
read from /proc while they run), the peak of its anonymous part (RssAnon, sampled every 0.5 s:
without the pages of mapped files, which the kernel can drop) and the job's wall time are
printed. The input is made first in a temporary folder (an `.npy` of float32 rows, or a CSV) and
deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import cluster
from bench.config import install_bench_model
from bench.processes import vm_hwm_mb
from transport.admin import create_topics
from worker.settings import setting_name

REPO = Path(__file__).resolve().parent.parent
FEATURES = 8
WRITE_CHUNK_ROWS = 1_000_000
TIMEOUT_S = 3600.0


def make_input(folder: Path, rows: int, fmt: str) -> Path:
    """`rows` rows of FEATURES values, written a chunk at a time (never the whole file in memory)."""
    rng = np.random.default_rng(0)
    if fmt == "npy":
        path = folder / "rows.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
        for start in range(0, rows, WRITE_CHUNK_ROWS):
            stop = min(rows, start + WRITE_CHUNK_ROWS)
            array[start:stop] = rng.random((stop - start, FEATURES), dtype=np.float32)
        array.flush()
        del array
        return path
    path = folder / "rows.csv"
    with path.open("w") as handle:
        handle.write(",".join(f"f{i}" for i in range(FEATURES)) + "\n")
        for start in range(0, rows, WRITE_CHUNK_ROWS):
            block = rng.random((min(WRITE_CHUNK_ROWS, rows - start), FEATURES), dtype=np.float32)
            np.savetxt(handle, block, delimiter=",", fmt="%.6g")
    return path


def environment(settings: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["PYTHONPATH"] = str(REPO)
    for name, value in settings.items():
        env[setting_name(name)] = str(value)
    return env


def rss_anon_mb(pid: int) -> float:
    """A process's anonymous resident memory now (MB): RSS without the pages of mapped files, which
    the kernel may drop at will (the memory-mapped .npy input, the spool read back at the end)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def watch(processes: dict[str, subprocess.Popen[bytes]], until: str) -> dict[str, float]:
    """Sample each process's peak RSS and peak anonymous RSS (MB) until `until` exits; the peaks."""
    peaks = {f"{name}{kind}": 0.0 for name in processes for kind in ("", " anon")}
    deadline = time.monotonic() + TIMEOUT_S
    while processes[until].poll() is None:
        for name, process in processes.items():
            peaks[name] = max(peaks[name], vm_hwm_mb(process.pid))
            peaks[f"{name} anon"] = max(peaks[f"{name} anon"], rss_anon_mb(process.pid))
        if time.monotonic() > deadline:
            raise RuntimeError("the score job took longer than the bench allows")
        time.sleep(0.5)
    return peaks


async def run(bootstrap: str, folder: Path, args: argparse.Namespace) -> None:
    topics = {"input": cluster.unique("score-in"), "results": cluster.unique("score-out")}
    topics["dead"] = f"{topics['input']}.DLT"
    await create_topics(bootstrap, list(topics.values()), 3)
    models = folder / "models"
    install_bench_model(models)
    print(f"making {args.rows:,} rows ({args.format})", file=sys.stderr)
    source = make_input(folder, args.rows, args.format)
    common = {"bootstrap_servers": bootstrap, "input_topic": topics["input"], "results_topic": topics["results"]}
    worker_env = environment(
        {
            **common,
            "dead_letter_topic": topics["dead"],
            "model_root": models,
            "control_topic": "",
            "log_level": "warning",
        }
    )
    worker = subprocess.Popen([sys.executable, "-m", "streamscore", "worker"], cwd=REPO, env=worker_env)
    out = folder / "predictions.csv"
    score_argv = [
        *("score", str(source), "--out", str(out), "--rows-per-request", str(args.rows_per_request)),
        *("--bootstrap-servers", bootstrap, "--topic", topics["input"], "--results-topic", topics["results"]),
        *("--dead-letter-topic", topics["dead"]),
    ]
    started = time.perf_counter()
    score = subprocess.Popen([sys.executable, "-m", "streamscore", *score_argv], cwd=REPO, env=environment({}))
    try:
        peaks = await asyncio.to_thread(watch, {"score": score, "worker": worker}, "score")
    finally:
        worker.terminate()
        worker.wait(60)
    wall = time.perf_counter() - started
    if score.returncode != 0:
        raise RuntimeError(f"streamscore score exited with {score.returncode}")
    lines = sum(1 for _ in out.open("rb")) - 1
    print("| rows | format | rows/request | score peak RSS (anonymous) | worker peak RSS (anonymous) | wall | rows/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.rows:,} | {args.format} | {args.rows_per_request} "
        f"| {peaks['score']:.0f} MB ({peaks['score anon']:.0f} MB) "
        f"| {peaks['worker']:.0f} MB ({peaks['worker anon']:.0f} MB) | {wall:.0f} s | {args.rows / wall:,.0f} |"
    )
    print(f"{lines:,} predictions written", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.score_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-request", type=int, default=100)
    parser.add_argument("--format", choices=("npy", "csv"), default="npy")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="streamscore-score-memory-") as folder,
        cluster.running_broker() as bootstrap,
    ):
        asyncio.run(run(bootstrap, Path(folder), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
