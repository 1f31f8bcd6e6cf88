"""Which offsets may be committed: only those whose every predecessor is acknowledged."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from aiokafka import TopicPartition

from schemas.records import Record

P = TypeVar("P", bound=Hashable)


def partition_of(record: Record) -> TopicPartition:
    """The topic and partition a record was read from (the tracker's key)."""
    return TopicPartition(record.topic, record.partition)


def shown(partition: TopicPartition) -> str:
    """`topic[partition]`, as logs show it."""
    return f"{partition.topic}[{partition.partition}]"


class _Partition:
    __slots__ = ("committed", "done", "failed", "next", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # offsets taken, in the order fetched (ascending)
        self.done: set[int] = set()  # finished offsets still behind an unfinished one
        self.next: int | None = None  # one past the last offset of the finished run
        self.committed: int | None = None  # the offset last handed out by `committable`
        self.failed: int | None = None  # the lowest offset whose outcome was lost (exactly-once)


class OffsetTracker(Generic[P]):
    """Per partition: offsets taken from the consumer and which of them are finished.

    `committable()` gives, for each partition, the next offset to commit: one past the
    longest run of finished offsets from the oldest one taken. A finished offset after an
    unfinished one waits: committing it would lose the unfinished one on a restart.
    """

    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}

    def take(self, partition: P, offset: int) -> None:
        """An offset was fetched and is now in flight. Offsets arrive in ascending order."""
        state = self._partitions.setdefault(partition, _Partition())
        floor = state.pending[-1] + 1 if state.pending else state.next
        if floor is not None and offset < floor:
            raise ValueError(f"offset {offset} of {partition} taken again, or out of order")
        state.pending.append(offset)

    def finish(self, partition: P, offset: int) -> None:
        """The result or dead letter of this offset is acknowledged by the broker."""
        state = self._partitions.get(partition)
        if state is None:  # the partition was revoked and forgotten meanwhile
            return
        state.done.add(offset)
        while state.pending and state.pending[0] in state.done:
            finished = state.pending.popleft()
            state.done.discard(finished)
            state.next = finished + 1

    def fail(self, partition: P, offset: int) -> None:
        """The outcome of this offset was lost (its transaction cannot commit): no longer in flight,
        and nothing at or after it may be committed until the partition is read again from its
        committed offset (`forget`)."""
        state = self._partitions.get(partition)
        if state is None:
            return
        state.failed = offset if state.failed is None else min(state.failed, offset)
        self.finish(partition, offset)

    def failed(self, partition: P) -> bool:
        """Whether some outcome of `partition` was lost since it was last read from its committed offset."""
        state = self._partitions.get(partition)
        return state is not None and state.failed is not None

    def any_failed(self) -> bool:
        """Whether some partition lost an outcome and waits to be read again."""
        return any(state.failed is not None for state in self._partitions.values())

    def committable(self) -> dict[P, int]:
        """Offsets to commit now: for each partition whose finished run grew since last asked
        (never past an offset whose outcome was lost)."""
        ready: dict[P, int] = {}
        for partition, state in self._partitions.items():
            upto = state.next if state.failed is None or state.next is None else min(state.next, state.failed)
            if upto is not None and upto != state.committed:
                ready[partition] = upto
        return ready

    def mark_committed(self, offsets: dict[P, int]) -> None:
        """The broker accepted the commit of these offsets."""
        for partition, offset in offsets.items():
            state = self._partitions.get(partition)
            if state is not None:
                state.committed = offset

    def in_flight(self, partitions: Iterable[P] | None = None) -> int:
        """How many offsets are taken and not finished (in `partitions`, or in all)."""
        keys = self._partitions.keys() if partitions is None else partitions
        return sum(
            len(self._partitions[p].pending) - len(self._partitions[p].done) for p in keys if p in self._partitions
        )

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop partitions that are no longer ours (after a rebalance)."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def partitions_with_work(self) -> set[P]:
        """The partitions with records taken since their last commit."""
        return {
            partition
            for partition, state in self._partitions.items()
            if state.pending or state.failed is not None or (state.next is not None and state.next != state.committed)
        }

    def partitions(self) -> list[P]:
        return list(self._partitions)
