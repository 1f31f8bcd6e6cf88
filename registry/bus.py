"""Kafka I/O of the lifecycle commands: the compacted control and status topics."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from registry.control import (
    STATUS_SUFFIX,
    DesiredState,
    WorkerStatus,
    decode_state,
    decode_status,
    encode_state,
)
from schemas.errors import BrokerUnavailableError, ConfigError

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


async def ensure_topics(options: dict[str, Any], control_topic: str) -> None:
    """Create the control and status topics (compacted, one partition) unless they exist."""
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [t for t in (control_topic, control_topic + STATUS_SUFFIX) if t not in existing]
        if wanted:
            replicas = min(3, len((await admin.describe_cluster())["brokers"]))
            topics = [NewTopic(t, 1, replicas, topic_configs=COMPACTED) for t in wanted]
            with contextlib.suppress(TopicAlreadyExistsError):  # another command created them meanwhile
                await admin.create_topics(topics)
            await _wait_for_leaders(options, wanted)
    except KafkaError as error:
        if error.retriable or isinstance(error, KafkaConnectionError):
            raise BrokerUnavailableError(f"cannot reach Kafka at {options['bootstrap_servers']}: {error}") from error
        raise ConfigError(f"Kafka refused to create the topic {control_topic}: {error}") from error
    finally:
        await admin.close()


async def _wait_for_leaders(options: dict[str, Any], topics: list[str], timeout_s: float = 30.0) -> None:
    consumer = AIOKafkaConsumer(**options, group_id=None)
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(not consumer.partitions_for_topic(t) for t in topics) and loop.time() < deadline:
            await consumer._client.force_metadata_update()  # no public way to refresh other topics
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def read_compacted(options: dict[str, Any], topic: str) -> dict[bytes, bytes]:
    """The latest value of every key of a topic (what compaction keeps), read to its end."""
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    latest: dict[bytes, bytes] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        if not partitions:
            return latest
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while await behind(consumer, ends):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = record.value
    finally:
        await consumer.stop()
    return latest


async def behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    if topic not in await consumer.topics():
        return set()
    await consumer._client.force_metadata_update()  # topics() does not fill the partition cache
    return consumer.partitions_for_topic(topic) or set()


async def publish_state(options: dict[str, Any], control_topic: str, state: DesiredState) -> None:
    """Publish a model's desired state and wait for the broker to acknowledge it."""
    await ensure_topics(options, control_topic)
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(control_topic, encode_state(state), key=state.model.encode())
    finally:
        await producer.stop()


async def read_states(options: dict[str, Any], control_topic: str) -> dict[str, DesiredState]:
    """The desired state of every model on the control topic."""
    raw = await read_compacted(options, control_topic)
    return {key.decode(): decode_state(value) for key, value in raw.items()}


async def read_statuses(options: dict[str, Any], control_topic: str) -> list[WorkerStatus]:
    """What every worker process last reported."""
    raw = await read_compacted(options, control_topic + STATUS_SUFFIX)
    return [decode_status(value) for value in raw.values()]
