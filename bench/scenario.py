"""One scenario, end to end: produce its input once, run every contender over it, measure latency."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import cluster, loops
from bench.config import BenchConfig, Scenario
from bench.latency import Latency, LatencyLog, trickle
from bench.ort import measure_ort
from bench.report import ScenarioResult
from bench.streamscore import TimedWorker, run_burst, wait_assigned, worker_settings
from bench.timing import Span
from transport.admin import create_topics

Progress = Callable[[str], None]


async def measure(
    scenario: Scenario,
    config: BenchConfig,
    bootstrap: str,
    model_root: Path,
    model_path: Path,
    progress: Progress,
) -> ScenarioResult:
    """Measure one scenario on the broker at `bootstrap`."""
    rows, records = scenario.rows_per_request, scenario.records(config.records)
    topic = cluster.unique(f"{scenario.name}-in")
    outs = {name: cluster.unique(f"{scenario.name}-{name}") for name in ("echo", "naive", "streamscore")}
    await create_topics(bootstrap, [topic, *outs.values()], config.partitions)
    progress(f"{scenario.name}: producing {records:,} requests of {rows} row(s)")
    await cluster.produce(bootstrap, topic, cluster.make_requests(records, rows))

    progress(f"{scenario.name}: echo")
    echo = await loops.run_echo(bootstrap, topic, cluster.unique("echo"), outs["echo"], records, rows)
    naive_limit = min(records, config.naive_records)
    progress(f"{scenario.name}: naive (first {naive_limit:,} records)")
    naive = await loops.run_naive(
        bootstrap, topic, cluster.unique("naive"), outs["naive"], model_path, rows, limit=naive_limit
    )
    progress(f"{scenario.name}: streamscore")
    settings = worker_settings(bootstrap, topic, outs["streamscore"], cluster.unique("ss"), model_root)
    worker, wall = await run_burst(settings, rows, config.profile if scenario.rows_per_request == 1 else None)
    await _check_outputs(bootstrap, config.partitions, outs, {"echo": echo, "naive": naive, "streamscore": worker.span})

    batch_rows = round(statistics.median(worker.batch_rows)) if worker.batch_rows else 256
    progress(f"{scenario.name}: onnxruntime alone, batches of {batch_rows} rows")
    ort_rows = await asyncio.to_thread(measure_ort, model_path, batch_rows, config.ort_seconds)

    ss_latency = await _latency_streamscore(scenario, config, bootstrap, model_root, progress)
    naive_latency = await _latency_naive(scenario, config, bootstrap, model_path, progress)
    return ScenarioResult(
        name=scenario.name,
        records=records,
        rows_per_request=rows,
        rows_per_s={
            "naive": naive.rows_per_s,
            "streamscore": worker.span.rows_per_s,
            "echo": echo.rows_per_s,
            "ort": ort_rows,
        },
        latency_ms={"p50": ss_latency.p50, "p99": ss_latency.p99},
        extra={
            "naive_records": naive.records,
            "seconds": {"naive": naive.seconds, "streamscore": worker.span.seconds, "echo": echo.seconds},
            "streamscore_wall_s": round(wall, 3),
            "streamscore_batches": len(worker.batch_rows),
            "streamscore_median_batch_rows": batch_rows,
            "ort_batch_rows": batch_rows,
            "latency": {
                "rate_per_s": config.trickle_rate,
                "seconds": config.trickle_seconds,
                "streamscore": _latency_dict(ss_latency),
                "naive": _latency_dict(naive_latency),
            },
        },
    )


async def _check_outputs(bootstrap: str, partitions: int, outs: dict[str, str], spans: dict[str, Span]) -> None:
    """Each contender wrote one output per record it reports (no silent loss or duplicates)."""
    for name, topic in outs.items():
        written = await cluster.count_records(bootstrap, topic, partitions)
        if written != spans[name].records:
            raise RuntimeError(f"{name} reports {spans[name].records} outputs but {topic} holds {written}")


async def _latency_streamscore(
    scenario: Scenario, config: BenchConfig, bootstrap: str, model_root: Path, progress: Progress
) -> Latency:
    topic, out = await _trickle_topics(scenario, config, bootstrap, "streamscore", progress)
    log = LatencyLog()
    settings = worker_settings(bootstrap, topic, out, cluster.unique("ss-trickle"), model_root)
    worker = TimedWorker(settings, scenario.rows_per_request, on_result=log.result)
    running = asyncio.create_task(worker.run())
    assigned = lambda: wait_assigned(worker)  # noqa: E731
    return await _trickle_to(running, worker.request_stop, assigned, log, scenario, config, topic, bootstrap)


async def _latency_naive(
    scenario: Scenario, config: BenchConfig, bootstrap: str, model_path: Path, progress: Progress
) -> Latency:
    topic, out = await _trickle_topics(scenario, config, bootstrap, "naive", progress)
    log, stop, assigned = LatencyLog(), asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        loops.run_naive(
            bootstrap,
            topic,
            cluster.unique("naive-trickle"),
            out,
            model_path,
            scenario.rows_per_request,
            stop=stop,
            on_result=log.result,
            assigned=assigned,
        )
    )
    return await _trickle_to(running, stop.set, assigned.wait, log, scenario, config, topic, bootstrap)


async def _trickle_to(
    running: asyncio.Task[Any],
    stop: Callable[[], None],
    assigned: Callable[[], Awaitable[Any]],
    log: LatencyLog,
    scenario: Scenario,
    config: BenchConfig,
    topic: str,
    bootstrap: str,
) -> Latency:
    """Trickle requests into `topic` once the contender is assigned; stop it; the latencies it logged."""
    try:
        order = await trickle(bootstrap, topic, _trickle_requests(scenario, config), config.trickle_rate, log, assigned)
    finally:
        stop()
        await running
    return log.summary(order)


async def _trickle_topics(
    scenario: Scenario, config: BenchConfig, bootstrap: str, contender: str, progress: Progress
) -> tuple[str, str]:
    """Fresh input and output topics for one contender's latency run."""
    topic, out = cluster.unique(f"{scenario.name}-trickle"), cluster.unique(f"{scenario.name}-trickle-{contender}")
    await create_topics(bootstrap, [topic, out], config.partitions)
    progress(f"{scenario.name}: latency of {contender} at {config.trickle_rate:g}/s")
    return topic, out


def _trickle_requests(scenario: Scenario, config: BenchConfig) -> list[tuple[bytes, bytes]]:
    count = max(1, int(config.trickle_rate * config.trickle_seconds))
    return cluster.make_requests(count, scenario.rows_per_request, seed=2)


def _latency_dict(latency: Latency) -> dict[str, float]:
    return {"p50_ms": round(latency.p50, 2), "p99_ms": round(latency.p99, 2), "samples": latency.samples}
