"""Committing input offsets: only those whose every predecessor is acknowledged (worker/offsets.py).

At least once, the consumer commits them (`Committer`); exactly once, each partition's transaction
carries its offset (`TransactionalCommitter`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from transport.seams import GroupConsumer
from worker.offsets import OffsetTracker, shown
from worker.policy import RetryPolicy
from worker.transactions import PartitionTransactions

log = structlog.get_logger("streamscore.worker")


class Committer:
    """Commits the acknowledged prefix of every assigned partition of the input topic."""

    def __init__(self, consumer: GroupConsumer, tracker: OffsetTracker[TopicPartition]) -> None:
        self.consumer = consumer
        self.tracker = tracker

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit what may be committed (on `partitions`, or on every assigned one)."""
        assigned = self.consumer.assignment()
        offsets = {
            partition: offset
            for partition, offset in self.tracker.committable().items()
            if partition in assigned and (partitions is None or partition in partitions)
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as error:
            log.warning(
                "commit_failed",
                error=repr(error),
                partitions=len(offsets),
                hint="the records after the last commit will be delivered again",
            )
            return
        self.tracker.mark_committed(offsets)


class Barrier(Protocol):
    """What a transactional commit needs of the worker: stop taking a partition's records, wait until
    none of them is in flight (False: the worker is stopping and gave up waiting), take them again."""

    def hold(self, partitions: set[TopicPartition]) -> None: ...
    def release(self, partitions: set[TopicPartition]) -> None: ...
    async def idle(self, partitions: set[TopicPartition]) -> bool: ...


class TransactionalCommitter:
    """Exactly once: commits each partition's transaction with its offset, at a barrier.

    A transaction may only be committed with the offset one past every record whose outcome it
    holds, or a record after the offset would be scored again after a restart, its first result
    already committed. So a commit first holds the partitions (fetching pauses for them), waits
    until none of their records is in flight, then commits each one's transaction with its
    offset, and takes them again. A partition with a lost outcome (a send that failed inside the
    transaction), or whose commit fails, is aborted instead and read again from its committed
    offset, after a backoff that grows while it keeps failing. Waiting for idle partitions means
    no outcome of an aborted transaction can still be on its way when the partition is read again.
    """

    def __init__(
        self,
        consumer: GroupConsumer,
        tracker: OffsetTracker[TopicPartition],
        transactions: PartitionTransactions,
        barrier: Barrier,
    ) -> None:
        self.consumer = consumer
        self.tracker = tracker
        self.transactions = transactions
        self.barrier = barrier
        self.policy = RetryPolicy()
        self._aborts: dict[TopicPartition, int] = {}  # aborts in a row

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit (or abort and rewind) the transactions of `partitions`, or of every assigned one."""
        assigned = self.consumer.assignment()
        targets = {p for p in assigned if self.transactions.holds(p) and (partitions is None or p in partitions)}
        targets &= self.tracker.partitions_with_work()
        if not targets:
            return
        self.barrier.hold(targets)
        kept: set[TopicPartition] = set()
        try:
            idle = await self.barrier.idle(targets)
            ordered = sorted(targets)  # each partition has its own producer: their commits go at once
            settled = await asyncio.gather(*(self._settle(p, idle) for p in ordered))
            kept = {p for p, done in zip(ordered, settled, strict=True) if not done}
        finally:
            self.barrier.release(targets - kept)

    async def _settle(self, partition: TopicPartition, idle: bool) -> bool:
        """Commit or abort one held partition; False when it stays held (an abort's backoff releases it)."""
        if not idle:  # stopping with records still in flight: nothing of the transaction becomes visible
            await self.transactions.abort(partition)
            return True
        if self.tracker.failed(partition):
            await self._abort(partition, "a send failed inside the transaction")
            return False
        offset = self.tracker.committable().get(partition)
        if offset is None:
            return True
        try:
            await self.transactions.commit(partition, offset)
        except ProducerFenced:
            await self._give_up(partition)
            return False
        except KafkaError as error:
            await self._abort(partition, repr(error))
            return False
        self.tracker.mark_committed({partition: offset})
        self._aborts.pop(partition, None)
        return True

    async def _give_up(self, partition: TopicPartition) -> None:
        """Another worker holds the partition now (its producer fenced ours): let it go, held until revoked."""
        log.warning(
            "partition_fenced",
            partition=shown(partition),
            hint="another worker took this partition over (this one was too slow or cut off); its group revokes it",
        )
        await self.transactions.release([partition])
        self.tracker.forget([partition])

    async def _abort(self, partition: TopicPartition, why: str) -> None:
        """Abort the partition's transaction, read it again from its committed offset, after a backoff."""
        await self.transactions.abort(partition)
        self.tracker.forget([partition])
        await self.consumer.seek_to_committed(partition)
        aborts = self._aborts[partition] = self._aborts.get(partition, 0) + 1
        delay = self.policy.delay(aborts, 0.5)
        log.warning(
            "transaction_aborted",
            partition=shown(partition),
            reason=why,
            aborts_in_a_row=aborts,
            retry_in_s=delay,
        )
        asyncio.get_running_loop().call_later(delay, self.barrier.release, {partition})
