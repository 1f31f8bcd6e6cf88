"""Prometheus metrics of a worker process: what they are, and the Observer that keeps them.

`Metrics` defines every metric on one registry (a fresh one per worker: tests stay apart). Under
`--processes N` the supervisor sets PROMETHEUS_MULTIPROC_DIR before starting the processes, so
prometheus-client writes each process's values to files there and the supervisor serves their
sum (`worker/endpoint.py`). Gauges say how processes combine (`livesum`: the processes alive, added
up). Labels are never removed (prometheus-client cannot in multiprocess mode): a partition no longer
assigned, a version no longer serving, reads 0 from this process.

The README's "Metrics and health" section lists them, with the OpenTelemetry names that match.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas import headers as h
from schemas.records import Record
from worker.batcher import Batch
from worker.observe import Observer
from worker.outcomes import DeadLetter, Item, Outcome, Result
from worker.sender import stage_of

ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MODEL = ("model", "version")


class Metrics:
    """Every metric of a worker, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = (), mode: str = "livesum") -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = MODEL) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        self.registry = registry
        self.consumed = counter("streamscore_records_consumed_total", "Records fetched", ("topic",))
        self.results = counter("streamscore_results_total", "Results acknowledged by the broker", MODEL)
        self.shadow = counter("streamscore_shadow_results_total", "Shadow versions' results acknowledged", MODEL)
        self.dead_letters = counter(
            "streamscore_dead_letters_total", "Dead letters acknowledged", ("stage", "error", *MODEL)
        )
        self.retried = counter("streamscore_retried_total", "Records sent to a retry topic", ("topic", "stage"))
        self.batch_rows = histogram("streamscore_batch_rows", "Rows per model run", ROWS_BUCKETS)
        self.queue = histogram(
            "streamscore_queue_seconds", "From a record's fetch to the start of its batch's run", SECONDS_BUCKETS
        )
        self.inference = histogram(
            "streamscore_inference_seconds", "One batch's run in the model thread", SECONDS_BUCKETS
        )
        self.end_to_end = histogram(
            "streamscore_end_to_end_seconds",
            "From a record's Kafka timestamp to its outcome's acknowledgement",
            SECONDS_BUCKETS,
            ("outcome",),
        )
        self.in_flight = gauge("streamscore_in_flight_records", "Records fetched, not yet acknowledged")
        self.in_flight_bytes = gauge("streamscore_in_flight_bytes", "Bytes of the records in flight")
        self.paused = gauge("streamscore_paused_partitions", "Partitions paused (backpressure, retry delays, commits)")
        self.lag = gauge("streamscore_consumer_lag", "End offset minus the consumer's position", ("topic", "partition"))
        self.rebalances = counter("streamscore_rebalances_total", "Partition assignments received (one per rebalance)")
        self.model_info = gauge(
            "streamscore_model_info", "1: the version serving by default", ("model", "version", "sha256"), "livemax"
        )
        self.switches = counter("streamscore_model_switches_total", "Default version switches", ("model",))
        self.refusals = counter("streamscore_model_refusals_total", "Versions refused at load", ("model", "version"))
        # What /healthz and /readyz answer, as 1/0; across processes the least of them (every one must be).
        self.healthy = gauge("streamscore_healthy", "1: live, as /healthz says (0: not)", mode="livemin")
        self.ready = gauge("streamscore_ready", "1: ready, as /readyz says (0: not)", mode="livemin")


class MetricsObserver(Observer):
    """The worker's hooks, counted into `Metrics` (and the base class's counts, for the logs)."""

    def __init__(
        self,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.rebalances = 0
        self._fetched_at: dict[tuple[str, int, int], float] = {}  # in-flight records: when fetched

    def consumed(self, record: Record) -> None:
        self.metrics.consumed.labels(record.topic).inc()
        self._fetched_at[_key(record)] = self.clock()

    def started(self, batch: Batch[Item]) -> None:
        now = self.clock()
        model = batch.items[0].model
        queue = self.metrics.queue.labels(model.name, model.version)
        for item in batch.items:
            fetched = self._fetched_at.get(_key(item.record))
            if fetched is not None and not item.shadow:
                queue.observe(now - fetched)

    def scored(self, batch: Batch[Item]) -> None:
        super().scored(batch)
        model = batch.items[0].model
        self.metrics.batch_rows.labels(model.name, model.version).observe(batch.rows)
        self.metrics.inference.labels(model.name, model.version).observe(batch.ran_s)  # the run, not its wait

    def released(self, record: Record) -> None:
        super().released(record)
        self._fetched_at.pop(_key(record), None)

    def finished(self, outcome: Outcome) -> None:
        super().finished(outcome)
        if outcome.shadow:
            self.metrics.shadow.labels(*_model_of(outcome)).inc()
            return
        self._fetched_at.pop(_key(outcome.record), None)
        if isinstance(outcome, Result):
            kind = "result"
            self.metrics.results.labels(*_model_of(outcome)).inc()
        elif outcome.hop is not None:
            kind = "retry"
            self.metrics.retried.labels(outcome.hop.topic, stage_of(outcome.error)).inc()
        else:
            kind = "dead_letter"
            error = outcome.error
            self.metrics.dead_letters.labels(stage_of(error), type(error).__name__, *_model_of(outcome)).inc()
        if outcome.record.timestamp > 0:
            self.metrics.end_to_end.labels(kind).observe(max(0.0, self.wall() - outcome.record.timestamp / 1000))

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.rebalances += 1
        self.metrics.rebalances.inc()


def _key(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _model_of(outcome: Outcome) -> tuple[str, str]:
    """The model name and version of an outcome ("" when a dead letter never reached a model)."""
    if isinstance(outcome, DeadLetter):
        return (outcome.model[0], outcome.model[1]) if outcome.model else ("", "")
    found = dict(outcome.headers)
    return found.get(h.MODEL, b"").decode(), found.get(h.MODEL_VERSION, b"").decode()
