"""What flows through the worker: records in, outcomes out (a result or a dead letter)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from schemas.codec import InferenceRequest
    from worker.model import LoadedModel


class Message(Protocol):
    """What a reader of a topic's content needs of a record: key, value, headers (`registry.compare`)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Record(Message, Protocol):
    """The fields of an aiokafka ConsumerRecord the worker reads."""

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
    """A plain record (unit tests, and anything that is not an aiokafka record)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 0
    timestamp_type: int = 0


@dataclass(slots=True)
class Item:
    """A record decoded and checked against its model, waiting for a batch."""

    record: Record
    request: InferenceRequest
    request_id: str
    model: LoadedModel
    key: Hashable = None  # items with equal keys can share a batch
    rows: int = 1
    shadow: bool = False  # scored by a shadow version: its result goes to the shadow topic


@dataclass(slots=True)
class Result:
    """A V2 response to produce to the results topic."""

    record: Record
    request_id: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    shadow: bool = False


@dataclass(slots=True)
class DeadLetter:
    """A record that cannot be scored, the error, and the model it was meant for (if known)."""

    record: Record
    error: Exception
    request_id: str
    model: tuple[str, str, str] | None = None  # name, version, sha256
    attempts: int = 1
    shadow: bool = False


Outcome = Result | DeadLetter
