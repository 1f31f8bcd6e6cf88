"""The worker's Prometheus metrics, kept by MetricsObserver and Monitor, on the in-memory fakes."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.codec import encode_request
from tests.conftest import REPO
from tests.fakes import FakeClients, FakeCluster
from tests.test_runner import IN, PARTITIONS, model_root, running, send_requests, settings_for, until
from worker.health import read_reports
from worker.metrics import Metrics, MetricsObserver
from worker.monitor import Monitor
from worker.runner import Worker

__all__ = ["model_root"]  # the module-scoped fixture of test_runner, used here too

RECORD_TIME_S = 1_700_000_000.0  # FakeCluster's record timestamp


@pytest.fixture
def cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.create(IN, PARTITIONS)
    return cluster


def observer() -> MetricsObserver:
    """Metrics on a registry of their own; the wall clock half a second after the records were written."""
    return MetricsObserver(Metrics(CollectorRegistry()), wall=lambda: RECORD_TIME_S + 0.5)


def value(observer: MetricsObserver, name: str, **labels: str) -> float:
    """A sample's value (0 when the series does not exist)."""
    found = observer.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def dead_letters_by_stage(observer: MetricsObserver) -> dict[str, float]:
    """The dead letters counted, summed by stage."""
    counts: dict[str, float] = {}
    for family in observer.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "streamscore_dead_letters_total":
                counts[sample.labels["stage"]] = counts.get(sample.labels["stage"], 0) + sample.value
    return counts


async def test_a_burst_counts_consumed_results_dead_letters_and_timings(model_root: Path, cluster: FakeCluster) -> None:
    """40 good requests and 2 poison records: 42 consumed, 40 results of mlp 2, 2 decode dead letters,
    rows per batch summing to 40, a queue and an inference time per batch, and end-to-end latencies."""
    send_requests(cluster, 40)
    cluster.append(IN, b"not json", key=b"bad", partition=0)
    cluster.append(IN, b"", key=b"empty", partition=1)
    metrics = observer()
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster), observer=metrics)

    assert 0 == await asyncio.wait_for(worker.run(), 30)

    assert 42 == value(metrics, "streamscore_records_consumed_total", topic=IN)
    assert 40 == value(metrics, "streamscore_results_total", model="mlp", version="2")
    assert {"decode": 2} == dead_letters_by_stage(metrics)
    assert 40 == value(metrics, "streamscore_batch_rows_sum", model="mlp", version="2")
    batches = value(metrics, "streamscore_batch_rows_count", model="mlp", version="2")
    assert batches == value(metrics, "streamscore_inference_seconds_count", model="mlp", version="2")
    assert 40 == value(metrics, "streamscore_queue_seconds_count", model="mlp", version="2")
    assert 40 == value(metrics, "streamscore_end_to_end_seconds_count", outcome="result")
    assert 20.0 == value(metrics, "streamscore_end_to_end_seconds_sum", outcome="result")
    assert 2 == value(metrics, "streamscore_end_to_end_seconds_count", outcome="dead_letter")
    assert 1 == value(metrics, "streamscore_rebalances_total")


async def test_dead_letters_are_counted_by_stage_and_error_class(model_root: Path, cluster: FakeCluster) -> None:
    """A request of the wrong shape is a validate-stage ValidationError; bad JSON a decode-stage DecodeError."""
    cluster.append(IN, b"{", key=b"bad", partition=0)
    cluster.append(IN, encode_request({"x": np.zeros((1, 3), np.float32)}, id="narrow"), key=b"narrow", partition=1)
    metrics = observer()
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster), observer=metrics)

    assert 0 == await asyncio.wait_for(worker.run(), 30)

    assert {"decode": 1, "validate": 1} == dead_letters_by_stage(metrics)
    assert 1 == value(
        metrics, "streamscore_dead_letters_total", stage="decode", error="DecodeError", model="", version=""
    )


async def test_the_monitor_samples_in_flight_lag_and_the_model_serving(model_root: Path, cluster: FakeCluster) -> None:
    """Acknowledgements held: 6 records in flight, no lag once fetched, the info metric names mlp 2 and its
    sha256, and the process is live and ready."""
    send_requests(cluster, 6)
    clients = FakeClients(cluster)
    clients.hold_acks = True
    metrics = observer()
    worker = Worker(settings_for(model_root), clients=clients, observer=metrics)
    monitor = Monitor(worker, metrics)
    async with running(worker, clients):
        await until(lambda: worker.in_flight == 6)
        monitor.sample()
        await monitor.probe()

        assert 6 == value(metrics, "streamscore_in_flight_records")
        assert 0 < value(metrics, "streamscore_in_flight_bytes")
        assert 0 == value(metrics, "streamscore_consumer_lag", topic=IN, partition="0")
        sha = worker.serving.lineup.loaded[("mlp", "2")].sha256
        assert 1 == value(metrics, "streamscore_model_info", model="mlp", version="2", sha256=sha)
        assert (True, True) == tuple(verdict.ok for verdict in monitor.judge())
        assert (1, 1) == (value(metrics, "streamscore_healthy"), value(metrics, "streamscore_ready"))


async def test_lag_is_end_offset_minus_position_and_zero_once_revoked(model_root: Path, cluster: FakeCluster) -> None:
    """Records written and not fetched are lag; a partition revoked reads 0 from this process; each
    assignment is a rebalance."""
    metrics = observer()
    worker = Worker(settings_for(model_root), clients=FakeClients(cluster), observer=metrics)
    consumer = worker.consumer = worker.clients.consumer(worker.settings, worker)
    await consumer.start()  # joins: every partition, from offset 0; nothing fetched
    send_requests(cluster, 4)
    monitor = Monitor(worker, metrics)

    await monitor.probe()
    assert 2 == value(metrics, "streamscore_consumer_lag", topic=IN, partition="1")

    await consumer.rebalance({0})  # type: ignore[attr-defined]
    await monitor.probe()
    assert 0 == value(metrics, "streamscore_consumer_lag", topic=IN, partition="1")
    assert 2 == value(metrics, "streamscore_consumer_lag", topic=IN, partition="0")
    assert 2 == value(metrics, "streamscore_rebalances_total")


async def test_the_monitor_reports_a_starting_worker_as_live_and_not_ready(
    model_root: Path, cluster: FakeCluster, tmp_path: Path
) -> None:
    """Under a supervisor the monitor writes this process's report at once: live (starting), not ready;
    the health gauges say the same."""
    metrics = observer()
    worker = Worker(settings_for(model_root), clients=FakeClients(cluster), observer=metrics)
    task = asyncio.create_task(Monitor(worker, metrics, reports=tmp_path).run())
    try:
        await until(lambda: any(tmp_path.glob("health-*.json")))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    [report] = read_reports(tmp_path, {os.getpid(): "me"}).values()
    assert report is not None
    assert ([True, "starting"], False) == (report["live"], report["ready"][0])
    assert (1, 0) == (value(metrics, "streamscore_healthy"), value(metrics, "streamscore_ready"))


def test_the_readme_lists_every_metric() -> None:
    """The README's metrics table has one row per metric a worker exports, and no other."""
    text = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(streamscore_[a-z_]+)` \| (?:counter|gauge|histogram) \|", text, re.MULTILINE))
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics(CollectorRegistry()).registry.collect()
    }
    assert exported == listed
