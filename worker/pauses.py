"""Which assigned partitions the consumer fetches, and why not the others.

Three reasons pause a partition, and one place decides (`wanted`, pure):
- backpressure: the records in flight are over a bound (worker/flow.py): every partition;
- a transactional commit holds it until none of its records is in flight (worker/committer.py);
- a retry topic's next record is not due yet (worker/retrytopics.py): until it is.

`Pauses` keeps the holds and the due times and makes the consumer's paused set match. A paused
partition is still polled (the consumer returns nothing for it), so no pause costs a rebalance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import TopicPartition

from transport.seams import GroupConsumer


def wanted(
    assigned: set[TopicPartition],
    backpressure: bool,
    held: set[TopicPartition],
    waiting: dict[TopicPartition, int],
    now_ms: float,
) -> set[TopicPartition]:
    """The assigned partitions to pause."""
    if backpressure:
        return set(assigned)
    return assigned & (held | {tp for tp, due in waiting.items() if due > now_ms})


class Pauses:
    """The holds and due times of one consumer's partitions; `apply` pauses and resumes to match."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.consumer: GroupConsumer | None = None  # set once it has started
        self.backpressure = False
        self.held: set[TopicPartition] = set()
        self.waiting: dict[TopicPartition, int] = {}  # partition -> due (ms since the epoch)

    def now_ms(self) -> int:
        return int(self.wall() * 1000)

    def hold(self, partitions: set[TopicPartition]) -> None:
        self.held |= partitions
        self.apply()

    def release(self, partitions: set[TopicPartition]) -> None:
        self.held -= partitions
        self.apply()

    def wait(self, partition: TopicPartition, offset: int, due_ms: int) -> None:
        """Read `partition` again from `offset` once `due_ms` has come."""
        if self.consumer is None:
            return
        self.consumer.seek(partition, offset)
        self.waiting[partition] = due_ms
        self.apply()

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked: whatever held them is over."""
        self.held -= partitions
        for partition in partitions:
            self.waiting.pop(partition, None)

    def apply(self) -> None:
        """Pause what `wanted` says, resume the rest."""
        if self.consumer is None:
            return
        now_ms = self.now_ms()
        self.waiting = {tp: due for tp, due in self.waiting.items() if due > now_ms}
        chosen = wanted(self.consumer.assignment(), self.backpressure, self.held, self.waiting, now_ms)
        paused = self.consumer.paused()
        if chosen - paused:
            self.consumer.pause(*(chosen - paused))
        if paused - chosen:
            self.consumer.resume(*(paused - chosen))
