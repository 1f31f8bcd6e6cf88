"""One scenario, end to end: produce its input once, run every contender over it, measure latency.

For each scenario: the echo ceiling and (where it applies) the naive loop over the same input;
streamscore, timed and its memory sampled, then once more with its stages profiled
(bench/stages.py; a run of its own, as the profile's wrappers slow what they time); onnxruntime
alone at the batch size streamscore ran; then latency at half of streamscore's peak rate, for
streamscore and for echo at the same rate. A multi-process scenario runs `streamscore worker
--processes N` beside one process, both as subprocesses (bench/processes.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import cluster, loops
from bench.config import BenchConfig, Scenario
from bench.latency import GcPauses, Latency, LatencyLog, trickle
from bench.models import MODELS, make_requests
from bench.ort import measure_ort
from bench.processes import run_processes
from bench.report import ScenarioResult
from bench.stages import StageClock
from bench.streamscore import TimedWorker, run_burst, wait_assigned, worker_settings
from bench.timing import Span
from transport.admin import create_topics
from worker.runner import freeze_heap

Progress = Callable[[str], None]
MEMORY_SAMPLE_S = 0.1
MAX_TRICKLE_REQUESTS = 60_000
PASSED_ON = ("bootstrap_servers", "input_topic", "model_root", "model_name", "dead_letter_topic")
TRICKLE_BYTES = 150_000_000  # of requests built for a latency run (CNN images are 0.6 MB each)


async def measure(
    scenario: Scenario, config: BenchConfig, bootstrap: str, model_root: Path, progress: Progress
) -> ScenarioResult:
    """Measure one scenario on the broker at `bootstrap`."""
    model = MODELS[scenario.model]
    model_path = model.install(model_root)
    rows, records = scenario.rows_per_request, scenario.records(config.records, config.quick)
    topic = cluster.unique(f"{scenario.name}-in")
    names = ("echo", "naive", "streamscore", "profiled", "dlt")
    outs = {name: cluster.unique(f"{scenario.name}-{name}") for name in names}
    await create_topics(bootstrap, [topic, *outs.values()], config.partitions)
    progress(f"{scenario.name}: producing {records:,} requests of {rows} row(s)")
    await cluster.produce_requests(bootstrap, topic, scenario, records)

    freeze_heap()  # every contender runs on a frozen heap, as a worker process does once it started
    progress(f"{scenario.name}: echo")
    echo = await loops.run_echo(bootstrap, topic, cluster.unique("echo"), outs["echo"], records, rows)
    naive = Span()
    if scenario.naive:
        limit = min(records, config.naive_records)
        progress(f"{scenario.name}: naive (first {limit:,} records)")
        naive = await loops.run_naive(
            bootstrap, topic, cluster.unique("naive"), outs["naive"], model_path, rows, limit=limit
        )
    settings = worker_settings(bootstrap, topic, outs["streamscore"], cluster.unique("ss"), model_root, model.name)
    settings = settings.replace(dead_letter_topic=outs["dlt"])
    extra: dict[str, Any] = {}
    if scenario.processes > 1:
        streamscore_rows, extra = await _processes(scenario, dataclasses.asdict(settings), bootstrap, config, progress)
        batch_rows = model.fixed_batch or 1
    else:
        progress(f"{scenario.name}: streamscore")
        memory = Memory()
        worker, wall = await memory.during(run_burst(settings, rows, config.profile if rows == 1 else None))
        await _check_outputs(bootstrap, config.partitions, outs, {"echo": echo, "streamscore": worker.span})
        streamscore_rows = worker.span.rows_per_s
        batch_rows = round(statistics.median(worker.batch_rows)) if worker.batch_rows else 1
        extra = {
            "streamscore_wall_s": round(wall, 3),
            "streamscore_batches": len(worker.batch_rows),
            "streamscore_median_batch_rows": batch_rows,
            "rss_mb": memory.figures(),
            "in_flight_bound_mb": round(settings.max_in_flight_bytes / 2**20, 1),
        }
        if config.stages:  # a run of its own: the timing's wrappers cost the loop about a microsecond a call
            progress(f"{scenario.name}: streamscore again, its stages timed")
            clock = StageClock()
            profiled = settings.replace(results_topic=outs["profiled"], group_id=cluster.unique("ss-stages"))
            with clock.installed():
                timed, _ = await run_burst(profiled, rows)
            extra["stages"] = clock.profile(timed.span.records, timed.span.seconds)
            extra["stages_run_rows_per_s"] = round(timed.span.rows_per_s)

    progress(f"{scenario.name}: onnxruntime alone, batches of {model.fixed_batch or batch_rows} rows")
    ort_rows, batch_s = await asyncio.to_thread(measure_ort, model, model_path, batch_rows, config.ort_seconds)
    rate = max(1.0, streamscore_rows / rows / 2)  # requests per second: half the peak
    latency = await _latencies(scenario, config, bootstrap, model_root, rate, progress)
    bound_ms = settings.max_batch_delay_ms + 2 * batch_s * 1000 + latency["echo"].p99
    return ScenarioResult(
        name=scenario.name,
        records=records,
        rows_per_request=rows,
        rows_per_s={
            "naive": naive.rows_per_s or math.nan,
            "streamscore": streamscore_rows,
            "echo": echo.rows_per_s,
            "ort": ort_rows,
        },
        latency_ms={
            "p50": latency["streamscore"].p50,
            "p99": latency["streamscore"].p99,
            "p999": latency["streamscore"].p999,
        },
        targets=dict(scenario.targets),
        extra={
            **extra,
            "model": scenario.model,
            "binary": scenario.binary,
            "naive_records": naive.records,
            "seconds": {"naive": naive.seconds, "echo": echo.seconds},
            "ort_batch_rows": model.fixed_batch or batch_rows,
            "ort_batch_ms": round(batch_s * 1000, 3),
            "latency": {
                "rate_per_s": round(rate, 1),
                "seconds": config.trickle_seconds,
                "streamscore": _latency_dict(latency["streamscore"]),
                "echo": _latency_dict(latency["echo"]),
                "p99_bound_ms": round(bound_ms, 2),
                "p99_within_bound": latency["streamscore"].p99 <= bound_ms,
            },
        },
    )


async def _processes(
    scenario: Scenario, settings: dict[str, Any], bootstrap: str, config: BenchConfig, progress: Progress
) -> tuple[float, dict[str, Any]]:
    """One process and `scenario.processes` processes, each over the whole input, as users run them."""
    runs = {}
    for count in (1, scenario.processes):
        out = cluster.unique(f"{scenario.name}-p{count}")
        await create_topics(bootstrap, [out], config.partitions)
        progress(f"{scenario.name}: streamscore worker --processes {count}")
        chosen = {
            k: v
            for k, v in settings.items()
            if k in ("bootstrap_servers", "input_topic", "model_root", "model_name", "dead_letter_topic")
        }
        chosen |= {"results_topic": out, "group_id": cluster.unique("procs"), "control_topic": ""}
        runs[count] = await run_processes(chosen, count, scenario.rows_per_request, out, bootstrap)
    one, many = runs[1], runs[scenario.processes]
    return many.rows_per_s, {
        "processes": {
            str(run.processes): {
                "rows_per_s": round(run.rows_per_s, 1),
                "results": run.results,
                "peak_rss_mb": run.peak_rss_mb,
                "broker_cpu_share": run.broker_cpu_share,
            }
            for run in (one, many)
        },
        "vs_one_process": round(many.rows_per_s / one.rows_per_s, 3) if one.rows_per_s else math.nan,
    }


async def _check_outputs(bootstrap: str, partitions: int, outs: dict[str, str], spans: dict[str, Span]) -> None:
    """Each contender wrote one output per record it reports (no silent loss or duplicates)."""
    for name, span in spans.items():
        written = await cluster.count_records(bootstrap, outs[name], partitions)
        if written != span.records:
            raise RuntimeError(f"{name} reports {span.records} outputs but {outs[name]} holds {written}")


class Memory:
    """This process's resident memory, sampled while a run goes on: before, peak, growth (MB)."""

    def __init__(self) -> None:
        self.before = self.peak = 0.0

    async def during(self, work: Awaitable[Any]) -> Any:
        self.before = self.peak = _rss_mb()
        task = asyncio.ensure_future(work)
        while not task.done():
            self.peak = max(self.peak, _rss_mb())
            await asyncio.wait([task], timeout=MEMORY_SAMPLE_S)
        return task.result()

    def figures(self) -> dict[str, float]:
        return {
            "before": round(self.before, 1),
            "peak": round(self.peak, 1),
            "growth": round(self.peak - self.before, 1),
        }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _latencies(
    scenario: Scenario, config: BenchConfig, bootstrap: str, model_root: Path, rate: float, progress: Progress
) -> dict[str, Latency]:
    """streamscore's and echo's latency at the same rate, each on fresh topics."""
    found: dict[str, Latency] = {}
    for contender in ("streamscore", "echo"):
        topic, out = cluster.unique(f"{scenario.name}-trickle"), cluster.unique(f"{scenario.name}-trickle-{contender}")
        await create_topics(bootstrap, [topic, out], config.partitions)
        progress(f"{scenario.name}: latency of {contender} at {rate:,.0f} requests/s")
        requests, log = _trickle_requests(scenario, config, rate), LatencyLog()
        freeze_heap()  # the requests (a tuple each) are not garbage: no full collection walks them
        if contender == "streamscore":
            group = cluster.unique("ss-trickle")
            settings = worker_settings(bootstrap, topic, out, group, model_root, MODELS[scenario.model].name)
            worker = TimedWorker(settings, scenario.rows_per_request, on_result=log.result)
            running: asyncio.Task[Any] = asyncio.create_task(worker.run())
            stop, ready = worker.request_stop, _assigned(worker)
        else:
            stopped, assigned = asyncio.Event(), asyncio.Event()
            group = cluster.unique("echo-trickle")
            echo = loops.run_echo(
                bootstrap,
                topic,
                group,
                out,
                None,
                scenario.rows_per_request,
                stop=stopped,
                on_result=log.result,
                assigned=assigned,
            )
            running, stop, ready = asyncio.create_task(echo), stopped.set, assigned.wait
        found[contender] = await _trickle_to(running, stop, ready, log, requests, rate, topic, bootstrap)
    return found


def _assigned(worker: TimedWorker) -> Callable[[], Awaitable[Any]]:
    return lambda: wait_assigned(worker)


async def _trickle_to(
    running: asyncio.Task[Any],
    stop: Callable[[], None],
    assigned: Callable[[], Awaitable[Any]],
    log: LatencyLog,
    requests: list[Any],
    rate: float,
    topic: str,
    bootstrap: str,
) -> Latency:
    """Trickle requests into `topic` once the contender is assigned; stop it; the latencies it logged."""
    with GcPauses() as pauses:
        try:
            order = await trickle(bootstrap, topic, requests, rate, log, assigned)
        finally:
            stop()
            await running
    return log.summary(order, pauses)


def _trickle_requests(scenario: Scenario, config: BenchConfig, rate: float) -> list[Any]:
    model = MODELS[scenario.model]
    record_bytes = 4 * scenario.rows_per_request * math.prod(model.row_shape)
    count = max(1, min(MAX_TRICKLE_REQUESTS, TRICKLE_BYTES // record_bytes, int(rate * config.trickle_seconds)))
    return make_requests(MODELS[scenario.model], count, scenario.rows_per_request, scenario.binary, seed=2)


def _latency_dict(latency: Latency) -> dict[str, Any]:
    return {
        "p50_ms": round(latency.p50, 2),
        "p99_ms": round(latency.p99, 2),
        "p999_ms": round(latency.p999, 2),
        "samples": latency.samples,
        "gc": dict(latency.gc),
    }
