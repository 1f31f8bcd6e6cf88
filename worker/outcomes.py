"""What flows through the worker: items waiting for a batch, and outcomes (a result or a dead letter)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from artifacts.runtime import LoadedModel
from schemas.codec import InferenceRequest
from schemas.records import Record


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


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a record that may be scored later goes instead of the dead-letter topic (worker/retrytopics.py)."""

    topic: str
    headers: list[tuple[str, bytes]]
    attempt: int  # the attempt its delivery from `topic` will be


@dataclass(slots=True)
class DeadLetter:
    """A record that cannot be scored, the error, and the model it was meant for (if known).

    With `hop` set, the record goes to a retry topic instead, value, key and headers as they were
    (plus the retry headers); `final` means it goes to the dead-letter topic whatever its error.
    """

    record: Record
    error: Exception
    request_id: str
    model: tuple[str, str, str] | None = None  # name, version, sha256
    attempts: int = 1
    shadow: bool = False
    hop: Hop | None = None
    final: bool = False


Outcome = Result | DeadLetter
