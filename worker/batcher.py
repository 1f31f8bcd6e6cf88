"""Micro-batching: gather rows of compatible records into batches, bounded in rows and delay."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Batch(Generic[T]):
    """Items that one model run scores together, and their total rows."""

    key: Hashable
    items: list[T] = field(default_factory=list)
    rows: int = 0
    opened: float = 0.0
    ran_s: float = 0.0  # how long its scoring took in the model thread (set by the score loop)


class MicroBatcher(Generic[T]):
    """Groups items by key (model version and input layout) into batches.

    A batch closes when it holds `max_rows` rows (or the limit given with its items: the model's), or
    `max_delay` seconds after its first item arrived. An item never shares a batch that it
    would push past the limit; an item at or over the limit on its own is a batch by itself.
    Pure: the caller passes the time and runs what comes out.
    """

    def __init__(self, max_rows: int, max_delay: float) -> None:
        self.max_rows = max_rows
        self.max_delay = max_delay
        self._open: dict[Hashable, Batch[T]] = {}
        self._items = 0

    def __len__(self) -> int:
        """Items waiting in open batches."""
        return self._items

    def add(self, key: Hashable, item: T, rows: int, now: float, limit: int | None = None) -> list[Batch[T]]:
        """Add an item; return the batches that closed because of it (full ones). `limit`, the rows of
        the item's model, stands in for `max_rows`."""
        cap = self.max_rows if limit is None else limit
        closed: list[Batch[T]] = []
        batch = self._open.get(key)
        if batch is not None and batch.rows + rows > cap:
            closed.append(self._close(key))
            batch = None
        if batch is None:
            batch = self._open[key] = Batch(key, opened=now)
        batch.items.append(item)
        batch.rows += rows
        self._items += 1
        if batch.rows >= cap:
            closed.append(self._close(key))
        return closed

    def due(self, now: float) -> list[Batch[T]]:
        """Close and return the batches whose delay has passed."""
        keys = [key for key, batch in self._open.items() if batch.opened + self.max_delay <= now]  # as next_deadline
        return [self._close(key) for key in keys]

    def next_deadline(self) -> float | None:
        """When the oldest open batch is due, or None when nothing waits."""
        if not self._open:
            return None
        return min(batch.opened for batch in self._open.values()) + self.max_delay

    def drain(self) -> list[Batch[T]]:
        """Close and return every open batch (at shutdown)."""
        return [self._close(key) for key in list(self._open)]

    def _close(self, key: Hashable) -> Batch[T]:
        batch = self._open.pop(key)
        self._items -= len(batch.items)
        return batch
