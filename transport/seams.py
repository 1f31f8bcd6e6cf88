"""The narrow interfaces the rest of streamscore uses instead of aiokafka's classes.

aiokafka's `AIOKafkaConsumer` and `AIOKafkaProducer` satisfy them (the reader is
`transport.reading.TopicReader`); the unit tests pass in-memory fakes (`tests/fakes.py`), as
httpx's tests pass a mock transport. Each protocol holds only the calls the code makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition

from schemas.records import Record

Headers = Sequence[tuple[str, bytes]]
Fetched = Mapping[TopicPartition, Sequence[Record]]
OnRevoked = Callable[[set[TopicPartition]], Awaitable[None]]


class Rebalance(Protocol):
    """What a group member does when its partitions change: first the revoked, then the assigned."""

    async def on_revoked(self, revoked: set[TopicPartition]) -> None: ...
    async def on_assigned(self, assigned: set[TopicPartition]) -> None: ...


class Client(Protocol):
    """Anything with a lifecycle: connect, then disconnect."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class Producer(Client, Protocol):
    """Sends records; `send` returns the future of the broker's acknowledgement."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]: ...


class Transactional(Producer, Protocol):
    """A producer with a transactional id: what it sends in a transaction is committed together or not at all."""

    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...


class TransactionalProducer(Transactional, Protocol):
    """A transactional producer that also commits a consumer's offsets in its transaction."""

    async def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None: ...


class Fetcher(Client, Protocol):
    """What every consumer does: fetch, and say where it stands."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Fetched: ...

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]: ...
    async def position(self, partition: TopicPartition) -> int: ...


class GroupConsumer(Fetcher, Protocol):
    """A member of a consumer group, subscribed to the input topic, committing by hand."""

    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def paused(self) -> set[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    async def seek_to_committed(self, *partitions: TopicPartition) -> Any: ...


class Reader(Fetcher, Protocol):
    """A consumer outside any group that reads whole topics (every partition, from the start)."""

    async def partitions_of(self, topic: str) -> set[int]:
        """The partitions of `topic`; empty when it does not exist."""
        ...

    def assign(self, partitions: Sequence[TopicPartition]) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...


class RangeReader(Reader, Protocol):
    """A reader that reads a chosen range of offsets of each partition, not only the whole topic."""

    async def beginning_offsets(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
