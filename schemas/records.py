"""Kafka records as every part of streamscore reads them: key, value, headers, and where they sit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Message(Protocol):
    """What a reader of a topic's content needs of a record: key, value, headers."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Record(Message, Protocol):
    """The fields of a consumed record (an aiokafka ConsumerRecord has them all)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...


@dataclass(frozen=True, slots=True)
class InputRecord:
    """A plain record (unit tests, fakes, and anything that is not an aiokafka record)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 0
    timestamp_type: int = 0
    delivery_count: int | None = None  # share groups: which delivery of the record to the group this is


def delivery_count_of(record: Message) -> int | None:
    """The share group's delivery count of a record (None: not read through a share group)."""
    count = getattr(record, "delivery_count", None)
    return count if isinstance(count, int) else None
