"""The worker's producer linger and fetch size, chosen by measurement: throughput and latency for each value.

    python -m bench.tuning [--records 50000] [--rows 1] [--rounds 3] [--rate 2000] [--seconds 5] [--lingers 0,2,5,10,20]
    python -m bench.tuning --fetch-kib 256,1024,4096 [--rows 64] ...

On its own broker, one topic of single-row requests is scored by the real worker (burst mode)
once per linger per round (lingers interleaved within each round); then, per linger, requests
trickle in at `--rate` per second and each one's latency is taken from its send to its result's
acknowledgement. It prints the median rows/s, p50 and p99 of each linger. The worker's
`PRODUCER_LINGER_MS` (worker/clients.py) is set from this table (bench/README.md keeps it).
With `--fetch-kib`, the values tried are the consumer's `max_partition_fetch_bytes` instead
(`PARTITION_FETCH_BYTES`), the linger the worker's own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import cluster
from bench.config import install_bench_model
from bench.latency import Latency, LatencyLog, runs_table, trickle
from bench.streamscore import TimedWorker, run_burst, wait_assigned, worker_settings
from transport.admin import create_topics
from worker import clients
from worker.settings import Settings

PARTITIONS = 3

Runs = dict[int, list[tuple[float, float, float]]]  # value tried -> (rows/s, p50 ms, p99 ms) per round


async def measure(bootstrap: str, args: argparse.Namespace) -> Runs:
    topic = cluster.unique("tuning-in")
    await create_topics(bootstrap, [topic], PARTITIONS)
    await cluster.produce(bootstrap, topic, cluster.make_requests(args.records, args.rows))
    values, knob = (args.fetch_kib, "fetch KiB") if args.fetch_kib else (args.lingers, "linger ms")
    found: Runs = {value: [] for value in values}
    with tempfile.TemporaryDirectory(prefix="streamscore-tuning-models-") as root:
        install_bench_model(Path(root))
        for round_number in range(args.rounds):
            for value in values:
                if args.fetch_kib:
                    clients.PARTITION_FETCH_BYTES = value * 1024
                else:
                    clients.PRODUCER_LINGER_MS = value
                worker, _ = await run_burst(await _settings(bootstrap, topic, Path(root)), args.rows)
                latency = await _latency(bootstrap, Path(root), args.rate, args.seconds, args.rows)
                found[value].append((worker.span.rows_per_s, latency.p50, latency.p99))
                rows, p50, p99 = found[value][-1]
                shown = f"{rows:>9,.0f} rows/s  p50 {p50:.1f}  p99 {p99:.1f} ms"
                print(f"round {round_number + 1} {knob} {value:>5} {shown}", file=sys.stderr)
    return found


async def _settings(bootstrap: str, topic: str, root: Path) -> Settings:
    out = cluster.unique("tuning-out")
    await create_topics(bootstrap, [out, f"{topic}.DLT"], PARTITIONS)
    return worker_settings(bootstrap, topic, out, cluster.unique("tuning"), root)


async def _latency(bootstrap: str, root: Path, rate: float, seconds: float, rows: int) -> Latency:
    """A worker runs while requests trickle in at `rate`: the latency of each, send to acknowledgement."""
    topic = cluster.unique("tuning-trickle")
    await create_topics(bootstrap, [topic], PARTITIONS)
    log = LatencyLog()
    worker = TimedWorker(await _settings(bootstrap, topic, root), rows, on_result=log.result)
    running = asyncio.create_task(worker.run())
    requests = cluster.make_requests(max(1, int(rate * seconds)), rows, seed=2)
    try:
        order = await trickle(bootstrap, topic, requests, rate, log, lambda: wait_assigned(worker))
    finally:
        worker.request_stop()
        await asyncio.gather(running, return_exceptions=True)
    return log.summary(order)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second in the latency phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the latency phase")
    numbers = lambda raw: [int(v) for v in raw.split(",")]  # noqa: E731
    parser.add_argument("--lingers", type=numbers, default=[0, 2, 5, 10, 20])
    parser.add_argument("--fetch-kib", type=numbers, help="try these max_partition_fetch_bytes (KiB), not lingers")
    args = parser.parse_args(argv)
    from worker.logs import configure_logging

    configure_logging("json", "warning")
    with cluster.running_broker_at() as (bootstrap, _):
        found = asyncio.run(measure(bootstrap, args))
    print(runs_table("fetch KiB" if args.fetch_kib else "linger ms", found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
