"""The benchmark's own broker (free ports, data in a temporary folder) and its input data."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.config import INPUT_NAME, MLP_FEATURES
from broker import local
from schemas.codec import encode_request

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
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-") as home:
        config = local.BrokerConfig(
            home=Path(home), port=local.free_port(), controller_port=local.free_port(), libs=REPO / ".kafka" / "libs"
        )
        try:
            yield local.start(config, timeout_s=BROKER_START_TIMEOUT_S), config.data_dir
        finally:
            local.stop(config)


def unique(name: str) -> str:
    """A topic or group name no earlier run used."""
    return f"bench-{name}-{uuid.uuid4().hex[:6]}"


def make_requests(count: int, rows: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """`count` V2 requests of `rows` rows each, as (key, value); the key is the request id."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(count, rows, MLP_FEATURES)).astype(np.float32)
    out = []
    for i in range(count):
        request_id = f"r{i}"
        out.append((request_id.encode(), encode_request({INPUT_NAME: features[i]}, id=request_id)))
    return out


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Produce records and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        for start in range(0, len(records), PRODUCE_CHUNK):
            chunk = records[start : start + PRODUCE_CHUNK]
            futures = [await producer.send(topic, value=value, key=key) for key, value in chunk]
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
