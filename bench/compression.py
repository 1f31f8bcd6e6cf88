"""Which codec the worker should write results and dead letters with, by measurement.

    python -m bench.compression [--records 50000] [--rounds 3] [--scenario single-row-mlp]

On its own broker, one topic of a bench scenario's requests (bench/config.py; single-row JSON
by default) is scored again and again by the real worker (burst mode), once per codec per round,
codecs interleaved within each round; for each codec it prints the median rows/s and the bytes
the results topic takes on the broker's disk. The worker's default (`STREAMSCORE_COMPRESSION`)
is the codec this chose; bench/README.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import cluster
from bench.config import SCENARIOS, Scenario
from bench.models import MODELS
from bench.streamscore import run_burst, worker_settings
from transport.admin import create_topics
from worker.settings import COMPRESSIONS

PARTITIONS = 3


async def measure(
    bootstrap: str, data_dir: Path, records: int, rounds: int, scenario: Scenario
) -> dict[str, list[tuple[float, int]]]:
    """(rows/s, bytes of the results topic on disk) of each codec, one entry per round."""
    topic = cluster.unique("codec-in")
    await create_topics(bootstrap, [topic], PARTITIONS)
    await cluster.produce_requests(bootstrap, topic, scenario, records)
    model = MODELS[scenario.model]
    found: dict[str, list[tuple[float, int]]] = {codec: [] for codec in COMPRESSIONS}
    with tempfile.TemporaryDirectory(prefix="streamscore-codec-models-") as root:
        model.install(Path(root))
        for round_number in range(rounds):
            for codec in COMPRESSIONS:
                out = cluster.unique(f"codec-{codec}")
                await create_topics(bootstrap, [out], PARTITIONS)
                settings = worker_settings(bootstrap, topic, out, cluster.unique("codec"), Path(root), model.name)
                worker, _ = await run_burst(settings.replace(compression=codec), scenario.rows_per_request)
                found[codec].append((worker.span.rows_per_s, topic_bytes(data_dir, out)))
                print(f"round {round_number + 1} {codec:6} {found[codec][-1][0]:>9,.0f} rows/s", file=sys.stderr)
    return found


def topic_bytes(data_dir: Path, topic: str) -> int:
    """Bytes the topic's log segments take in the broker's data folder."""
    return sum(f.stat().st_size for d in data_dir.glob(f"{topic}-*") for f in d.glob("*.log"))


def table(found: dict[str, list[tuple[float, int]]], records: int) -> str:
    lines = [f"{'codec':8} {'rows/s (median)':>16} {'runs':>28} {'results on disk':>16} {'bytes/result':>13}"]
    for codec, runs in found.items():
        rates = [rate for rate, _ in runs]
        size = statistics.median(size for _, size in runs)
        shown = ", ".join(f"{rate / 1000:.1f}k" for rate in rates)
        lines.append(
            f"{codec:8} {statistics.median(rates):>16,.0f} {shown:>28} {size / 1e6:>13.1f} MB {size / records:>13.0f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", default="single-row-mlp", choices=sorted(SCENARIOS), help="whose requests")
    args = parser.parse_args(argv)
    from worker.logs import configure_logging

    configure_logging("json", "warning")
    with cluster.running_broker_at() as (bootstrap, data_dir):
        found = asyncio.run(measure(bootstrap, data_dir, args.records, args.rounds, SCENARIOS[args.scenario]))
    print(table(found, args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
