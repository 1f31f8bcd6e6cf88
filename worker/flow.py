"""Backpressure: how many records are in flight, and whether fetching must pause.

Fetching pauses every assigned partition at `limit` records in flight and resumes at half of
it, without polling while paused (an empty fetch of paused partitions costs a broker round
trip and nothing else). `decide` is pure; the worker carries out what it says.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

FETCH_MAX_RECORDS = 1000
PAUSED_CHECK_S = 0.1

Step = Literal["pause", "resume", "hold", "flow"]


class Flow:
    """Records in flight (taken, not yet acknowledged) against the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.resume_at = limit // 2
        self.in_flight = 0
        self.paused = False
        self.room = asyncio.Event()  # set when in-flight records fall to the resume mark

    def taken(self) -> None:
        """A record was fetched."""
        self.in_flight += 1

    def finished(self) -> None:
        """A record's result or dead letter was acknowledged."""
        self.in_flight -= 1
        if self.in_flight <= self.resume_at:
            self.room.set()

    def decide(self) -> Step:
        """pause at the limit, resume at half of it, hold (pause what a rebalance added) while paused."""
        if not self.paused and self.in_flight >= self.limit:
            return "pause"
        if self.paused and self.in_flight <= self.resume_at:
            return "resume"
        return "hold" if self.paused else "flow"

    def fetch_size(self) -> int:
        """How many records the next fetch may bring."""
        return max(1, min(FETCH_MAX_RECORDS, self.limit - self.in_flight))

    async def wait_for_room(self, timeout_s: float = PAUSED_CHECK_S) -> None:
        """While paused, wait for acknowledgements (at most `timeout_s`) instead of polling."""
        self.room.clear()
        if self.in_flight > self.resume_at:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), timeout_s)
