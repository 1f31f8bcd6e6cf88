"""What hashing a batch's keys at once saves over aiokafka's partitioner (transport.partitioner), by measurement.

    python -m bench.partitioner [--batches 1,16,32,100,500] [--rounds 5]

For each batch size, the same keys (request ids as the bench sends them, `ok-<n>`) are placed on
12 partitions by aiokafka's `DefaultPartitioner`, one key at a time as `send` calls it, and by
`KeyPartitioner`, primed with the batch first as the score loop does; the two alternate within
each round. It prints each one's median microseconds a key and the ratio. No broker.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from aiokafka.partitioner import DefaultPartitioner

from transport.partitioner import KeyPartitioner

PARTITIONS = list(range(12))
KEYS = 20_000  # keys a measurement places, in batches of the size measured


def us_per_key(place: Callable[[list[bytes]], None], keys: list[bytes], size: int) -> float:
    batches = [keys[i : i + size] for i in range(0, len(keys), size)]
    started = time.perf_counter()
    for batch in batches:
        place(batch)
    return (time.perf_counter() - started) / len(keys) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.partitioner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,16,32,100,500", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each, alternating")
    args = parser.parse_args(argv)
    keys = [f"ok-{n}".encode() for n in range(1_000_000, 1_000_000 + KEYS)]
    default, primed = DefaultPartitioner(), KeyPartitioner()

    def aiokafka(batch: list[bytes]) -> None:
        for key in batch:
            default(key, PARTITIONS, PARTITIONS)

    def batched(batch: list[bytes]) -> None:
        primed.prime(batch)
        for key in batch:
            primed(key, PARTITIONS, PARTITIONS)

    print(f"{'batch':>6} {'aiokafka us/key':>16} {'batched us/key':>15} {'speed-up':>9}")
    for size in (int(s) for s in args.batches.split(",")):
        found: dict[str, list[float]] = {"aiokafka": [], "batched": []}
        for _ in range(args.rounds):
            found["aiokafka"].append(us_per_key(aiokafka, keys, size))
            found["batched"].append(us_per_key(batched, keys, size))
        old, new = (statistics.median(found[name]) for name in ("aiokafka", "batched"))
        print(f"{size:>6} {old:>16.2f} {new:>15.2f} {old / new:>8.1f}x")
    print(f"medians of {args.rounds} rounds, {KEYS:,} keys each, {len(PARTITIONS)} partitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
