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
