"""What exactly-once costs beside at-least-once, by measurement.

    python -m bench.guarantee [--records 50000] [--rounds 3] [--rate 500] [--seconds 5]

On its own broker, one topic of single-row requests is scored by the real worker (burst mode),
once per guarantee per round, the guarantees interleaved within each round; then each guarantee's
latency is measured while requests trickle in at `--rate` per second: from a request's send to
the moment a read_committed consumer of the results first sees its result (in exactly-once, that
is after the commit of its transaction). It prints, per guarantee, the median rows/s and the
median p50 and p99. The README's "Exactly once" section keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench import cluster
from bench.config import install_bench_model
from bench.latency import Latency, LatencyLog, runs_table, trickle
from bench.streamscore import TimedWorker, run_burst, wait_assigned, worker_settings
from transport.admin import create_topics
from worker.settings import GUARANTEES, Settings

PARTITIONS = 3

Runs = dict[str, list[tuple[float, float, float]]]  # guarantee -> (rows/s, p50 ms, p99 ms) per round


async def measure(bootstrap: str, records: int, rounds: int, rate: float, seconds: float) -> Runs:
    topic = cluster.unique("guarantee-in")
    await create_topics(bootstrap, [topic], PARTITIONS)
    await cluster.produce(bootstrap, topic, cluster.make_requests(records, 1))
    found: Runs = {guarantee: [] for guarantee in GUARANTEES}
    with tempfile.TemporaryDirectory(prefix="streamscore-guarantee-models-") as root:
        install_bench_model(Path(root))
        for round_number in range(rounds):
            for guarantee in GUARANTEES:
                settings = await _settings(bootstrap, topic, Path(root), guarantee)
                worker, _ = await run_burst(settings, 1)
                latency = await _latency(bootstrap, Path(root), guarantee, rate, seconds)
                found[guarantee].append((worker.span.rows_per_s, latency.p50, latency.p99))
                rows, p50, p99 = found[guarantee][-1]
                print(
                    f"round {round_number + 1} {guarantee:14} {rows:>9,.0f} rows/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms",
                    file=sys.stderr,
                )
    return found


async def _settings(bootstrap: str, topic: str, root: Path, guarantee: str) -> Settings:
    out = cluster.unique(f"guarantee-{guarantee}")
    await create_topics(bootstrap, [out, f"{topic}.DLT"], PARTITIONS)
    settings = worker_settings(bootstrap, topic, out, cluster.unique("guarantee"), root)
    return settings.replace(guarantee=guarantee)


async def _latency(bootstrap: str, root: Path, guarantee: str, rate: float, seconds: float) -> Latency:
    """A worker runs while requests trickle in at `rate`: the latency of each, send to acknowledgement."""
    topic = cluster.unique("guarantee-trickle")
    await create_topics(bootstrap, [topic], PARTITIONS)
    settings = await _settings(bootstrap, topic, root, guarantee)
    log = LatencyLog()
    worker = TimedWorker(settings, 1)
    running = asyncio.create_task(worker.run())
    reading = asyncio.create_task(_read_committed(bootstrap, settings.results_topic, log))
    requests = cluster.make_requests(max(1, int(rate * seconds)), 1, seed=2)
    try:
        order = await trickle(bootstrap, topic, requests, rate, log, lambda: wait_assigned(worker))
    finally:
        worker.request_stop()
        reading.cancel()
        await asyncio.gather(running, reading, return_exceptions=True)
    return log.summary(order)


async def _read_committed(bootstrap: str, topic: str, log: LatencyLog) -> None:
    """Note when a read_committed consumer first sees each result (its key is the request id)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                seen = time.perf_counter()
                for record in records:
                    log.result(record.key, seen)
    finally:
        await consumer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guarantee", description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second in the latency phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency phase")
    args = parser.parse_args(argv)
    from worker.logs import configure_logging

    configure_logging("json", "warning")
    with cluster.running_broker_at() as (bootstrap, _):
        found = asyncio.run(measure(bootstrap, args.records, args.rounds, args.rate, args.seconds))
    print(runs_table("guarantee", found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
