"""The worker's loop on in-memory fakes: fetch, batch, score, send, commit, rebalance, switch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from demo.models import install_model, make_mlp
from schemas import headers as h
from schemas.codec import decode_response, encode_request
from schemas.control import DesiredState, encode_state
from tests.fakes import FakeClients, FakeCluster
from tests.harness import until
from worker.outcomes import Item, Outcome
from worker.runner import Worker
from worker.settings import Settings

IN, OUT, DLT, CONTROL = "requests", "results", "requests.DLT", "control"
PARTITIONS = 2


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two versions of the MLP (FP32 x [N, 8]): 1 and 2 give different probabilities."""
    root = tmp_path_factory.mktemp("models")
    install_model(root, "mlp", "1", make_mlp)
    install_model(root, "mlp", "2", make_mlp, scale=3.0)
    return root


@pytest.fixture
def cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.create(IN, PARTITIONS)
    return cluster


def settings_for(model_root: Path, **changes: object) -> Settings:
    """A worker on the fake topics, serving the MLP, without a control topic unless told."""
    values: dict[str, object] = {
        "input_topic": IN,
        "results_topic": OUT,
        "control_topic": "",
        "model_root": str(model_root),
        "model_name": "mlp",
        "max_batch_delay_ms": 1.0,
        "commit_interval_ms": 5.0,
        "worker_id": "w1",
        "shutdown_grace_s": 5.0,
        "log_level": "warning",
    }
    return Settings(**{**values, **changes})  # type: ignore[arg-type]


def send_requests(cluster: FakeCluster, count: int, prefix: str = "r") -> list[str]:
    """`count` one-row requests spread over the input partitions; their ids."""
    rows = np.random.default_rng(0).random((count, 8), dtype=np.float32)
    ids = [f"{prefix}{i}" for i in range(count)]
    for i, request_id in enumerate(ids):
        value = encode_request({"x": rows[i : i + 1]}, id=request_id)
        cluster.append(IN, value, key=request_id.encode(), partition=i % PARTITIONS)
    return ids


def committed(cluster: FakeCluster, group: str = "streamscore") -> dict[int, int]:
    return {tp.partition: offset for (g, tp), offset in cluster.committed.items() if g == group and tp.topic == IN}


async def run_burst(model_root: Path, cluster: FakeCluster, *failures: tuple[str, BaseException, bool]) -> FakeClients:
    """Run a burst-mode worker to its end; `failures`: (topic, error, raised at send) fail one send each."""
    clients = FakeClients(cluster)
    clients.producer_script.extend((topic, error, 1, at_send) for topic, error, at_send in failures)
    clients.exit_code = await asyncio.wait_for(Worker(settings_for(model_root, burst=True), clients=clients).run(), 30)
    return clients


@contextlib.asynccontextmanager
async def running(worker: Worker, clients: FakeClients) -> AsyncIterator[list[int]]:
    """Run `worker` for the block; then stop it (releasing held acks) and keep its exit code.

    The worker is stopped even when the block fails, so a failed test never leaves it running."""
    code: list[int] = []
    task = asyncio.create_task(worker.run())
    try:
        yield code
    finally:
        worker.request_stop()
        if clients.made_producer is not None:
            clients.made_producer.release()
        code.append(await asyncio.wait_for(task, 30))


async def test_burst_scores_every_record_and_commits_the_end(model_root: Path, cluster: FakeCluster) -> None:
    """In burst mode the worker scores every request, dead-letters the bad one, commits the ends and exits 0."""
    ids = send_requests(cluster, 40)
    cluster.append(IN, b"not json", key=b"bad", partition=1)
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster))

    assert 0 == await asyncio.wait_for(worker.run(), 30)

    assert sorted(ids) == sorted(decode_response(r.value).id for r in cluster.records(OUT))  # type: ignore[arg-type]
    [letter] = cluster.records(DLT)
    assert (b"bad", b"not json") == (letter.key, letter.value)
    assert {0: 20, 1: 21} == committed(cluster)


async def test_a_send_that_fails_then_succeeds_is_delivered_once(model_root: Path, cluster: FakeCluster) -> None:
    """A result whose first send times out is sent again: one result, no dead letter, its offset committed."""
    send_requests(cluster, 1)

    clients = await run_burst(model_root, cluster, (OUT, KafkaTimeoutError(), False))

    assert 0 == clients.exit_code
    assert [(OUT, b"r0"), (OUT, b"r0")] == clients.made_producer.attempts  # type: ignore[union-attr]
    assert ["r0"] == [decode_response(r.value).id for r in cluster.records(OUT)]  # type: ignore[arg-type]
    assert [] == cluster.records(DLT)
    assert {0: 1} == committed(cluster)


async def test_a_result_refused_for_good_is_dead_lettered(model_root: Path, cluster: FakeCluster) -> None:
    """A result the broker refuses (too large) becomes a produce-stage dead letter; the offset is committed."""
    send_requests(cluster, 1)

    clients = await run_burst(model_root, cluster, (OUT, MessageSizeTooLargeError(), True))

    assert 0 == clients.exit_code
    [letter] = cluster.records(DLT)
    assert b"produce" == dict(letter.headers)[h.DLT_STAGE]
    assert {0: 1} == committed(cluster)


async def test_a_dead_letter_that_cannot_be_written_stops_the_worker_uncommitted(
    model_root: Path, cluster: FakeCluster
) -> None:
    """When the dead-letter topic refuses for good, the worker exits 1 and commits nothing past the record."""
    cluster.append(IN, b"not json", key=b"bad", partition=0)

    clients = await run_burst(model_root, cluster, (DLT, MessageSizeTooLargeError(), True))

    assert 1 == clients.exit_code

    assert {} == committed(cluster)


async def test_a_batch_whose_scoring_raises_is_dead_lettered_and_the_worker_goes_on(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Scenario: scoring the first batch raises (as a bug of ours or a MemoryError would), later
    batches score. The first batch's records are dead-lettered at infer, the rest are scored,
    every offset is committed and the burst exits 0."""
    ids = send_requests(cluster, 20)
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster))
    real, calls = worker.scoring.score, []

    def score_raising_once(items: list[Item]) -> list[Outcome]:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("scoring broke")
        return real(items)

    worker.scoring.score = score_raising_once  # type: ignore[method-assign]

    assert 0 == await asyncio.wait_for(worker.run(), 30)

    letters = cluster.records(DLT)
    scored = [decode_response(r.value).id for r in cluster.records(OUT)]  # type: ignore[arg-type]
    assert calls[0] == len(letters)
    assert {b"infer"} == {dict(letter.headers)[h.DLT_STAGE] for letter in letters}
    assert sorted(ids) == sorted(scored + [letter.key.decode() for letter in letters])  # type: ignore[union-attr]
    assert {0: 10, 1: 10} == committed(cluster)


async def test_a_rebalance_mid_batch_finishes_and_commits_the_revoked_partition(
    model_root: Path, cluster: FakeCluster
) -> None:
    """A rebalance comes while records wait in a batch: they are scored, acknowledged and committed
    before the revocation returns; the worker keeps partition 1 and goes on from its committed offset."""
    send_requests(cluster, 10)
    clients = FakeClients(cluster)
    worker = Worker(settings_for(model_root, max_batch_delay_ms=300.0, commit_interval_ms=60_000.0), clients=clients)
    async with running(worker, clients) as code:
        await until(lambda: worker.in_flight == 10)  # all fetched, waiting for the batch delay
        assert [] == cluster.records(OUT)

        consumer = clients.made_consumer
        assert consumer is not None
        revoked = await consumer.rebalance(keep={1})

        assert {TopicPartition(IN, 0), TopicPartition(IN, 1)} == revoked
        assert {0: 5, 1: 5} == committed(cluster)
        assert 10 == len(cluster.records(OUT))
        send_requests(cluster, 4, prefix="late")
        await until(lambda: len(cluster.records(OUT)) == 12)
    assert [0] == code
    assert {0: 5, 1: 7} == committed(cluster)  # the late records of partition 0 belong to another member now


async def test_backpressure_pauses_at_the_limit_and_resumes_at_half(model_root: Path, cluster: FakeCluster) -> None:
    """With acknowledgements held, fetching pauses at max_in_flight; released, everything flows and is committed."""
    send_requests(cluster, 30)
    clients = FakeClients(cluster)
    clients.hold_acks = True
    worker = Worker(settings_for(model_root, max_in_flight=8), clients=clients)
    async with running(worker, clients) as code:
        await until(lambda: worker.flow.paused)
        producer, consumer = clients.made_producer, clients.made_consumer
        assert producer is not None and consumer is not None

        assert 8 == worker.in_flight
        assert consumer.assignment() == consumer.paused()
        producer.release()
        await until(lambda: len(cluster.records(OUT)) == 30)
        await until(lambda: not worker.flow.paused)  # nothing left to fetch: no pause can follow
        assert set() == consumer.paused()
    assert [0] == code
    assert {0: 15, 1: 15} == committed(cluster)


async def test_a_promotion_switches_versions_between_batches(model_root: Path, cluster: FakeCluster) -> None:
    """Requests before a promotion are scored by version 1, after it by version 2, each exactly once."""
    cluster.append(CONTROL, encode_state(DesiredState("mlp", current="1")), key=b"mlp")
    clients = FakeClients(cluster)
    worker = Worker(settings_for(model_root, control_topic=CONTROL), clients=clients)
    async with running(worker, clients) as code:
        before = send_requests(cluster, 6, prefix="a")
        await until(lambda: len(cluster.records(OUT)) == 6)

        cluster.append(CONTROL, encode_state(DesiredState("mlp", current="1").promote("2")), key=b"mlp")
        await until(lambda: worker.serving.switches == 1)
        after = send_requests(cluster, 6, prefix="b")
        await until(lambda: len(cluster.records(OUT)) == 12)
    assert [0] == code

    versions = {r.id: r.model_version for r in (decode_response(x.value) for x in cluster.records(OUT))}  # type: ignore[arg-type]
    assert {i: "1" for i in before} | {i: "2" for i in after} == versions


async def test_a_paused_worker_still_polls_now_and_then(model_root: Path, cluster: FakeCluster) -> None:
    """Paused with acknowledgements held, the worker keeps calling its consumer about once a second
    (so that the group does not take it for dead after max.poll.interval.ms), and takes nothing."""
    send_requests(cluster, 30)
    clients = FakeClients(cluster)
    clients.hold_acks = True
    skew = [0.0]
    worker = Worker(
        settings_for(model_root, max_in_flight=8), clients=clients, clock=lambda: time.monotonic() + skew[0]
    )
    async with running(worker, clients):
        await until(lambda: worker.flow.paused)
        consumer = clients.made_consumer
        assert consumer is not None
        before = consumer.fetches
        await asyncio.sleep(0.3)
        assert before == consumer.fetches  # within the second: no poll
        skew[0] += 2.0
        await until(lambda: consumer.fetches > before)
        assert 8 == worker.in_flight


async def test_a_worker_process_freezes_its_startup_heap_before_it_fetches(
    model_root: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`freeze_heap` (set by a worker process's entry) freezes once, after startup (model loaded, group
    joined) and before the first record is taken; a worker left as tests make it never freezes."""
    send_requests(cluster, 3)
    frozen: list[int] = []
    worker = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster))
    monkeypatch.setattr("worker.runner.freeze_heap", lambda: frozen.append(worker.observer.counts["results"]))
    worker.freeze_heap = True

    assert 0 == await asyncio.wait_for(worker.run(), 30)
    assert [0] == frozen and 3 == worker.observer.counts["results"]

    unfrozen = Worker(settings_for(model_root, burst=True), clients=FakeClients(cluster))
    assert 0 == await asyncio.wait_for(unfrozen.run(), 30)
    assert [0] == frozen
