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


class Commits(Protocol):
    """Makes the broker remember what is done: offsets, or (share groups) each record's acknowledgement."""

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None: ...


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
    async def restart(self, partitions: set[TopicPartition]) -> None: ...


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
        restart_after_s: float = 10.0,
    ) -> None:
        self.consumer = consumer
        self.tracker = tracker
        self.transactions = transactions
        self.barrier = barrier
        self.policy = RetryPolicy()
        self._aborts: dict[TopicPartition, int] = {}  # aborts in a row
        self.restart_after_s = restart_after_s
        self._restarts: set[asyncio.Task[None]] = set()

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
        except ProducerFenced as error:
            await self._give_up(partition, repr(error))
            return False
        except KafkaError as error:
            await self._abort(partition, repr(error))
            return False
        except Exception as error:  # aiokafka's producer in its fatal state raises AssertionError
            await self._give_up(partition, repr(error))
            return False
        self.tracker.mark_committed({partition: offset})
        self._aborts.pop(partition, None)
        return True

    async def _give_up(self, partition: TopicPartition, why: str) -> None:
        """The partition's producer cannot go on: fenced by another worker's (the partition moved while this
        one was cut off), or broken (its transaction timed out through a broker outage). Drop it and keep the
        partition held; if it is still this worker's after a session timeout (no new owner came), start a new
        producer for it and read it again from its committed offset (`Barrier.restart`)."""
        log.warning(
            "partition_fenced",
            partition=shown(partition),
            reason=why,
            restart_in_s=self.restart_after_s,
            hint="another worker took it over, or its transaction timed out; if it is still assigned here "
            "after the session timeout, it starts again from its committed offset",
        )
        await self.transactions.release([partition])
        self.tracker.forget([partition])
        self._aborts.pop(partition, None)
        asyncio.get_running_loop().call_later(self.restart_after_s, self._restart, partition)

    def _restart(self, partition: TopicPartition) -> None:
        task = asyncio.get_running_loop().create_task(self.barrier.restart({partition}))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _abort(self, partition: TopicPartition, why: str) -> None:
        """Abort the partition's transaction, read it again from its committed offset, after a backoff."""
        if not await self.transactions.abort(partition):
            await self._give_up(partition, f"{why}; its producer cannot abort")
            return
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
