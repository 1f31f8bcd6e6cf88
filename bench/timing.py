"""Spans of work: from the first record consumed to the last output acknowledged."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Span:
    """What one contender did over the input, and when its first and last record happened."""

    records: int = 0
    rows: int = 0
    first: float | None = None  # perf_counter() when the first record was consumed
    last: float | None = None  # perf_counter() when the last output was acknowledged

    def consumed(self) -> None:
        """Note that a record was consumed (starts the clock on the first)."""
        if self.first is None:
            self.first = time.perf_counter()

    def acknowledged(self, rows: int, records: int = 1) -> None:
        """Note that the outputs of `records` records of `rows` rows each were acknowledged."""
        self.records += records
        self.rows += rows * records
        self.last = time.perf_counter()

    @property
    def seconds(self) -> float:
        """The span's length (0 if nothing happened)."""
        if self.first is None or self.last is None:
            return 0.0
        return self.last - self.first

    @property
    def rows_per_s(self) -> float:
        """Rows scored (or copied) per second over the span."""
        return self.rows / self.seconds if self.seconds else 0.0
