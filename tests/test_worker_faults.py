"""Faults on the real broker: a worker process killed mid-stream, and a graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from demo.models import install_model, make_mlp
from schemas.codec import encode_request
from tests.harness import (
    Out,
    committed,
    produce,
    read_topic,
    responses,
    start_worker,
    stop_worker,
    worker_children,
)

pytestmark = pytest.mark.kafka

RECORDS = 20_000
MAX_IN_FLIGHT = 500
PROCESSES = 2
PARTITIONS = 4
COMMIT_INTERVAL_MS = 200


@pytest.fixture
async def setup(kafka_bootstrap: str, make_topics: Any, tmp_path: Path, unique_group: str) -> dict[str, Any]:
    """Topics filled with RECORDS requests, a model folder, and the worker's settings."""
    topic_in, topic_out, topic_dead = await make_topics("in", "out", "in.DLT", partitions=PARTITIONS)
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    rows = np.random.default_rng(0).random((RECORDS, 8), dtype=np.float32)
    records = [Out(f"id-{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"id-{i}")) for i in range(RECORDS)]
    await produce(kafka_bootstrap, topic_in, records)
    settings = {
        "bootstrap_servers": kafka_bootstrap,
        "input_topic": topic_in,
        "results_topic": topic_out,
        "dead_letter_topic": topic_dead,
        "group_id": unique_group,
        "model_root": root,
        "processes": PROCESSES,
        "max_in_flight": MAX_IN_FLIGHT,
        "commit_interval_ms": COMMIT_INTERVAL_MS,
        "session_timeout_ms": 6000,
        "log_format": "json",
    }
    return {
        "settings": settings,
        "input": topic_in,
        "results": topic_out,
        "dead": topic_dead,
        "logs": tmp_path / "worker.log",
    }


async def wait_for_results(bootstrap: str, topic: str, at_least: int, timeout_s: float = 120.0) -> None:
    """Wait until `topic` holds at least `at_least` records (the stream is mid-way)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < at_least:
            assert time.monotonic() < deadline, f"only {seen} results after {timeout_s} s"
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(len(part) for part in batch.values())
    finally:
        await consumer.stop()


def partitions_held(logs: Path, pid: int) -> set[int]:
    """The partitions a worker process was last assigned, read from its JSON log lines."""
    held: set[int] = set()
    for line in logs.read_bytes().splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line of the broker client's own output
            continue
        if event.get("event") == "partitions_assigned" and str(event.get("worker", "")).endswith(f"-{pid}"):
            held = {int(name.rsplit("[", 1)[1].rstrip("]")) for name in event["partitions"]}
    return held


def run_until_drained(settings: dict[str, Any], logs: Path) -> int:
    """Run a burst worker to the end of the stream and return its exit code."""
    process = start_worker({**settings, "burst": True}, logs)
    try:
        return process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()


async def test_sigkill_mid_stream_loses_nothing(setup: dict[str, Any], kafka_bootstrap: str) -> None:
    """Scenario:
    1. Two worker processes score a stream of 20 000 requests.
    2. Mid-stream, one of them is killed with SIGKILL; the supervisor starts a new one.
    3. The rest of the stream is scored, then the worker stops with SIGTERM.
    Every id has a result. Duplicates are only records that were not committed when the
    process was killed: on its own partitions, at or after the offsets committed then.
    """
    settings, logs = setup["settings"], setup["logs"]
    process = start_worker(settings, logs)
    try:
        await wait_for_results(kafka_bootstrap, setup["results"], RECORDS // 4)
        children = worker_children(process.pid)
        assert PROCESSES == len(children)
        killed = children[0]
        # commits only move forward: what is committed now is committed at the kill
        before = await committed(kafka_bootstrap, settings["group_id"], setup["input"], PARTITIONS)
        os.kill(killed, signal.SIGKILL)
        await wait_for_results(kafka_bootstrap, setup["results"], RECORDS)
        assert 0 == await asyncio.to_thread(stop_worker, process)
    finally:
        if process.poll() is None:
            process.kill()
    assert 0 == await asyncio.to_thread(run_until_drained, settings, logs)

    results = await read_topic(kafka_bootstrap, setup["results"], expect=RECORDS)
    counts = Counter(r.id for r in responses(results))
    assert {f"id-{i}" for i in range(RECORDS)} == set(counts)
    inputs = await read_topic(kafka_bootstrap, setup["input"], expect=RECORDS)
    where = {r.key.decode(): (r.partition, r.offset) for r in inputs}
    duplicated: dict[int, list[int]] = {}
    for request_id, count in counts.items():
        if count > 1:
            partition, offset = where[request_id]
            duplicated.setdefault(partition, []).append(offset)
    held = partitions_held(logs, killed)
    assert set(duplicated) <= held, f"duplicates on {sorted(duplicated)}, the killed process held {held}"
    for partition, offsets in duplicated.items():
        assert min(offsets) >= (before[partition] or 0), f"partition {partition}: committed records scored again"
    assert b"worker_process_died" in logs.read_bytes()


async def test_sigterm_mid_stream_drains_without_duplicates(setup: dict[str, Any], kafka_bootstrap: str) -> None:
    """Scenario:
    1. Two worker processes score a stream of 20 000 requests.
    2. Mid-stream, the worker gets SIGTERM: it stops fetching, drains, commits, exits 0.
    3. A new worker scores the rest.
    Every id has exactly one result: nothing lost, no duplicates.
    """
    settings, logs = setup["settings"], setup["logs"]
    process = start_worker(settings, logs)
    try:
        await wait_for_results(kafka_bootstrap, setup["results"], RECORDS // 4)
        assert 0 == await asyncio.to_thread(stop_worker, process)
    finally:
        if process.poll() is None:
            process.kill()
    assert b"worker_stopped" in logs.read_bytes()
    assert 0 == await asyncio.to_thread(run_until_drained, settings, logs)

    results = await read_topic(kafka_bootstrap, setup["results"], expect=RECORDS)
    counts = Counter(r.id for r in responses(results))
    assert {f"id-{i}" for i in range(RECORDS)} == set(counts)
    assert {1} == set(counts.values())


async def test_worker_with_unusable_model_folder_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    """A worker pointed at an empty model folder says so and exits 2 without starting."""
    settings = {"model_root": tmp_path / "nothing-here", "bootstrap_servers": "127.0.0.1:1"}
    logs = tmp_path / "worker.log"
    process = start_worker(settings, logs)
    assert 2 == await asyncio.to_thread(process.wait, 60)
    assert b"STREAMSCORE_MODEL_NAME" in logs.read_bytes()
