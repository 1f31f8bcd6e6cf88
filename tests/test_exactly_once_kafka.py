"""Exactly once on the real broker: no result is ever written twice, even when a worker is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from demo.models import install_model, make_mlp
from schemas.codec import encode_request
from tests.harness import Out, committed, produce, read_topic, responses, run_burst, start_worker, worker_children
from tests.test_hardening_kafka import json_lines, wait_for_results, worker_settings
from transport.admin import create_topics
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 2


@pytest.fixture
async def settings(kafka_bootstrap: str, tmp_path: Path, unique_group: str) -> Settings:
    """An exactly-once worker on fresh topics, the mlp its model."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-in", f"{prefix}-out", f"{prefix}-in.DLT"]
    await create_topics(kafka_bootstrap, names, PARTITIONS)
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=names[0],
        results_topic=names[1],
        dead_letter_topic=names[2],
        group_id=unique_group,
        control_topic="",
        model_root=str(root),
        model_name="mlp",
        guarantee="exactly-once",
        commit_interval_ms=200,
        log_format="console",
    )


def requests(count: int, prefix: str = "id") -> list[Out]:
    rows = np.random.default_rng(5).random((count, 8), dtype=np.float32)
    return [
        Out(f"{prefix}-{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"{prefix}-{i}")) for i in range(count)
    ]


async def test_a_burst_commits_results_dead_letters_and_offsets_in_transactions(settings: Settings) -> None:
    """Every result and dead letter is read (read_committed) exactly once, and the offsets are committed."""
    await produce(settings.bootstrap_servers, settings.input_topic, [*requests(300), Out(b"bad", b"not json")])

    assert 0 == await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=300))
    assert {f"id-{i}": 1 for i in range(300)} == Counter(r.id for r in results)
    [letter] = await read_topic(settings.bootstrap_servers, settings.dead_letter_topic_name, expect=1)
    assert b"bad" == letter.key
    offsets = await committed(settings.bootstrap_servers, settings.group_id, settings.input_topic, PARTITIONS)
    assert 301 == sum(o or 0 for o in offsets.values())


async def test_a_worker_killed_mid_stream_writes_no_result_twice(settings: Settings, tmp_path: Path) -> None:
    """Step by step: two worker processes score 8,000 requests; one is killed (SIGKILL) mid-stream; the
    other takes its partitions over and a burst run finishes the stream. Read with read_committed,
    every id has exactly one result: the killed process's open transactions were aborted."""
    count = 8000
    await produce(settings.bootstrap_servers, settings.input_topic, requests(count))
    env = {**worker_settings(settings), "guarantee": "exactly-once", "processes": 2, "commit_interval_ms": 200}
    process = start_worker({**env, "session_timeout_ms": 6000}, tmp_path / "worker.log", new_session=True)
    try:
        await wait_for_results(settings, settings.results_topic, count // 3)
        os.kill(worker_children(process.pid)[0], signal.SIGKILL)
        await wait_for_results(settings, settings.results_topic, count)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.wait, 90)
    assert 0 == await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=count))
    counts = Counter(r.id for r in results)
    assert {f"id-{i}" for i in range(count)} == set(counts)
    assert {1} == set(counts.values()), [i for i, n in counts.items() if n > 1][:10]
    assert not [e for e in json_lines(tmp_path / "worker.log") if e.get("event") == "worker_task_failed"]
