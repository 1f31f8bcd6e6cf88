"""A worker process watched: gauges sampled, the broker probed, health decided and reported.

`Monitor.run` ticks every SAMPLE_INTERVAL_S on the worker's event loop: it sets the gauges (in
flight, paused partitions, the model serving, switches and refusals), every LAG_INTERVAL_S asks
the broker for the end offsets of the assigned partitions (the consumer lag, and the proof that
the broker answers, `worker/health.py`), sets the health gauges from the verdicts /healthz and
/readyz give, and, under a supervisor, writes this process's health report. `observe` runs a
worker with all of it, and the endpoint when the process is alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from schemas.errors import ConfigError
from worker.endpoint import Checks, serve_on_loop
from worker.health import Facts, Verdict, live_bound, liveness, readiness, write_report
from worker.metrics import Metrics, MetricsObserver
from worker.runner import Worker
from worker.settings import setting_name

log = structlog.get_logger("streamscore.worker")

SAMPLE_INTERVAL_S = 1.0
LAG_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0


class Monitor:
    """Samples `worker` into `observer.metrics` and decides its health."""

    def __init__(
        self,
        worker: Worker,
        observer: MetricsObserver,
        reports: Path | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.worker = worker
        self.observer = observer
        self.metrics = observer.metrics
        self.reports = reports
        self.wall = wall
        self.broker_at: float | None = None  # worker.clock() when the broker last answered a probe
        self.probed_at = float("-inf")
        self._lagging: set[TopicPartition] = set()
        self._serving: set[tuple[str, str, str]] = set()
        self._counted: dict[str, dict[Any, int]] = {"switched": {}, "refusals": {}}

    # ------------------------------------------------------------------ health

    def facts(self) -> Facts:
        """This process's facts, now."""
        worker, now = self.worker, self.worker.clock()
        consumer, sender = worker.consumer, worker.sender
        return Facts(
            started=worker.started,
            stopping=worker.stopping,
            joined=self.observer.rebalances > 0,
            assigned=len(consumer.assignment()) if consumer is not None else 0,
            since_fetch_s=worker.since_poll,
            troubled=sender.troubled if sender is not None else 0,
            since_broker_s=None if self.broker_at is None else now - self.broker_at,
            live_bound_s=live_bound(worker.settings.shutdown_grace_s),
        )

    def live(self) -> Verdict:
        return liveness(self.facts())

    def ready(self) -> Verdict:
        return readiness(self.facts())

    def judge(self) -> tuple[Verdict, Verdict]:
        """Liveness and readiness now, also set as the gauges `streamscore_healthy` and `streamscore_ready`."""
        live, ready = self.live(), self.ready()
        self.metrics.healthy.set(int(live.ok))
        self.metrics.ready.set(int(ready.ok))
        return live, ready

    def checks(self) -> Checks:
        """What the endpoint answers with, for this process alone."""
        return Checks(lambda: generate_latest(self.metrics.registry), self.live, self.ready)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Sample, probe, report, every SAMPLE_INTERVAL_S (cancelled when the worker stops)."""
        while True:
            self.sample()
            if self.worker.clock() - self.probed_at >= LAG_INTERVAL_S:
                self.probed_at = self.worker.clock()
                await self.probe()
            live, ready = self.judge()
            if self.reports is not None:
                write_report(self.reports, os.getpid(), self.wall(), live, ready)
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        """Set the gauges from the worker's state; count new switches and refusals."""
        worker, m = self.worker, self.metrics
        m.in_flight.set(worker.flow.in_flight)
        m.in_flight_bytes.set(worker.flow.in_flight_bytes)
        m.paused.set(len(worker.consumer.paused()) if worker.consumer is not None else 0)
        lineup = worker.serving.lineup
        serving = set()
        for name in {*lineup.defaults, *lineup.states}:
            version = lineup.serving(name)
            model = lineup.loaded.get((name, version)) if version is not None else None
            if model is not None:
                serving.add((model.name, model.version, model.sha256))
        for labels in self._serving - serving:
            m.model_info.labels(*labels).set(0)
        for labels in serving:
            m.model_info.labels(*labels).set(1)
        self._serving = serving
        self._count("switched", worker.serving.switched, lambda key: m.switches.labels(key))
        self._count("refusals", worker.serving.refusals, lambda key: m.refusals.labels(*key))

    def _count(self, name: str, totals: Mapping[Any, int], counter: Callable[[Any], Any]) -> None:
        counted = self._counted[name]
        for key, total in totals.items():
            if total > counted.get(key, 0):
                counter(key).inc(total - counted.get(key, 0))
                counted[key] = total

    async def probe(self) -> None:
        """Ask the broker for the end offsets of the assigned partitions: the lag of each."""
        consumer = self.worker.consumer
        assignment = sorted(consumer.assignment()) if consumer is not None else []
        for tp in self._lagging - set(assignment):
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(0)
        self._lagging = set(assignment)
        if consumer is None or not assignment:
            return
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(assignment), PROBE_TIMEOUT_S)
        except Exception as error:  # the broker not answering is what the probe is for
            log.debug("broker_probe_failed", error=repr(error))
            return
        self.broker_at = self.worker.clock()
        for tp in assignment:
            with contextlib.suppress(Exception):  # no position yet (just assigned): next time
                position = await asyncio.wait_for(consumer.position(tp), PROBE_TIMEOUT_S / len(assignment))
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - position))


async def observe(worker: Worker, observer: MetricsObserver, port: int, reports: Path | None) -> int:
    """Run `worker` monitored; serve the endpoint on this loop unless a supervisor does (`reports`)."""
    monitor = Monitor(worker, observer, reports)
    server = None
    if reports is None:
        try:
            server = await serve_on_loop(port, monitor.checks())
        except OSError as error:
            raise ConfigError(f"{setting_name('metrics_port')}: cannot listen on port {port}: {error}") from error
    task = asyncio.get_running_loop().create_task(monitor.run(), name="monitor")
    try:
        return await worker.run()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            server.close()


def make_observer() -> MetricsObserver:
    """The metrics of one worker process, on a registry of their own."""
    return MetricsObserver(Metrics(CollectorRegistry()))
