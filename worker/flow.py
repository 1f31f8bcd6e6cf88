"""Backpressure: how many records (and bytes) are in flight, and whether fetching must pause.

Fetching pauses every assigned partition at `limit` records or `limit_bytes` bytes in flight,
or while the broker refuses to take what the worker sends (`blocked`), and resumes once both
are at half their limit and the broker takes sends again; while paused it does not poll (an
empty fetch of paused partitions costs a broker round trip and nothing else). `decide` is pure;
the worker carries out what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from schemas.records import Record

FETCH_MAX_RECORDS = 1000
PAUSED_CHECK_S = 0.1

Step = Literal["pause", "resume", "hold", "flow"]


class Flow:
    """Records in flight (taken, not yet acknowledged) against the limit."""

    def __init__(self, limit: int, limit_bytes: int) -> None:
        self.limit, self.limit_bytes = limit, limit_bytes
        self.resume_at, self.resume_at_bytes = limit // 2, limit_bytes // 2
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.paused = False
        self.room = asyncio.Event()  # set when in-flight records fall to the resume mark

    def taken(self, size: int) -> None:
        """A record of `size` bytes was fetched."""
        self.in_flight += 1
        self.in_flight_bytes += size

    def finished(self, size: int) -> None:
        """A record's result or dead letter was acknowledged."""
        self.in_flight -= 1
        self.in_flight_bytes -= size
        if self._below_resume_marks():
            self.room.set()

    def decide(self, blocked: bool = False) -> Step:
        """pause at a limit (or while `blocked`), resume at half of both, hold (pause what a rebalance added)."""
        full = self.in_flight >= self.limit or self.in_flight_bytes >= self.limit_bytes
        if not self.paused and (full or blocked):
            return "pause"
        if self.paused and not blocked and self._below_resume_marks():
            return "resume"
        return "hold" if self.paused else "flow"

    def _below_resume_marks(self) -> bool:
        return self.in_flight <= self.resume_at and self.in_flight_bytes <= self.resume_at_bytes

    def fetch_size(self) -> int:
        """How many records the next fetch may bring."""
        return max(1, min(FETCH_MAX_RECORDS, self.limit - self.in_flight))

    async def wait_for_room(self, timeout_s: float = PAUSED_CHECK_S) -> None:
        """While paused, wait for acknowledgements (at most `timeout_s`) instead of polling."""
        self.room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.room.wait(), timeout_s)


def size_of(record: Record) -> int:
    """The bytes a record holds: value, key and headers."""
    size = len(record.value or b"") + len(record.key or b"")
    for name, value in record.headers or ():
        size += len(name) + len(value or b"")
    return size
