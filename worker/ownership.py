"""A consumer group member's side of the worker: commits, rebalances, and (exactly once) each partition's producer.

`Ownership` is mixed into `worker.runner.Worker`; it is the consumer's rebalance listener
(`transport.seams.Rebalance`: `on_revoked`, `on_assigned`) and the transactional committer's
`Barrier` (`hold`, `release`, `idle`). Before a partition goes, its in-flight records are
finished and committed; exactly once, a partition that comes starts its producer (fencing the
last owner) and is read again from its committed offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiokafka import TopicPartition

from schemas.errors import FatalError
from transport.seams import GroupConsumer
from worker.committer import Commits
from worker.observe import Observer
from worker.offsets import OffsetTracker, shown
from worker.pauses import Pauses
from worker.scoring import ScoreLoop
from worker.settings import Settings
from worker.transactions import PartitionTransactions

log = structlog.get_logger("streamscore.worker")

WAIT_POLL_S = 0.01


class Ownership:
    """The partitions a worker owns in its consumer group: what it does when they go and come."""

    settings: Settings
    clock: Callable[[], float]
    observer: Observer
    tracker: OffsetTracker[TopicPartition]
    pauses: Pauses
    scoring: ScoreLoop
    consumer: GroupConsumer | None
    committer: Commits | None
    transactions: PartitionTransactions | None
    stopping: bool
    _floors: dict[TopicPartition, int]
    fatal: FatalError | None

    def _fail(self, error: FatalError) -> None:
        raise NotImplementedError  # worker.runner.Worker's

    def _abandoning(self) -> bool:
        """Exactly once after a fatal error: what is in flight is not waited for, nor committed. An open
        transaction may never complete (a refused write leaves it unusable); aborted at close, its
        records are read again by whoever holds the partition next, and none of its outcomes is seen."""
        return self.fatal is not None and self.transactions is not None

    def _grace(self) -> float:
        """How long to wait for what is in flight before a stop or a revocation."""
        return 0.0 if self._abandoning() else self.settings.shutdown_grace_s

    async def commit_loop(self) -> None:
        """Commit acknowledged offsets every commit interval."""
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            if self.committer is not None:
                await self.committer.commit()

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions go to another worker: finish their in-flight records, commit them."""
        deadline = self.clock() + self._grace()
        self.scoring.wake.set()
        partitions = set(revoked)
        await self._wait_until(lambda: self.tracker.in_flight(partitions) == 0, deadline)
        if self.committer is not None and not self._abandoning():
            await self.committer.commit(partitions)
        if self.transactions is not None:
            await self.transactions.release(partitions)
        self.tracker.forget(partitions)
        self.pauses.forget(partitions)
        for partition in partitions:
            self._floors.pop(partition, None)
        if revoked:
            log.info("partitions_revoked", partitions=sorted(shown(tp) for tp in revoked))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Exactly once: start the producers of the partitions newly assigned, fencing their last owners."""
        self.observer.assigned(assigned)
        if self.transactions is not None and assigned:
            await self._take_on(assigned)

    async def restart(self, partitions: set[TopicPartition]) -> None:
        """Exactly once: a partition whose producer was dropped (fenced, or broken) and that is still ours
        gets a new producer and is read again from its committed offset (worker/committer.py)."""
        assert self.consumer is not None, "the consumer starts in startup()"
        still = partitions & self.consumer.assignment()
        if still:
            log.info("partitions_restarted", partitions=sorted(shown(tp) for tp in still))
            await self._take_on(still)
        else:
            self.pauses.release(partitions)

    async def _take_on(self, partitions: set[TopicPartition]) -> None:
        """Start the partitions' producers (their `init_transactions` fences the last owner and waits
        until its last transaction is complete), then read each from its committed offset, now stable."""
        assert self.transactions is not None and self.consumer is not None
        self.pauses.hold(partitions)
        taken = True
        try:
            await self.transactions.assign(partitions)
            for partition in sorted(partitions):
                await self.consumer.seek_to_committed(partition)
                self._floors[partition] = await self.consumer.position(partition)
        except FatalError as error:  # an ACL missing: aiokafka's rebalance listener would only log it
            taken = False  # the partitions stay paused: nothing of them is read without their producer
            log.critical("partitions_not_taken_on", partitions=sorted(shown(tp) for tp in partitions), error=str(error))
            self._fail(error)
        finally:
            if taken:
                self.pauses.release(partitions)

    def hold(self, partitions: set[TopicPartition]) -> None:
        """A transactional commit: stop taking these partitions' records (worker/committer.py)."""
        self.pauses.hold(partitions)

    def release(self, partitions: set[TopicPartition]) -> None:
        """Take these partitions' records again."""
        self.pauses.release(partitions)

    async def idle(self, partitions: set[TopicPartition]) -> bool:
        """Wait until none of these partitions' records is in flight; False if the worker stops first
        and its grace period passes."""
        started, grace = self.clock(), self.settings.shutdown_grace_s

        def done() -> bool:
            return self.tracker.in_flight(partitions) == 0 or (self.stopping and self.clock() - started > grace)

        await self._wait_until(done, float("inf"))
        return self.tracker.in_flight(partitions) == 0

    async def _wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        while not condition():
            if self.clock() >= deadline:
                return False
            self.scoring.wake.set()
            await asyncio.sleep(WAIT_POLL_S)
        return True
