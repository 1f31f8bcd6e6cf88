"""The benchmark's own broker (free ports, data in a temporary folder) and its input data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.config import Scenario
from bench.models import MODELS, Record
from broker import local

REPO = Path(__file__).resolve().parent.parent
BROKER_START_TIMEOUT_S = 120.0
PRODUCE_CHUNK = 5_000


@contextlib.contextmanager
def running_broker() -> Iterator[str]:
    """A fresh single-node broker for this run; yields its bootstrap address, stops it after."""
    with running_broker_at() as (bootstrap, _):
        yield bootstrap


@contextlib.contextmanager
def running_broker_at() -> Iterator[tuple[str, Path]]:
    """A fresh single-node broker; yields its bootstrap address and its data folder, stops it after."""
    global broker_pid
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as home:
        config = local.BrokerConfig(
            home=Path(home), port=local.free_port(), controller_port=local.free_port(), libs=REPO / ".kafka" / "libs"
        )
        try:
            bootstrap = local.start(config, timeout_s=BROKER_START_TIMEOUT_S)
            broker_pid = local.read_pid(config)
            yield bootstrap, config.data_dir
        finally:
            broker_pid = None
            local.stop(config)


broker_pid: int | None = None  # of the broker `running_broker_at` runs (its CPU time is read from /proc)


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds a process has used so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unique(name: str) -> str:
    """A topic or group name no earlier run used."""
    return f"bench-{name}-{uuid.uuid4().hex[:6]}"


async def produce_requests(bootstrap: str, topic: str, scenario: Scenario, count: int, seed: int = 0) -> None:
    """Produce a scenario's `count` requests, built and sent a chunk at a time (images are large)."""
    from bench.models import make_requests as requests_for

    model = MODELS[scenario.model]
    chunk = max(
        1, min(PRODUCE_CHUNK, 200_000_000 // max(1, scenario.rows_per_request * 4 * int(np.prod(model.row_shape))))
    )
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        await produce(
            bootstrap, topic, requests_for(model, size, scenario.rows_per_request, scenario.binary, seed + start, start)
        )


def make_requests(count: int, rows: int, seed: int = 0) -> list[Record]:
    """`count` JSON V2 requests of `rows` rows each for the small MLP; the key is the request id."""
    from bench.models import make_requests as requests_for

    return requests_for(MODELS["mlp"], count, rows, binary=False, seed=seed)


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    """Produce records and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        for start in range(0, len(records), PRODUCE_CHUNK):
            chunk = records[start : start + PRODUCE_CHUNK]
            futures = [
                await producer.send(topic, value=value, key=key, headers=headers) for key, value, headers in chunk
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records `topic` holds (the sum of its end offsets: nothing is deleted here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()
