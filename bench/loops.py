"""The two hand-written consume loops streamscore is measured against.

`run_naive` is the loop a user writes first: one record at a time, one model run per record,
one awaited send per record. `run_echo` does no model work at all and copies each value to
the output topic with streamscore's own client settings: the ceiling of the Kafka client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.config import MODEL_VERSION
from bench.timing import Span
from transport.partitioner import PARTITIONER
from worker.clients import PRODUCER_LINGER_MS, PRODUCER_MAX_BATCH_BYTES
from worker.flow import FETCH_MAX_RECORDS
from worker.runner import FETCH_TIMEOUT_MS

OnResult = Callable[[bytes, float], None]  # (request id, perf_counter() of the acknowledgement)


def make_session(model_path: Path) -> ort.InferenceSession:
    """An onnxruntime session set up as the worker sets up its own (one intra-op thread, CPU)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def streamscore_consumer(topic: str, bootstrap: str, group: str) -> AIOKafkaConsumer:
    """A consumer configured as streamscore's worker configures its own."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )


def streamscore_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer configured as streamscore's worker configures its own."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=PRODUCER_LINGER_MS,
        max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        partitioner=PARTITIONER,
    )


async def run_echo(
    bootstrap: str,
    topic: str,
    group: str,
    out_topic: str,
    limit: int | None,
    rows: int,
    *,
    stop: asyncio.Event | None = None,
    on_result: OnResult | None = None,
    assigned: asyncio.Event | None = None,
) -> Span:
    """Copy `limit` records (or until `stop`) to `out_topic`, sends gathered and offsets committed per fetch."""
    span = Span()
    consumer, producer = streamscore_consumer(topic, bootstrap, group), streamscore_producer(bootstrap)
    await producer.start()
    await consumer.start()
    try:
        while not _done(span, limit, stop):
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
            if assigned is not None and consumer.assignment():
                assigned.set()
            futures, keys = [], []
            PARTITIONER.prime([record.key for records in batches.values() for record in records])
            for records in batches.values():
                for record in records:
                    span.consumed()
                    futures.append(await producer.send(out_topic, value=record.value, key=record.key))
                    keys.append(record.key)
            if futures:
                await asyncio.gather(*futures)
                span.acknowledged(rows, len(futures))
                if on_result is not None:
                    now = time.perf_counter()
                    for key in keys:
                        on_result(key, now)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return span


class NaiveScorer:
    """Scores one V2 request with one model run and writes the V2 response, as a first draft would."""

    def __init__(self, model_path: Path, model_name: str) -> None:
        self.session = make_session(model_path)
        self.output = self.session.get_outputs()[0].name
        self.model_name = model_name

    def __call__(self, value: bytes) -> bytes:
        body = orjson.loads(value)
        first = body["inputs"][0]
        x = np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])
        (scores,) = self.session.run(None, {first["name"]: x})
        response: dict[str, Any] = {
            "id": body["id"],
            "model_name": self.model_name,
            "model_version": MODEL_VERSION,
            "outputs": [
                {
                    "name": self.output,
                    "datatype": "FP32",
                    "shape": list(scores.shape),
                    "data": scores.ravel().tolist(),
                }
            ],
        }
        return orjson.dumps(response)


async def run_naive(
    bootstrap: str,
    topic: str,
    group: str,
    out_topic: str,
    model_path: Path,
    rows: int,
    *,
    limit: int | None = None,
    stop: asyncio.Event | None = None,
    on_result: OnResult | None = None,
    assigned: asyncio.Event | None = None,
) -> Span:
    """Score records one by one until `limit` are done or `stop` is set; commit after each fetch.

    `assigned` is set once the consumer owns partitions.

    The producer keeps aiokafka's default linger (0 ms): with one awaited send per record, the
    2 ms streamscore lingers would cost 2 ms per record, and a user would not write that.
    """
    span, score = Span(), NaiveScorer(model_path, model_path.parent.parent.name)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    await consumer.start()
    try:
        while not _done(span, limit, stop):
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            if assigned is not None and consumer.assignment():
                assigned.set()
            for records in batches.values():
                for record in records:
                    if _done(span, limit, stop):
                        break
                    span.consumed()
                    await (await producer.send(out_topic, value=score(record.value), key=record.key))
                    span.acknowledged(rows)
                    if on_result is not None:
                        on_result(record.key, time.perf_counter())
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return span


def _done(span: Span, limit: int | None, stop: asyncio.Event | None) -> bool:
    return (limit is not None and span.records >= limit) or (stop is not None and stop.is_set())
