"""Exactly once: the results, dead letters and input offsets of an input partition in one Kafka transaction.

aiokafka has no consumer-group fencing for transactions (KIP-447), so this uses the scheme Kafka
used before it: one transactional producer per input partition, its transactional id derived from
the group, the topic and the partition (`Settings.transactional_id`), the same on every worker.

- A worker that is assigned a partition starts its producer. `init_transactions` bumps the id's
  epoch: the producer of whichever worker held the partition before is fenced (its commit fails)
  and its open transaction is aborted by the broker.
- The outcomes of a partition's records go out through its producer, in a transaction begun with
  the first of them. `commit` adds the partition's offset to that transaction and commits: the
  results, dead letters and offset become visible to `read_committed` readers together, or never.
- A transaction's timeout is below the session timeout, so a stalled worker's transaction is
  aborted by the broker before its partitions can move to another worker.
- One producer per partition, and one coroutine at a time per producer (`_lock`): its transaction
  is never begun, committed or sent offsets to from two places at once.
- aiokafka may hand out a newly assigned partition's records before the rebalance listener has
  started its producer: `producer_for` waits until it is ready (at most `READY_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping

import structlog
from aiokafka import TopicPartition

from transport.seams import TransactionalProducer
from worker.clients import Clients, connect
from worker.offsets import shown
from worker.settings import Settings

log = structlog.get_logger("streamscore.worker")

READY_TIMEOUT_S = 60.0


class PartitionTransactions:
    """The transactional producers of the input partitions this worker holds."""

    def __init__(self, clients: Clients, settings: Settings, limits: Mapping[str, int]) -> None:
        self.clients = clients
        self.settings = settings
        self.limits = dict(limits)
        self._producers: dict[TopicPartition, TransactionalProducer] = {}
        self._open: set[TopicPartition] = set()  # partitions whose transaction has begun
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._ready: dict[TopicPartition, asyncio.Event] = {}  # set once the partition's producer has started

    def holds(self, partition: TopicPartition) -> bool:
        """Whether this worker has a producer for `partition`."""
        return partition in self._producers

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Start the producer of each partition newly assigned (fencing its last owner)."""
        for partition in sorted(set(partitions) - self._producers.keys()):
            transactional_id = self.settings.transactional_id(partition.topic, partition.partition)
            producer = self.clients.transactional_producer(self.settings, self.limits, transactional_id)
            try:
                await connect(producer.start, f"transactional producer {transactional_id}", self.settings)
            except BaseException:
                with contextlib.suppress(Exception):  # a producer that failed to start still holds a client
                    await producer.stop()
                raise
            self._producers[partition] = producer
            self._locks[partition] = asyncio.Lock()
            self._ready.setdefault(partition, asyncio.Event()).set()

    async def producer_for(self, partition: TopicPartition) -> TransactionalProducer:
        """The producer to send an outcome of `partition` with, its transaction begun (TimeoutError if it
        never starts: the send is lost, and the partition read again)."""
        ready = self._ready.setdefault(partition, asyncio.Event())
        if not ready.is_set():
            await asyncio.wait_for(ready.wait(), READY_TIMEOUT_S)
        async with self._locks[partition]:
            producer = self._producers[partition]
            if partition not in self._open:
                await producer.begin_transaction()
                self._open.add(partition)
            return producer

    async def commit(self, partition: TopicPartition, offset: int) -> None:
        """Commit the partition's transaction with its input offset `offset` (KafkaError if it cannot)."""
        async with self._locks[partition]:
            producer = self._producers[partition]
            if partition not in self._open:
                await producer.begin_transaction()
                self._open.add(partition)
            await producer.send_offsets_to_transaction({partition: offset}, self.settings.group_id)
            await producer.commit_transaction()
            self._open.discard(partition)

    async def abort(self, partition: TopicPartition) -> bool:
        """Abort the partition's open transaction, if any: none of its outcomes will be seen. False when
        the producer cannot go on (fenced, or in aiokafka's fatal state): start a new one."""
        if partition not in self._producers:
            return False
        async with self._locks[partition]:
            if partition not in self._open:
                return True
            self._open.discard(partition)
            try:
                await self._producers[partition].abort_transaction()
            except Exception as error:  # fenced, fatal, or the broker gone: the broker aborts it in time
                log.warning("transaction_not_aborted", partition=shown(partition), error=repr(error))
                return False
            return True

    async def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Abort what is open and stop the producers of partitions this worker gives up."""
        for partition in sorted(set(partitions) & self._producers.keys()):
            await self.abort(partition)
            producer = self._producers.pop(partition)
            del self._locks[partition]
            self._ready.pop(partition, None)
            try:
                await producer.stop()
            except (
                Exception
            ) as error:  # a producer in a fatal state may fail to stop cleanly: it is dropped all the same
                log.warning("transactional_producer_not_stopped", partition=shown(partition), error=repr(error))

    async def close(self) -> None:
        """Release every partition (at shutdown, after the last commit)."""
        await self.release(list(self._producers))
