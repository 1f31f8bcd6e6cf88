"""Exactly once on the in-memory fakes: each partition's results, dead letters and offset commit together."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import RequestTimedOutError

from schemas.codec import decode_response
from tests.fakes import FakeClients, FakeCluster, FakeTransactionalProducer
from tests.test_runner import DLT, IN, OUT, committed, running, send_requests, settings_for, until
from tests.test_runner import model_root as model_root  # the fixture: two versions of the MLP
from worker.runner import Worker


@pytest.fixture
def cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.create(IN, 2)
    return cluster


def exactly_once(model_root: Path, **changes: object) -> object:
    return settings_for(model_root, guarantee="exactly-once", **changes)


def result_ids(cluster: FakeCluster) -> Counter[str]:
    return Counter(decode_response(r.value).id for r in cluster.records(OUT))  # type: ignore[arg-type]


async def test_results_dead_letters_and_offsets_are_committed_together(model_root: Path, cluster: FakeCluster) -> None:
    """A burst run: every result and the dead letter appear only through committed transactions, each
    once, and the group's offsets are those of the transactions (the consumer commits none itself)."""
    ids = send_requests(cluster, 40)
    cluster.append(IN, b"not json", key=b"bad", partition=1)
    clients = FakeClients(cluster)

    assert 0 == await asyncio.wait_for(Worker(exactly_once(model_root, burst=True), clients=clients).run(), 30)

    assert Counter(ids) == result_ids(cluster)
    assert [b"bad"] == [r.key for r in cluster.records(DLT)]
    assert {0: 20, 1: 21} == committed(cluster)
    assert [] == cluster.commits  # no plain consumer commit: offsets went in the transactions
    assert {f"streamscore-{IN}-0", f"streamscore-{IN}-1"} == set(clients.transactional)
    assert all(p.commits >= 1 for p in clients.transactional.values())


async def test_a_send_that_fails_in_a_transaction_aborts_it_and_the_partition_is_read_again(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Step by step: a result's send times out inside partition 0's transaction; that transaction is
    aborted (its results never visible), partition 0 is read again from its committed offset, and in
    the end every id has exactly one visible result."""
    ids = send_requests(cluster, 20)
    clients = FakeClients(cluster)
    clients.producer_script.append((OUT, RequestTimedOutError(), 1, False))

    assert 0 == await asyncio.wait_for(Worker(exactly_once(model_root, burst=True), clients=clients).run(), 30)

    assert Counter(ids) == result_ids(cluster)
    assert cluster.aborted, "the failed transaction was aborted"
    assert {0: 10, 1: 10} == committed(cluster)


async def test_a_rebalance_commits_the_revoked_transactions_and_fences_the_last_owner(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Step by step: records wait in a batch when a rebalance comes; the revoked partitions' transactions
    commit before they go; taking partition 1 again starts a new producer for it, which bumps its
    epoch (fencing whoever held it); later records flow through it, each once."""
    send_requests(cluster, 10)
    clients = FakeClients(cluster)
    worker = Worker(exactly_once(model_root, max_batch_delay_ms=300.0, commit_interval_ms=60_000.0), clients=clients)
    async with running(worker, clients) as code:
        await until(lambda: worker.in_flight == 10)
        consumer = clients.made_consumer
        assert consumer is not None
        epoch = cluster.epochs[f"streamscore-{IN}-1"]

        await consumer.rebalance(keep={1})

        assert {0: 5, 1: 5} == committed(cluster)
        assert 10 == sum(result_ids(cluster).values())
        assert epoch + 1 == cluster.epochs[f"streamscore-{IN}-1"]
        send_requests(cluster, 4, prefix="late")
        await until(lambda: worker.observer.counts["results"] == 12)
    assert [0] == code  # the stop commits partition 1's last transaction
    assert {0: 5, 1: 7} == committed(cluster)
    assert 12 == sum(result_ids(cluster).values())
    assert {1} == set(result_ids(cluster).values())


async def test_a_zombie_whose_producer_was_fenced_commits_nothing(model_root: Path, cluster: FakeCluster) -> None:
    """Step by step: while a worker holds results of partition 0 in its open transaction, another
    worker's producer for partition 0 starts (as after a rebalance the zombie missed); the zombie's
    commit is fenced, so none of its results of partition 0 become visible, and it stops taking them."""
    send_requests(cluster, 10)
    clients = FakeClients(cluster)
    worker = Worker(exactly_once(model_root, commit_interval_ms=60_000.0), clients=clients)
    async with running(worker, clients):
        await until(lambda: worker.in_flight == 0 and 10 == worker.observer.counts["results"])
        usurper = FakeClients(cluster).transactional_producer(worker.settings, {}, f"streamscore-{IN}-0")
        await usurper.start()
        assert worker.committer is not None

        await worker.committer.commit()

        assert 0 not in committed(cluster)
        assert all(int(i[1:]) % 2 == 1 for i in result_ids(cluster))  # only partition 1's results
        assert TopicPartition(IN, 0) in (clients.made_consumer.paused() if clients.made_consumer else set())


class LateCommitClients(FakeClients):
    """The last owner's transaction of partition 0 completes while the new producer's init_transactions
    waits for it: the group's offset moves from 0 to `moved_to` after the consumer read its position."""

    def __init__(self, cluster: FakeCluster, group: str, moved_to: int) -> None:
        super().__init__(cluster)
        self.group, self.moved_to = group, moved_to

    def transactional_producer(self, settings: Any, limits: Any, transactional_id: str) -> FakeTransactionalProducer:
        producer = super().transactional_producer(settings, limits, transactional_id)
        start, cluster, group, moved_to = producer.start, self.cluster, self.group, self.moved_to

        async def start_after_the_last_owner() -> None:
            if transactional_id.endswith("-0"):
                cluster.committed[(group, TopicPartition(IN, 0))] = moved_to
            await start()

        producer.start = start_after_the_last_owner  # type: ignore[method-assign]
        return producer


async def test_a_partition_taken_over_is_read_from_what_its_last_owner_committed(
    model_root: Path, cluster: FakeCluster
) -> None:
    """The consumer positions a new partition at the offset committed so far; the last owner's
    transaction, committing offset 6 with its results, completes only while the new producer starts.
    Read from 0, records 0..5 would be scored twice; the worker reads it again from 6 once its
    producer has started, so partition 0's results are those of offsets 6..9 alone."""
    ids = send_requests(cluster, 20)  # partition 0 takes the even ids r0, r2, ..., partition 1 the odd
    clients = LateCommitClients(cluster, "streamscore", moved_to=6)

    assert 0 == await asyncio.wait_for(Worker(exactly_once(model_root, burst=True), clients=clients).run(), 30)

    partition_0 = [i for i in ids if int(i[1:]) % 2 == 0]
    assert Counter([*partition_0[6:], *(i for i in ids if int(i[1:]) % 2 == 1)]) == result_ids(cluster)
    assert {0: 10, 1: 10} == committed(cluster)


async def test_a_producer_that_cannot_abort_is_replaced_and_its_partition_read_again(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Step by step: a send fails inside partition 0's transaction and the abort then raises as aiokafka
    does for a producer in its fatal state (AssertionError). The partition is given up and held; a
    session timeout later it is still this worker's, so a new producer starts for it and it is read again
    from its committed offset: every id has exactly one visible result, and the worker never stops."""
    ids = send_requests(cluster, 20)
    clients = FakeClients(cluster)
    clients.producer_script.append((OUT, RequestTimedOutError(), 1, False))
    settings = exactly_once(model_root, burst=True, session_timeout_ms=1000)
    worker = Worker(settings, clients=clients)  # type: ignore[arg-type]
    broken = f"streamscore-{IN}-0"

    async def fatal_abort() -> None:
        raise AssertionError("Invalid state transition TransactionState.FATAL_ERROR -> ABORTING_TRANSACTION")

    async def break_the_first_producer() -> None:
        await until(lambda: broken in clients.transactional)
        clients.transactional[broken].abort_transaction = fatal_abort  # type: ignore[method-assign]

    code, _ = await asyncio.wait_for(asyncio.gather(worker.run(), break_the_first_producer()), 30)

    assert 0 == code
    assert Counter(ids) == result_ids(cluster)
    assert {0: 10, 1: 10} == committed(cluster)
    assert 2 == cluster.epochs[broken] + 1  # a second producer started for partition 0
