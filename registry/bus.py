"""Kafka I/O of the lifecycle commands: the compacted control and status topics."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from schemas.control import DesiredState, WorkerStatus, decode_state, decode_status, encode_state
from schemas.records import Record
from schemas.topics import status_topic_of
from transport.admin import create_topics
from transport.connection import Connection
from transport.reading import TopicReader, read_to_end

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}


async def ensure_topics(connection: Connection, control_topic: str) -> None:
    """Create the control and status topics (compacted, one partition) unless they exist."""
    await create_topics(connection, [control_topic, status_topic_of(control_topic)], configs=COMPACTED)


async def read_compacted(connection: Connection, topic: str) -> dict[bytes, bytes]:
    """The latest value of every key of a topic (what compaction keeps), read to its end."""
    latest: dict[bytes, bytes] = {}

    def keep(records: Sequence[Record]) -> None:
        for record in records:
            if record.key is None:
                continue
            if record.value is None:
                latest.pop(record.key, None)
            else:
                latest[record.key] = record.value

    reader = TopicReader(connection.kafka_options())
    await reader.start()
    try:
        await read_to_end(reader, topic, keep)
    finally:
        await reader.stop()
    return latest


async def publish_state(connection: Connection, control_topic: str, state: DesiredState) -> None:
    """Publish a model's desired state and wait for the broker to acknowledge it."""
    await ensure_topics(connection, control_topic)
    producer = AIOKafkaProducer(**connection.kafka_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(control_topic, encode_state(state), key=state.model.encode())
    finally:
        await producer.stop()


async def read_states(connection: Connection, control_topic: str) -> dict[str, DesiredState]:
    """The desired state of every model on the control topic."""
    raw = await read_compacted(connection, control_topic)
    return {key.decode(): decode_state(value) for key, value in raw.items()}


async def read_statuses(connection: Connection, control_topic: str) -> list[WorkerStatus]:
    """What every worker process last reported."""
    raw = await read_compacted(connection, status_topic_of(control_topic))
    return [decode_status(value) for value in raw.values()]
