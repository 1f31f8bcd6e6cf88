"""Share groups beside consumer groups for a slow model: rows/s against the number of workers.

    python -m bench.share [--records-per-worker 300] [--ms-per-row 20] [--workers 1,2,4,6] [--rounds 1]

On its own broker, for each worker count N and each mode (a consumer group, then a share group):
N worker processes start on a fresh 2-partition topic and join (the consumer group's partitions
assigned, the share group joined); then N x --records-per-worker one-row requests are produced in
small batches (as an event stream is; the share consumer acquires whole producer batches, README
"Share groups"), the workers score them, and stop on SIGTERM. Throughput is read from the results:
their count over the span of their broker timestamps.

The model holds each run for rows x --ms-per-row in a sleep before scoring (the demo MLP), that
is, off this machine's CPU, as a GPU or a remote model server would: on a 2-core machine a
CPU-bound 20 ms model is capped by the cores, whatever the group, and would hide the partition
cap that share groups remove.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench import cluster
from bench.config import install_bench_model
from bench.processes import result_times
from transport.admin import create_topics
from worker.settings import setting_name

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 2
RUN_TIMEOUT_S = 600.0
MODES = ("group", "share")
JOIN_SETTLE_S = 3.0


async def produce_stream(bootstrap: str, topic: str, count: int) -> None:
    """`count` one-row requests, in batches of a few records (linger 0), spread over the partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    try:
        futures = []
        for index, (key, value, headers) in enumerate(cluster.make_requests(count, 1)):
            futures.append(await producer.send(topic, value, key=key, headers=headers, partition=index % PARTITIONS))
            if index % 20 == 19:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def start_workers(
    settings: dict[str, object], count: int, ms_per_row: float, logs: Path
) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["PYTHONPATH"] = str(REPO)
    for name, value in {**settings, "log_format": "json", "log_level": "info"}.items():
        env[setting_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    command = [sys.executable, "-m", "bench.slow_worker", str(ms_per_row)]
    processes = []
    for i in range(count):
        with (logs / f"worker-{i}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(command, cwd=REPO, env={**env, "STREAMSCORE_WORKER_ID": f"bench-{i}"}, stderr=log)
            )
    return processes


def events(logs: Path, name: str) -> list[dict[str, object]]:
    found = []
    for path in logs.glob("worker-*.log"):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    found.append(event)
    return found


async def joined(logs: Path, mode: str, processes: list[subprocess.Popen[bytes]]) -> None:
    """Wait until every worker started, then a few seconds more: the consumer group's rebalance ends,
    and a share group hands out records on its next assignment round (a second) after a member joins."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(events(logs, "worker_started")) < len(processes):
        exited = [p.returncode for p in processes if p.poll() is not None]
        if exited or time.monotonic() > deadline:
            raise RuntimeError(f"{len(processes)} {mode} workers did not start (exits: {exited}); logs in {logs}")
        await asyncio.sleep(0.2)
    await asyncio.sleep(JOIN_SETTLE_S)


async def one_run(bootstrap: str, root: Path, mode: str, workers: int, args: argparse.Namespace) -> tuple[float, int]:
    """N worker processes in `mode`, joined, then the requests; rows/s and how many results."""
    topic, results = cluster.unique(f"share-bench-{mode}-{workers}-in"), cluster.unique(f"share-bench-{mode}-out")
    await create_topics(bootstrap, [topic], PARTITIONS)
    await create_topics(bootstrap, [results], 1)
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "input_topic": topic,
        "results_topic": results,
        "group_id": cluster.unique(f"share-bench-{mode}-{workers}"),
        "control_topic": "",
        "model_root": str(root),
        "consumption": mode,
        "share_max_records": 16,
        "max_batch_rows": 16,
        # a slow model's fair setting for a consumer group: a worker that fetched hundreds of records would
        # score them all before a rebalance lets the partition go to another worker
        "max_in_flight": 32,
    }
    records = args.records_per_worker * workers
    with tempfile.TemporaryDirectory(prefix="streamscore-share-bench-logs-") as folder:
        logs = Path(folder)
        processes = start_workers(settings, workers, args.ms_per_row, logs)
        try:
            await joined(logs, mode, processes)
            await produce_stream(bootstrap, topic, records)
            count = await wait_for_results(bootstrap, results, records)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                await asyncio.to_thread(process.wait, 60)
    count, first_ms, last_ms = await result_times(bootstrap, results)
    return count / max(1e-3, (last_ms - first_ms) / 1000), count


async def wait_for_results(bootstrap: str, topic: str, expected: int) -> int:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        count = await cluster.count_records(bootstrap, topic, 1)
        if count >= expected:
            return count
        await asyncio.sleep(1.0)
    raise RuntimeError(f"{topic}: fewer than {expected} results after {RUN_TIMEOUT_S:.0f} s")


async def measure(bootstrap: str, args: argparse.Namespace) -> dict[str, dict[int, list[float]]]:
    found: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in args.workers} for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="streamscore-share-bench-models-") as root:
        install_bench_model(Path(root))
        for round_number in range(args.rounds):
            for workers in args.workers:
                for mode in MODES:
                    rate, count = await one_run(bootstrap, Path(root), mode, workers, args)
                    found[mode][workers].append(rate)
                    print(
                        f"round {round_number + 1} {mode:5} {workers} workers {rate:8.1f} rows/s ({count} results)",
                        file=sys.stderr,
                    )
    return found


def table(found: dict[str, dict[int, list[float]]], ms_per_row: float) -> str:
    ideal = 1000 / ms_per_row
    lines = [
        f"rows/s (median of rounds), model {ms_per_row:g} ms per row off the CPU, {PARTITIONS} partitions; "
        f"one worker's ideal {ideal:.0f} rows/s",
        "| workers | consumer group | share group | share / group |",
        "|---|---|---|---|",
    ]
    for workers in found["group"]:
        group, share = (statistics.median(found[mode][workers]) for mode in MODES)
        lines.append(f"| {workers} | {group:.1f} | {share:.1f} | {share / group:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.share", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records-per-worker", type=int, default=300)
    parser.add_argument("--ms-per-row", type=float, default=20.0)
    parser.add_argument("--workers", type=lambda raw: [int(n) for n in raw.split(",")], default=[1, 2, 4, 6])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    with cluster.running_broker() as bootstrap:
        found = asyncio.run(measure(bootstrap, args))
    print(table(found, args.ms_per_row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
