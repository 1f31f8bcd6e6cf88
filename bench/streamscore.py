"""streamscore itself: the real `worker.runner.Worker`, in this process, timed from the outside.

`TimedWorker` only observes: it notes when the first record is taken, when each result is
acknowledged, and the size of every batch the score loop runs.
"""

from __future__ import annotations

import asyncio
import cProfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.config import MODEL_NAME
from bench.timing import Span
from schemas.records import Record
from worker.batcher import Batch
from worker.observe import Observer
from worker.outcomes import Item, Outcome
from worker.runner import Worker
from worker.settings import Settings

RUN_TIMEOUT_S = 600.0
ASSIGNMENT_TIMEOUT_S = 30.0


class Timing(Observer):
    """Records the worker's span, its batch sizes, and when each request's result was acked."""

    def __init__(self, rows: int, on_result: Callable[[bytes, float], None] | None = None) -> None:
        super().__init__()
        self.span = Span()
        self.batch_rows: list[int] = []
        self._rows = rows
        self._on_result = on_result

    def consumed(self, record: Record) -> None:
        self.span.consumed()

    def scored(self, batch: Batch[Item]) -> None:
        super().scored(batch)
        self.batch_rows.append(batch.rows)

    def finished(self, outcome: Outcome) -> None:
        super().finished(outcome)
        if outcome.shadow:
            return
        self.span.acknowledged(self._rows)
        if self._on_result is not None:
            self._on_result(outcome.request_id.encode(), time.perf_counter())


class TimedWorker(Worker):
    """The real Worker, observed by `Timing`."""

    def __init__(self, settings: Settings, rows: int, on_result: Callable[[bytes, float], None] | None = None):
        self.timing = Timing(rows, on_result)
        super().__init__(settings, observer=self.timing)
        self.freeze_heap = True  # as a worker process does (worker.runner.freeze_heap)
        self.span = self.timing.span
        self.batch_rows = self.timing.batch_rows


def worker_settings(
    bootstrap: str, topic: str, out_topic: str, group: str, model_root: Path, model_name: str = MODEL_NAME
) -> Settings:
    """Default settings but for the topics, the group and the model."""
    return Settings(bootstrap_servers=bootstrap, input_topic=topic, results_topic=out_topic, group_id=group).replace(
        model_root=str(model_root), model_name=model_name, log_level="warning"
    )


async def run_burst(settings: Settings, rows: int, profile: Path | None = None) -> tuple[TimedWorker, float]:
    """Run a burst-mode worker until the input is drained; return it and the run's wall time."""
    worker = TimedWorker(settings.replace(burst=True), rows)
    profilers = await _start_profiling(worker) if profile else None
    started = time.perf_counter()
    code = await asyncio.wait_for(worker.run(), RUN_TIMEOUT_S)
    wall = time.perf_counter() - started
    if profilers is not None and profile is not None:
        _save_profile(profilers, profile)
    if code != 0:
        raise RuntimeError(f"the streamscore worker exited with {code}")
    return worker, wall


async def wait_assigned(worker: Worker) -> None:
    """Wait until the worker's consumer owns partitions (so that latency excludes the group join)."""
    async with asyncio.timeout(ASSIGNMENT_TIMEOUT_S):
        while worker.consumer is None or not worker.consumer.assignment():
            await asyncio.sleep(0.05)


async def _start_profiling(worker: Worker) -> tuple[cProfile.Profile, cProfile.Profile]:
    """Profile the event loop thread and the worker's onnxruntime thread (cProfile is per thread)."""
    loop_profiler, thread_profiler = cProfile.Profile(), cProfile.Profile()
    await asyncio.get_running_loop().run_in_executor(worker.executor, thread_profiler.enable)
    loop_profiler.enable()
    return loop_profiler, thread_profiler


def _save_profile(profilers: tuple[cProfile.Profile, cProfile.Profile], path: Path) -> None:
    loop_profiler, thread_profiler = profilers
    loop_profiler.disable()
    # the executor is shut down by now; the thread's profiler stops with the thread
    loop_profiler.dump_stats(str(path.with_suffix(".loop.pstats")))
    thread_profiler.dump_stats(str(path.with_suffix(".thread.pstats")))
