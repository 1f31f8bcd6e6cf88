"""In-memory stand-ins for Kafka behind the seams of `transport.seams` (as httpx's MockTransport).

`FakeCluster` holds topics as lists of records and each group's committed offsets;
`FakeProducer`, `FakeConsumer` and `FakeReader` read and write it; `FakeClients` hands them to a
`worker.runner.Worker`. Failures are scripted: `FakeProducer.fail(topic, error, times)` fails the
next sends to a topic, `hold()` keeps acknowledgements until `release()`, and
`FakeConsumer.rebalance(keep)` rebalances as aiokafka's eager protocol does (every partition
revoked, the listener first, then `keep` assigned again from the committed offsets). They run on
the test's event loop: no threads, no sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, ProducerFenced

from schemas.records import InputRecord, Record
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, record_size
from transport.seams import Headers, Rebalance
from worker.settings import Settings
from worker.share import Ack, GroupRules

IDLE_FETCH_S = 0.002  # an empty fetch waits this long, not its whole timeout: tests stay fast


@dataclass
class FakeCluster:
    """Topics (partition -> records) and committed offsets (group, partition -> offset)."""

    topics: dict[str, list[list[InputRecord]]] = field(default_factory=dict)
    committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    max_message_bytes: dict[str, int] = field(default_factory=dict)  # a topic's limit (default: Kafka's)
    epochs: dict[str, int] = field(default_factory=dict)  # transactional id -> its current producer epoch
    aborted: list[InputRecord] = field(default_factory=list)  # records of aborted transactions (never visible)

    def limit(self, topic: str) -> int:
        """The largest record `topic` takes."""
        return self.max_message_bytes.get(topic, DEFAULT_MAX_MESSAGE_BYTES)

    def create(self, topic: str, partitions: int = 1) -> None:
        """Create `topic` unless it exists."""
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> InputRecord:
        """Write one record (the topic is created with one partition if it does not exist)."""
        self.create(topic)
        partitions = self.topics[topic]
        index = partition if partition is not None else (zlib.crc32(key) % len(partitions) if key else 0)
        record = InputRecord(topic, index, len(partitions[index]), value, key, tuple(headers), 1_700_000_000_000)
        partitions[index].append(record)
        return record

    def records(self, topic: str) -> list[InputRecord]:
        """Every record of `topic`, partition by partition."""
        return [record for partition in self.topics.get(topic, []) for record in partition]

    def end(self, tp: TopicPartition) -> int:
        partitions = self.topics.get(tp.topic, [])
        return len(partitions[tp.partition]) if tp.partition < len(partitions) else 0


@dataclass
class _Failure:
    error: BaseException
    times: int
    at_send: bool  # raised by send() itself (too large, no metadata), not through the future


class FakeProducer:
    """A producer that appends to the cluster; scripted failures and held acknowledgements.

    As aiokafka's, it refuses at `send` a record over `max_request_size`; as the broker, it fails
    the acknowledgement of a record over its topic's limit (MessageSizeTooLargeError).
    """

    def __init__(self, cluster: FakeCluster, max_request_size: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.cluster = cluster
        self.max_request_size = max_request_size
        self.started = False
        self.attempts: list[tuple[str, bytes | None]] = []  # every send, failed ones too: (topic, key)
        self.on_send: Callable[[], None] | None = None  # called at the start of every send
        self._failures: dict[str, list[_Failure]] = defaultdict(list)
        self._held: list[tuple[asyncio.Future[Any], tuple[Any, ...]]] | None = None

    def fail(self, topic: str, error: BaseException, times: int = 1, *, at_send: bool = False) -> None:
        """The next `times` sends to `topic` fail with `error`."""
        self._failures[topic].append(_Failure(error, times, at_send))

    def hold(self) -> None:
        """Keep acknowledgements back until `release()` (records are not written until then)."""
        self._held = []

    def release(self) -> None:
        """Acknowledge (and write) every held record, in order."""
        held, self._held = self._held or [], None
        for future, args in held:
            self._write(future, *args)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **more: Any
    ) -> asyncio.Future[Any]:
        """Hand a record over (`more`: partition, headers); the future is its acknowledgement."""
        partition, headers = more.get("partition"), more.get("headers")
        self.attempts.append((topic, key))
        if self.on_send is not None:
            self.on_send()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value is None and key is None:
            raise AssertionError("Need at least one: key or value")  # as aiokafka asserts
        size = record_size(key, value, headers or ())
        if size > self.max_request_size:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        failure = self._next_failure(topic)
        if failure is not None and failure.at_send:
            raise failure.error
        if failure is not None:
            future.set_exception(failure.error)
        elif size > self.cluster.limit(topic):
            future.set_exception(MessageSizeTooLargeError(f"{size} bytes over {topic}'s max.message.bytes"))
        elif self._held is not None:
            self._held.append((future, (topic, value, key, partition, headers)))
        else:
            self._write(future, topic, value, key, partition, headers)
        return future

    def _next_failure(self, topic: str) -> _Failure | None:
        scripted = self._failures.get(topic)
        if not scripted:
            return None
        failure = scripted[0]
        failure.times -= 1
        if failure.times <= 0:
            scripted.pop(0)
        return failure

    def _write(
        self,
        future: asyncio.Future[Any],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: Headers | None,
    ) -> None:
        record = self.cluster.append(topic, value, key=key, headers=headers or (), partition=partition)
        future.set_result(record)


class FakeTransactionalProducer(FakeProducer):
    """A transactional producer: what it sends in a transaction is written when the transaction commits
    (with the consumer offsets sent to it), dropped when it aborts. Starting it bumps its id's epoch,
    which fences any older producer with the same id (its commit raises ProducerFenced)."""

    def __init__(self, cluster: FakeCluster, transactional_id: str, max_request_size: int) -> None:
        super().__init__(cluster, max_request_size)
        self.transactional_id = transactional_id
        self.epoch = -1
        self.in_transaction = False
        self.commits = 0
        self._pending: list[tuple[str, bytes | None, bytes | None, int | None, Headers | None]] = []
        self._offsets: dict[tuple[str, TopicPartition], int] = {}

    async def start(self) -> None:
        await super().start()
        self.epoch = self.cluster.epochs[self.transactional_id] = self.cluster.epochs.get(self.transactional_id, -1) + 1

    async def begin_transaction(self) -> None:
        assert not self.in_transaction, "a transaction is already open"
        self.in_transaction = True

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        assert self.in_transaction, "not in a transaction"
        self._offsets.update({(group_id, tp): offset for tp, offset in offsets.items()})

    async def commit_transaction(self) -> None:
        assert self.in_transaction, "not in a transaction"
        if self.cluster.epochs.get(self.transactional_id) != self.epoch:
            raise ProducerFenced()
        for topic, value, key, partition, headers in self._pending:
            self.cluster.append(topic, value, key=key, headers=headers or (), partition=partition)
        self.cluster.committed.update(self._offsets)
        self._close_transaction()
        self.commits += 1

    async def abort_transaction(self) -> None:
        assert self.in_transaction, "not in a transaction"
        self.cluster.aborted += [InputRecord(t, p or 0, -1, v, k, tuple(h or ())) for t, v, k, p, h in self._pending]
        self._close_transaction()

    def _close_transaction(self) -> None:
        self._pending, self._offsets, self.in_transaction = [], {}, False

    def _write(
        self,
        future: asyncio.Future[Any],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: Headers | None,
    ) -> None:
        assert self.in_transaction, "a transactional send outside a transaction"
        self._pending.append((topic, value, key, partition, headers))
        future.set_result(None)


class _Fetching:
    """Positions and fetching over assigned partitions (shared by the consumer and the reader)."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self.fetches = 0

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[InputRecord]]:
        self.fetches += 1
        fetched: dict[TopicPartition, list[InputRecord]] = {}
        left = max_records if max_records is not None else 1_000_000
        for tp in sorted(self.positions, key=lambda tp: (tp.topic, tp.partition)):
            if tp in self._paused or left <= 0:
                continue
            records = self.cluster.topics.get(tp.topic, [[]] * (tp.partition + 1))[tp.partition]
            batch = records[self.positions[tp] : self.positions[tp] + left]
            if batch:
                fetched[tp] = list(batch)
                self.positions[tp] += len(batch)
                left -= len(batch)
        await asyncio.sleep(0 if fetched else min(timeout_ms / 1000, IDLE_FETCH_S))
        return fetched

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.cluster.end(tp) for tp in partitions}

    async def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to disconnect from."""


class FakeConsumer(_Fetching):
    """The only member of its group: it owns every partition of its topics until `rebalance`."""

    def __init__(self, cluster: FakeCluster, topics: Sequence[str], group: str, listener: Rebalance) -> None:
        super().__init__(cluster)
        self.topics, self.group, self.listener = list(topics), group, listener
        self.topic = self.topics[0]
        self.pauses = 0

    async def start(self) -> None:
        """Join: take every partition, from the group's committed offsets."""
        self._assign(set(range(len(self.cluster.topics.get(self.topic, [])))))
        await self.listener.on_assigned(set(self.positions))

    def _assign(self, partitions: set[int]) -> None:
        """Take `partitions` of the first topic, and every partition of the others (retry topics)."""
        self.positions = {}
        chosen = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        for topic in self.topics[1:]:
            chosen += [TopicPartition(topic, p) for p in range(len(self.cluster.topics.get(topic, [])))]
        for tp in chosen:
            self.positions[tp] = self.cluster.committed.get((self.group, tp), 0)
        self._paused &= set(self.positions)

    async def rebalance(self, keep: set[int]) -> set[TopicPartition]:
        """An eager rebalance, as aiokafka's: every partition is revoked (the listener runs first),
        then the partitions in `keep` of the first topic (and every one of the others) are assigned
        again from the group's committed offsets."""
        revoked = set(self.positions)
        await self.listener.on_revoked(set(revoked))
        self._assign(keep)
        await self.listener.on_assigned(set(self.positions))
        return revoked

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def pause(self, *partitions: TopicPartition) -> None:
        if partitions and not set(partitions) <= self._paused:
            self.pauses += 1
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.cluster.committed[(self.group, tp)] = offset
        self.cluster.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    async def seek_to_committed(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = self.cluster.committed.get((self.group, tp), 0)


class FakeReader(_Fetching):
    """A consumer outside any group that reads whole topics."""

    async def partitions_of(self, topic: str) -> set[int]:
        return set(range(len(self.cluster.topics.get(topic, []))))

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.positions = {tp: self.positions.get(tp, 0) for tp in partitions}

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.positions[tp] = 0

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)  # nothing is ever deleted

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)


class FakeClients:
    """The clients a Worker makes, all over one FakeCluster; the last of each kind is kept."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.made_producer: FakeProducer | None = None
        self.made_consumer: FakeConsumer | None = None
        self.made_reader: FakeReader | None = None
        self.transactional: dict[str, FakeTransactionalProducer] = {}  # the last producer made for each id
        self.producer_script: list[tuple[str, BaseException, int, bool]] = []  # fail(...) on the producer made
        self.exit_code: int | None = None  # for a test to keep the worker's exit code beside its clients
        self.hold_acks = False  # the producer made holds acknowledgements from the start

    async def limits(self, settings: Settings, topics: Sequence[str]) -> dict[str, int]:
        return {topic: self.cluster.limit(topic) for topic in topics}

    def producer(self, settings: Settings, limits: Mapping[str, int]) -> FakeProducer:
        self.made_producer = FakeProducer(self.cluster, max(limits.values(), default=DEFAULT_MAX_MESSAGE_BYTES))
        for topic, error, times, at_send in self.producer_script:
            self.made_producer.fail(topic, error, times, at_send=at_send)
        if self.hold_acks:
            self.made_producer.hold()
        return self.made_producer

    def transactional_producer(
        self, settings: Settings, limits: Mapping[str, int], transactional_id: str
    ) -> FakeTransactionalProducer:
        size = max(limits.values(), default=DEFAULT_MAX_MESSAGE_BYTES)
        producer = self.transactional[transactional_id] = FakeTransactionalProducer(
            self.cluster, transactional_id, size
        )
        for topic, error, times, at_send in self.producer_script:
            producer.fail(topic, error, times, at_send=at_send)
        return producer

    def consumer(self, settings: Settings, listener: Rebalance) -> FakeConsumer:
        self.made_consumer = FakeConsumer(self.cluster, settings.input_topics, settings.group_id, listener)
        return self.made_consumer

    def reader(self, settings: Settings) -> FakeReader:
        self.made_reader = FakeReader(self.cluster)
        return self.made_reader


@dataclass
class FakeShareGroup:
    """A share group of one topic, as the broker keeps it (KIP-932): records are acquired by a poll,
    acknowledged one by one; a released record is delivered again with its count raised, until the
    group's delivery limit (then it is archived, never delivered again)."""

    cluster: FakeCluster
    topic: str
    rules: GroupRules = field(default_factory=GroupRules)
    max_records: int = 16
    available: list[InputRecord] = field(default_factory=list)
    acknowledged: dict[tuple[int, int], list[Ack]] = field(default_factory=lambda: defaultdict(list))
    archived: list[InputRecord] = field(default_factory=list)
    acquired: dict[tuple[int, int], InputRecord] = field(default_factory=dict)
    _read: int = 0

    def source(self, settings: Settings) -> FakeShareSource:
        return FakeShareSource(self)

    def acquire(self) -> list[InputRecord]:
        """The next records to deliver: those released first, then new ones."""
        fresh = self.cluster.records(self.topic)[self._read :]
        self._read += len(fresh)
        self.available += [dataclasses.replace(record, delivery_count=1) for record in fresh]
        taken, self.available = self.available[: self.max_records], self.available[self.max_records :]
        self.acquired.update(((r.partition, r.offset), r) for r in taken)
        return taken

    def settle(self, record: InputRecord, ack: Ack) -> None:
        """An acknowledgement reaches the broker."""
        where = (record.partition, record.offset)
        taken = self.acquired.pop(where)
        self.acknowledged[where].append(ack)
        if ack is Ack.RELEASE:
            count = (taken.delivery_count or 1) + 1
            if count > self.rules.delivery_limit:
                self.archived.append(taken)
            else:
                self.available.append(dataclasses.replace(taken, delivery_count=count))


class FakeShareSource:
    """One member of a `FakeShareGroup` (the worker's `SharedConsumer`)."""

    def __init__(self, group: FakeShareGroup) -> None:
        self.group = group
        self.outstanding: set[tuple[int, int]] = set()
        self.closed = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for where in list(self.outstanding):  # closing releases what is still acquired
            self.group.settle(self.group.acquired[where], Ack.RELEASE)
        self.closed = True

    async def poll(self, timeout_s: float) -> list[InputRecord]:
        assert not self.outstanding, f"polled with records of the last poll unacknowledged: {self.outstanding}"
        records = self.group.acquire()
        if not records:
            await asyncio.sleep(IDLE_FETCH_S)
        self.outstanding = {(r.partition, r.offset) for r in records}
        return records

    async def acknowledge(self, settled: Sequence[tuple[Record, Ack]]) -> list[str]:
        for record, ack in settled:
            self.outstanding.remove((record.partition, record.offset))
            self.group.settle(self.group.acquired[(record.partition, record.offset)], ack)
        return []

    async def rules(self) -> GroupRules:
        return self.group.rules
