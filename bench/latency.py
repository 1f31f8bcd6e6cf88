"""End-to-end latency at a modest steady rate (the "trickle" phase).

Requests are produced at a fixed rate while a consumer (streamscore's worker, or the naive loop)
runs in this process; a request's latency is from the moment its send was called to the moment
the broker acknowledged its result, both on this process's `perf_counter` clock.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

WARMUP_FRACTION = 0.1  # the first requests pay for connections and caches: left out
DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Latency:
    """Percentiles of end-to-end latency, in milliseconds, over `samples` requests."""

    p50: float
    p99: float
    samples: int
    p999: float = float("nan")


class LatencyLog:
    """When each request was sent and when its result was acknowledged."""

    def __init__(self) -> None:
        self.sent: dict[bytes, float] = {}
        self.done: dict[bytes, float] = {}

    def result(self, request_id: bytes, at: float) -> None:
        """Record the acknowledgement of a result (an `on_result` callback)."""
        self.done.setdefault(request_id, at)

    def summary(self, order: list[bytes]) -> Latency:
        """p50, p99 and p99.9 over the requests after the warm-up, in send order."""
        kept = order[int(len(order) * WARMUP_FRACTION) :]
        values = np.array([self.done[i] - self.sent[i] for i in kept if i in self.done]) * 1000
        if not len(values):
            return Latency(float("nan"), float("nan"), 0)
        p50, p99, p999 = (float(np.percentile(values, q)) for q in (50, 99, 99.9))
        return Latency(p50, p99, len(values), p999)


async def trickle(
    bootstrap: str,
    topic: str,
    requests: Sequence[tuple[bytes, bytes] | tuple[bytes, bytes, list[tuple[str, bytes]]]],
    rate: float,
    log: LatencyLog,
    ready: Callable[[], Awaitable[object]],
) -> list[bytes]:
    """Produce `requests` at `rate` per second once `ready()` returns; wait until all results are in."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        await ready()
        futures, order = [], []
        started = time.perf_counter()
        for index, (key, value, *headers) in enumerate(requests):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            log.sent[key] = time.perf_counter()
            order.append(key)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers[0] if headers else None))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        while len(log.done) < len(requests):
            await asyncio.sleep(0.05)
    return order


def runs_table(label: str, found: Mapping[Any, Sequence[tuple[float, float, float]]]) -> str:
    """One line per contender: median rows/s, every run's, and median p50 and p99 (each run is
    (rows/s, p50 ms, p99 ms)); `label` heads the first column."""
    lines = [f"{label:>15} {'rows/s (median)':>16} {'runs':>24} {'p50 ms':>7} {'p99 ms':>7}"]
    for name, runs in found.items():
        rates = [rate for rate, _, _ in runs]
        shown = ", ".join(f"{rate / 1000:.1f}k" for rate in rates)
        p50 = statistics.median(p for _, p, _ in runs)
        p99 = statistics.median(p for _, _, p in runs)
        lines.append(f"{name!s:>15} {statistics.median(rates):>16,.0f} {shown:>24} {p50:>7.1f} {p99:>7.1f}")
    return "\n".join(lines)
