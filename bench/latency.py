"""End-to-end latency at a modest steady rate (the "trickle" phase).

Requests are produced at a fixed rate while a consumer (streamscore's worker, or the naive loop)
runs in this process; a request's latency is from the moment its send was called to the moment
the broker acknowledged its result, both on this process's `perf_counter` clock. The producing
side shares the contender's garbage collector, so it holds as few objects as it can: the
requests are built and frozen out of the collector's reach before the run (`gc.freeze`), and
the futures of acknowledged sends are dropped as it goes.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

WARMUP_FRACTION = 0.1  # the first requests pay for connections and caches: left out
DRAIN_TIMEOUT_S = 30.0
KEPT_FUTURES = 1_000  # every this many sends, the futures of those acknowledged are checked and dropped


@dataclass(frozen=True)
class Latency:
    """Percentiles of end-to-end latency, in milliseconds, over `samples` requests."""

    p50: float
    p99: float
    samples: int
    p999: float = float("nan")
    gc: Mapping[str, float] = field(default_factory=dict)  # GcPauses.summary() of the run


class GcPauses:
    """The garbage collector's pauses while entered: this process's, the contender's and the producing
    side's alike. A full collection stops the event loop for as long as it walks the heap; one that
    lasts longer than the p99 budget shows as that p99."""

    def __init__(self) -> None:
        self.full: list[float] = []  # seconds each full (generation 2) collection took
        self.total_s = 0.0  # of every collection
        self._started = 0.0

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.total_s += took
        if info["generation"] == 2:
            self.full.append(took)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def summary(self) -> dict[str, float]:
        return {
            "full_collections": len(self.full),
            "longest_full_ms": round(max(self.full, default=0.0) * 1000, 1),
            "all_collections_ms": round(self.total_s * 1000, 1),
        }


class LatencyLog:
    """When each request was sent and when its result was acknowledged."""

    def __init__(self) -> None:
        self.sent: dict[bytes, float] = {}
        self.done: dict[bytes, float] = {}

    def result(self, request_id: bytes, at: float) -> None:
        """Record the acknowledgement of a result (an `on_result` callback)."""
        self.done.setdefault(request_id, at)

    def summary(self, order: list[bytes], pauses: GcPauses | None = None) -> Latency:
        """p50, p99 and p99.9 over the requests after the warm-up, in send order (and the run's pauses)."""
        kept = order[int(len(order) * WARMUP_FRACTION) :]
        values = np.array([self.done[i] - self.sent[i] for i in kept if i in self.done]) * 1000
        paused = pauses.summary() if pauses is not None else {}
        if not len(values):
            return Latency(float("nan"), float("nan"), 0, gc=paused)
        p50, p99, p999 = (float(np.percentile(values, q)) for q in (50, 99, 99.9))
        return Latency(p50, p99, len(values), p999, gc=paused)


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
        futures: list[asyncio.Future[Any]] = []
        order = []
        started = time.perf_counter()
        for index, (key, value, *headers) in enumerate(requests):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            log.sent[key] = time.perf_counter()
            order.append(key)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers[0] if headers else None))
            if index % KEPT_FUTURES == KEPT_FUTURES - 1:  # the contender shares this process's collector
                await asyncio.gather(*(f for f in futures if f.done()))  # raises a failed send's error
                futures = [f for f in futures if not f.done()]
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
