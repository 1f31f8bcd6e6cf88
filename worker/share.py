"""A share group's consumer (KIP-932, "queues for Kafka") behind an asyncio seam.

aiokafka has no share consumer; confluent-kafka's `ShareConsumer` (librdkafka, marked preview, the
optional extra `streamscore[share]`) is synchronous and not thread-safe, so `ShareSource` runs every
call to it in one dedicated thread and awaits the result. Records are acknowledged explicitly, one
by one: accepted once their result or dead letter is acknowledged by the broker, released for
redelivery when their failure may pass. In explicit mode every record of a poll must be
acknowledged before the next poll; `Deliveries` keeps that account for the worker (pure).

    ShareSource.poll(timeout_s)          -> the records acquired (each with its delivery count)
    ShareSource.acknowledge(settled)     -> acknowledgements sent and committed; the partitions that failed
    ShareSource.rules()                  -> the group's lock duration, delivery limit, where a new group starts
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from schemas.errors import ConfigError, FatalError, NotAuthorizedError
from schemas.records import InputRecord, Record
from transport.connection import Connection

log = structlog.get_logger("streamscore.worker")

T = TypeVar("T")

# The broker's defaults for a share group (group.share.* in server.properties), used when the group's
# own settings cannot be read (no DESCRIBE_CONFIGS on the group).
DEFAULT_LOCK_MS = 30_000
DEFAULT_DELIVERY_LIMIT = 5
ADMIN_TIMEOUT_S = 10.0
LOCK_SHARE = 0.5  # a poll's records must be settled within this share of the lock, else they are released


class Ack(enum.Enum):
    """How a record is acknowledged to its share group."""

    ACCEPT = "accept"  # done: its result or dead letter is written
    RELEASE = "release"  # not done: deliver it again (the broker counts one more delivery)


@dataclass(frozen=True)
class GroupRules:
    """A share group's settings that the worker must respect."""

    lock_ms: int = DEFAULT_LOCK_MS  # share.record.lock.duration.ms: how long an acquired record stays ours
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT  # share.delivery.count.limit: deliveries before the broker drops it
    offset_reset: str = "latest"  # share.auto.offset.reset: where a new group starts


# What the worker assumes when it cannot read its group's settings: the least the broker allows by default
# (group.share.min.record.lock.duration.ms, and a delivery limit of 2), so that no record is released at its
# last delivery and archived unseen, and none is held past its lock.
SAFE_RULES = GroupRules(lock_ms=15_000, delivery_limit=2)

Key = tuple[str, int, int]  # topic, partition, offset


def key_of(record: Record) -> Key:
    return record.topic, record.partition, record.offset


@dataclass
class Deliveries:
    """The records of the last poll and how each is settled; the next poll waits until all are.

    A record not settled by `deadline` is released (given up: its lock is about to expire and the
    broker would hand it to another worker anyway); if its outcome comes later it is still written
    (a duplicate the at-least-once contract allows) but not acknowledged again.
    """

    pending: dict[Key, Record] = field(default_factory=dict)
    settled: dict[Key, tuple[Record, Ack]] = field(default_factory=dict)
    deadline: float = float("inf")

    def take(self, records: Iterable[Record], now: float, lock_ms: int) -> None:
        """A poll acquired `records` at `now`."""
        self.pending.update((key_of(record), record) for record in records)
        self.deadline = now + lock_ms / 1000 * LOCK_SHARE

    def settle(self, record: Record, ack: Ack) -> bool:
        """Record how `record` is acknowledged; False if it was not pending (released already, or not ours)."""
        taken = self.pending.pop(key_of(record), None)
        if taken is None:
            return False
        self.settled[key_of(record)] = (taken, ack)
        return True

    def overdue(self, now: float) -> list[Record]:
        """Release what is still pending past the deadline; the records released."""
        if now < self.deadline or not self.pending:
            return []
        late = list(self.pending.values())
        for record in late:
            self.settle(record, Ack.RELEASE)
        return late

    def drain(self) -> list[tuple[Record, Ack]]:
        """The settled records, to acknowledge now; forgotten here."""
        settled, self.settled = list(self.settled.values()), {}
        return settled

    def release_all(self) -> None:
        """Shutting down: what is still pending goes back to the group at once."""
        for record in list(self.pending.values()):
            self.settle(record, Ack.RELEASE)

    @property
    def complete(self) -> bool:
        """Every record of the last poll is settled (the next poll may come once they are acknowledged)."""
        return not self.pending


class SharedConsumer(Protocol):
    """What the share worker needs of a share group's consumer (`ShareSource`; tests pass a fake)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def poll(self, timeout_s: float) -> Sequence[Record]: ...
    async def acknowledge(self, settled: Sequence[tuple[Record, Ack]]) -> list[str]: ...
    async def rules(self) -> GroupRules: ...


def client_options(
    connection: Connection, group_id: str, client_id: str, max_records: int, fetch_max_bytes: int = 0
) -> dict[str, Any]:
    """librdkafka's configuration of a share consumer from streamscore's connection settings."""
    c = connection
    options: dict[str, Any] = {
        "bootstrap.servers": c.bootstrap_servers,
        "security.protocol": c.security_protocol,
        "group.id": group_id,
        "client.id": client_id,
        "share.acknowledgement.mode": "explicit",
        "max.poll.records": max_records,
    }
    if fetch_max_bytes:  # what a fetch may bring is part of the memory in flight (as for the group consumer)
        options["fetch.max.bytes"] = fetch_max_bytes
    if c.sasl_mechanism:
        options |= {"sasl.mechanism": c.sasl_mechanism, "sasl.username": c.sasl_username, "sasl.password": c.password()}
    for option, path in (
        ("ssl.ca.location", c.ssl_cafile),
        ("ssl.certificate.location", c.ssl_certfile),
        ("ssl.key.location", c.ssl_keyfile),
    ):
        if path:
            options[option] = path
    return options


def _confluent() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError as error:
        raise ConfigError(
            "consumption=share needs confluent-kafka's share consumer, which is not installed: "
            "pip install 'streamscore[share]'"
        ) from error
    if not hasattr(confluent_kafka, "ShareConsumer"):
        raise ConfigError(
            f"confluent-kafka {confluent_kafka.version()[0]} has no ShareConsumer (2.16 or later has): "
            "pip install --upgrade 'streamscore[share]'"
        )
    return confluent_kafka


class ShareSource:
    """confluent-kafka's ShareConsumer, subscribed to the input topic, driven from one thread."""

    def __init__(self, options: dict[str, Any], topics: Sequence[str], offset_reset: str = "earliest") -> None:
        self.options = options
        self.topics = list(topics)
        self.offset_reset = offset_reset
        self._kafka = _confluent()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="share-consumer")
        self._consumer: Any = None

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def start(self) -> None:
        """Set where a new group starts, then join the share group (raises KafkaException if unreachable)."""
        await self._call(self._set_offset_reset)
        self._consumer = self._kafka.ShareConsumer(self.options)
        await self._call(self._consumer.subscribe, self.topics)

    async def stop(self) -> None:
        """Commit what is acknowledged and leave the group (what is still acquired is released)."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await self._call(consumer.close)
            except self._kafka.KafkaException as error:
                log.warning("share_consumer_close_failed", error=str(error))
        self._thread.shutdown(wait=False)

    async def poll(self, timeout_s: float) -> Sequence[Record]:
        """The records of one poll (errors reported by the client are logged, not returned)."""
        messages = await self._call(self._consumer.poll, timeout_s)
        records: list[Record] = []
        for message in messages:
            if message.error() is not None:
                self._check(message.error())
                log.warning("share_poll_error", error=str(message.error()))
                continue
            records.append(_record_of(message))
        return records

    def _check(self, error: Any) -> None:
        """Raise what must stop the worker: a refused ACL (NotAuthorizedError, naming it), a fatal error."""
        codes = self._kafka.KafkaError
        group, topics = self.options["group.id"], ", ".join(repr(t) for t in self.topics)
        grants = {
            codes.GROUP_AUTHORIZATION_FAILED: f"the READ ACL on group {group!r}",
            codes.TOPIC_AUTHORIZATION_FAILED: f"the READ (and DESCRIBE) ACL on topic {topics}",
        }
        grant = grants.get(error.code())
        if grant is not None:
            raise NotAuthorizedError(
                f"the broker refused this worker's share consumer ({error}): grant its principal {grant}"
            )
        if error.fatal():
            raise FatalError(f"the share consumer failed for good: {error}; the process stops and is started again")

    async def acknowledge(self, settled: Sequence[tuple[Record, Ack]]) -> list[str]:
        """Send how each record is settled and commit it; the partitions whose commit failed."""
        if not settled:
            return []
        return await self._call(self._acknowledge, settled)

    def _acknowledge(self, settled: Sequence[tuple[Record, Ack]]) -> list[str]:
        types, failed = self._kafka.AcknowledgeType, []
        for record, ack in settled:
            kind = types.ACCEPT if ack is Ack.ACCEPT else types.RELEASE
            try:
                self._consumer.acknowledge_offset(record.topic, record.partition, record.offset, kind)
            except Exception as error:  # no longer acquired (its lock expired): the broker redelivers it
                failed.append(f"{record.topic}[{record.partition}]@{record.offset}: {error}")
        try:
            results = self._consumer.commit_sync(ADMIN_TIMEOUT_S)
        except self._kafka.KafkaException as error:  # the broker away: the client sends them with the next poll
            return [*failed, f"commit: {error}"]
        return failed + [f"{tp.topic}[{tp.partition}]: {error}" for tp, error in results.items() if error is not None]

    async def rules(self) -> GroupRules:
        """The group's lock duration and delivery limit (the broker's defaults if they cannot be read)."""
        return await self._call(self._rules)

    def _admin(self) -> Any:
        admin_options = {k: v for k, v in self.options.items() if not k.startswith(("share.", "max.poll", "group."))}
        return self._kafka.admin.AdminClient(admin_options)

    def _group(self, **configs: str) -> Any:
        admin = self._kafka.admin
        entries = [
            admin.ConfigEntry(name, value, incremental_operation=admin.AlterConfigOpType.SET)
            for name, value in configs.items()
        ]
        return admin.ConfigResource(admin.ResourceType.GROUP, self.options["group.id"], incremental_configs=entries)

    def _set_offset_reset(self) -> None:
        """A new share group starts at the latest offset unless told otherwise; the worker's groups start
        at the earliest, as its consumer groups do (nothing produced before the first worker is skipped)."""
        try:
            resource = self._group(**{"share.auto.offset.reset": self.offset_reset})
            admin = self._admin()  # held until the answer: a client destroyed meanwhile fails its requests
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(timeout=ADMIN_TIMEOUT_S)
        except Exception as error:  # no ALTER_CONFIGS on the group: its own setting stands
            log.warning(
                "share_group_not_configured",
                group=self.options["group.id"],
                error=str(error),
                hint=f"set the group's share.auto.offset.reset={self.offset_reset} with kafka-configs.sh",
            )

    def _rules(self) -> GroupRules:
        try:
            admin = self._admin()
            futures = admin.describe_configs([self._group()])
            configs = next(iter(futures.values())).result(timeout=ADMIN_TIMEOUT_S)
        except Exception as error:  # no DESCRIBE_CONFIGS on the group: assume the strictest the broker allows
            log.warning(
                "share_group_rules_unread",
                group=self.options["group.id"],
                error=str(error),
                assumed_lock_ms=SAFE_RULES.lock_ms,
                assumed_delivery_limit=SAFE_RULES.delivery_limit,
                hint="grant DESCRIBE_CONFIGS on the group: a record then gets every delivery the group allows",
            )
            return SAFE_RULES
        value = {name: entry.value for name, entry in configs.items()}
        return GroupRules(
            lock_ms=int(value.get("share.record.lock.duration.ms", DEFAULT_LOCK_MS)),
            delivery_limit=int(value.get("share.delivery.count.limit", DEFAULT_DELIVERY_LIMIT)),
            offset_reset=value.get("share.auto.offset.reset", "latest"),
        )


def _record_of(message: Any) -> InputRecord:
    timestamp_type, timestamp = message.timestamp()
    return InputRecord(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        value=message.value(),
        key=message.key(),
        headers=list(message.headers() or ()),  # as sent, byte for byte (a null value stays None)
        timestamp=timestamp,
        timestamp_type=1 if timestamp_type == 2 else 0,  # librdkafka: 1 CreateTime, 2 LogAppendTime
        delivery_count=message.delivery_count(),
    )
