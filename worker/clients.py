"""The worker's Kafka clients: how they are configured, and connecting them under the retry policy.

`Clients` is the seam the worker builds its clients through: `KafkaClients` makes aiokafka's,
the unit tests pass fakes (tests/fakes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas.errors import BrokerUnavailableError
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, topic_limits
from transport.partitioner import PARTITIONER
from transport.reading import TopicReader
from transport.seams import GroupConsumer, Producer, Reader, Rebalance, TransactionalProducer
from worker.policy import NOT_AUTHORIZED, access_refused
from worker.retry import retrying
from worker.settings import Settings

log = structlog.get_logger("streamscore.worker")

PRODUCER_MAX_BATCH_BYTES = 262_144
# python -m bench.tuning (bench/README.md, "The producer's linger"): single-row requests go as fast at 0 ms
# as at 2-20 ms, 32-row ones at 94 % of 5 ms's rows/s (0 ms: 71 %), and p50 is 2.6 ms below 5 ms's
PRODUCER_LINGER_MS = 2
FETCH_MAX_BYTES = 52_428_800  # aiokafka's (and Kafka's) default
PARTITION_FETCH_BYTES = (
    1_048_576  # a partition's share of a fetch: Kafka's default (`python -m bench.tuning --fetch-kib`)
)


class Clients(Protocol):
    """Makes the three clients of a worker, and reads how large a record each topic takes."""

    async def limits(self, settings: Settings, topics: Sequence[str]) -> dict[str, int]: ...
    def producer(self, settings: Settings, limits: Mapping[str, int]) -> Producer: ...
    def transactional_producer(
        self, settings: Settings, limits: Mapping[str, int], transactional_id: str
    ) -> TransactionalProducer: ...
    def consumer(self, settings: Settings, rebalance: Rebalance) -> GroupConsumer: ...
    def reader(self, settings: Settings) -> Reader: ...


class KafkaClients:
    """aiokafka's clients, configured for the worker."""

    async def limits(self, settings: Settings, topics: Sequence[str]) -> dict[str, int]:
        """Each topic's `max.message.bytes`, read from the broker."""
        return await topic_limits(settings.connection, topics)

    def producer(self, settings: Settings, limits: Mapping[str, int]) -> Producer:
        """The idempotent producer (acks from all in-sync replicas), sized to the topics it writes."""
        producer: Producer = AIOKafkaProducer(**_producer_options(settings, limits))
        return producer

    def transactional_producer(
        self, settings: Settings, limits: Mapping[str, int], transactional_id: str
    ) -> TransactionalProducer:
        """The producer of one input partition in exactly-once mode (its id fences the partition's last owner)."""
        producer: TransactionalProducer = AIOKafkaProducer(
            **_producer_options(settings, limits),
            transactional_id=transactional_id,
            transaction_timeout_ms=settings.transaction_timeout_ms,
        )
        return producer

    def consumer(self, settings: Settings, rebalance: Rebalance) -> GroupConsumer:
        """The group consumer of the input topic and its retry topics (commits by hand); `rebalance`
        hears of partitions that go and come."""
        s = settings
        consumer = GroupMember(
            **s.kafka_options(),
            group_id=s.group_id,
            client_id=f"streamscore-{s.worker_name}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            # what a fetch may bring is part of the memory in flight: a quarter of its bound, at most Kafka's default
            fetch_max_bytes=max(s.max_record_bytes, min(FETCH_MAX_BYTES, s.max_in_flight_bytes // 4)),
            max_partition_fetch_bytes=max(PARTITION_FETCH_BYTES, s.max_record_bytes),
            request_timeout_ms=max(s.request_timeout_ms, s.session_timeout_ms + 5000),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
        )
        consumer.subscribe(s.input_topics, listener=_Rebalance(rebalance))
        group_consumer: GroupConsumer = consumer
        return group_consumer

    def reader(self, settings: Settings) -> Reader:
        """A consumer outside any group, for the control topic."""
        return TopicReader(settings.kafka_options())


async def connect(start: Callable[[], Any], what: str, settings: Settings) -> None:
    """Start a client, retrying while the broker cannot be reached; BrokerUnavailableError in the end."""
    s = settings
    try:
        async for attempt in retrying(s.retry_attempts, s.retry_max_s):
            with attempt:
                try:
                    await start()
                except NOT_AUTHORIZED as error:  # no retry can help
                    raise access_refused(
                        error, what, group=s.group_id, transactional_id=what.rpartition(" ")[2]
                    ) from error
                except KafkaError as error:
                    raise BrokerUnavailableError(
                        f"Kafka {what} cannot connect to {s.bootstrap_servers} ({s.security_protocol}): {error}"
                    ) from error
    except BrokerUnavailableError:
        log.error(
            "broker_unavailable",
            client=what,
            bootstrap=s.bootstrap_servers,
            hint=(
                "is the broker running (`streamscore broker start` starts a local one), and do the security "
                "settings match its listener (STREAMSCORE_SECURITY_PROTOCOL, SASL user and password, "
                "STREAMSCORE_SSL_CAFILE)? aiokafka's log line above names the cause"
            ),
        )
        raise


def _producer_options(settings: Settings, limits: Mapping[str, int]) -> dict[str, Any]:
    """A record may be as large as the largest topic takes (each topic's own limit is the broker's to
    enforce, and dead letters are fitted to theirs); a batch never larger than the smallest takes, so
    that one large topic setting never gets a batch refused."""
    sizes = list(limits.values()) or [DEFAULT_MAX_MESSAGE_BYTES]
    return {
        **settings.kafka_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": PRODUCER_LINGER_MS,
        "max_batch_size": min(PRODUCER_MAX_BATCH_BYTES, *sizes),
        "max_request_size": max(sizes),
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": settings.request_timeout_ms,
        "client_id": f"streamscore-{settings.worker_name}",
        "partitioner": PARTITIONER,  # aiokafka's placement, the score loop's keys hashed a batch at a time
    }


class GroupMember(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka has no type hints
    """aiokafka's group consumer, reading a partition with no committed offset from its beginning,
    and rewinding to it as well (`seek_to_committed`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options, auto_offset_reset="earliest")

    async def seek_to_committed(self, *partitions: TopicPartition) -> dict[TopicPartition, int | None]:
        """Each partition to its group's committed offset, or to its beginning when none is committed.

        aiokafka's own seeks only to a committed offset above 0 and otherwise leaves the position
        where it is. Exactly once, a partition whose first transaction was aborted (a broker outage
        longer than the transaction timeout) has no committed offset: the records of that
        transaction were past the position, and were never read again (tests/test_clients_kafka.py).
        """
        committed: dict[TopicPartition, int | None] = {}
        for partition in partitions:
            offset = committed[partition] = await self.committed(partition)
            if offset is None:
                await self.seek_to_beginning(partition)
            else:
                self.seek(partition, offset)
        return committed


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, rebalance: Rebalance) -> None:
        self.rebalance = rebalance

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.rebalance.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        await self.rebalance.on_assigned(set(assigned))
