"""Share-group consumption (worker/share.py, worker/sharing.py) on an in-memory share group."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from demo.models import install_model, make_mlp
from schemas import headers as h
from schemas.codec import encode_request
from schemas.errors import (
    ConfigError,
    DeliveryLimitError,
    InferenceTimeout,
    ModelUnavailableError,
    NotAuthorizedError,
    ValidationError,
)
from schemas.records import InputRecord
from tests.fakes import FakeClients, FakeCluster, FakeShareGroup, FakeShareSource
from tests.harness import until
from transport.connection import Connection
from worker.outcomes import DeadLetter
from worker.settings import Settings
from worker.share import LOCK_SHARE, Ack, Deliveries, GroupRules, client_options
from worker.sharing import ShareWorker, over_limit, redeliverable

IN, OUT, DLT = "requests", "results", "requests.DLT"


def record(offset: int, delivery_count: int | None = 1, partition: int = 0) -> InputRecord:
    return InputRecord(IN, partition, offset, b"{}", delivery_count=delivery_count)


# ---------------------------------------------------------------------- the account of one poll


def test_a_poll_is_complete_once_every_record_is_settled() -> None:
    """The next poll waits for the last one: complete only when each of its records is settled."""
    deliveries = Deliveries()
    deliveries.take([record(0), record(1)], now=0.0, lock_ms=30_000)
    assert deliveries.settle(record(0), Ack.ACCEPT)
    assert not deliveries.complete
    assert deliveries.settle(record(1), Ack.RELEASE)
    assert deliveries.complete
    assert [(record(0), Ack.ACCEPT), (record(1), Ack.RELEASE)] == deliveries.drain()
    assert [] == deliveries.drain()


def test_a_record_is_settled_once() -> None:
    """A second outcome of the same record (a duplicate after its release) is not acknowledged again."""
    deliveries = Deliveries()
    deliveries.take([record(0)], now=0.0, lock_ms=30_000)
    assert deliveries.settle(record(0), Ack.RELEASE)
    assert not deliveries.settle(record(0), Ack.ACCEPT)
    assert [(record(0), Ack.RELEASE)] == deliveries.drain()


def test_records_past_half_the_lock_are_released() -> None:
    """What is still pending at half the lock goes back to the group; nothing before."""
    deliveries = Deliveries()
    deliveries.take([record(0), record(1)], now=100.0, lock_ms=10_000)
    deliveries.settle(record(0), Ack.ACCEPT)
    deadline = 100.0 + 10.0 * LOCK_SHARE
    assert [] == deliveries.overdue(deadline - 0.01)
    assert [record(1)] == deliveries.overdue(deadline)
    assert deliveries.complete
    assert [(record(0), Ack.ACCEPT), (record(1), Ack.RELEASE)] == deliveries.drain()


def test_shutting_down_releases_what_is_pending() -> None:
    """At shutdown the records not settled go back to the group at once, not when their lock expires."""
    deliveries = Deliveries()
    deliveries.take([record(0), record(1)], now=0.0, lock_ms=30_000)
    deliveries.settle(record(0), Ack.ACCEPT)
    deliveries.release_all()
    assert [(record(0), Ack.ACCEPT), (record(1), Ack.RELEASE)] == deliveries.drain()


# ---------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("error", "count", "limit", "expected"),
    [
        (ModelUnavailableError("version 9 not here"), 1, 5, True),
        (InferenceTimeout("too slow"), 4, 5, True),
        (InferenceTimeout("too slow"), 5, 5, False),  # the last delivery the group allows: dead-letter it
        (ValidationError("bad shape"), 1, 5, False),  # will never pass
    ],
)
def test_only_a_failure_that_may_pass_is_released(error: Exception, count: int, limit: int, expected: bool) -> None:
    """Released for redelivery: an error that may pass, with deliveries left; else dead-lettered."""
    assert expected == redeliverable(DeadLetter(record(0, count), error, "r0"), limit)


def test_a_shadow_or_final_letter_is_never_released() -> None:
    """A shadow's failure does not hold the record; a letter marked final goes to the dead-letter topic."""
    error = ModelUnavailableError("not here")
    assert not redeliverable(DeadLetter(record(0), error, "r0", shadow=True), 5)
    assert not redeliverable(DeadLetter(record(0), error, "r0", final=True), 5)


@pytest.mark.parametrize(("count", "limit", "expected"), [(1, 5, False), (4, 5, False), (5, 5, True), (1, 1, False)])
def test_the_last_delivery_of_a_redelivered_record_is_over_the_limit(count: int, limit: int, expected: bool) -> None:
    """A record delivered before and now at the group's limit is dead-lettered unscored; a first delivery never."""
    assert expected == over_limit(record(0, count), limit)


def test_share_consumption_refuses_what_it_cannot_keep() -> None:
    """Exactly once and retry topics cannot be had with a share group: a clear error at start, naming the fix."""
    with pytest.raises(ConfigError, match="at least once"):
        Settings(consumption="share", guarantee="exactly-once")
    with pytest.raises(ConfigError, match="STREAMSCORE_RETRY_TOPIC_DELAYS_MS"):
        Settings(consumption="share", retry_topic_delays_ms=("1000",))
    with pytest.raises(ConfigError, match="group or share"):
        Settings(consumption="queue")


def test_client_options_carry_the_connection() -> None:
    """librdkafka's names for the connection settings; acknowledgements explicit."""
    connection = Connection(
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="worker",
        sasl_password="secret",
        ssl_cafile="/ca.pem",
    )
    expected = {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SASL_SSL",
        "group.id": "g",
        "client.id": "c",
        "share.acknowledgement.mode": "explicit",
        "max.poll.records": 8,
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "worker",
        "sasl.password": "secret",
        "ssl.ca.location": "/ca.pem",
    }
    assert expected == client_options(connection, "g", "c", 8)


# ---------------------------------------------------------------------- the worker on a fake share group


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    install_model(tmp_path, "mlp", "1", make_mlp)
    return tmp_path


def send(cluster: FakeCluster, count: int, headers: tuple[tuple[str, bytes], ...] = ()) -> list[str]:
    rows = np.random.default_rng(0).random((count, 8), dtype=np.float32)
    ids = [f"r{i}" for i in range(count)]
    for i, request_id in enumerate(ids):
        value = encode_request({"x": rows[i : i + 1]}, id=request_id)
        cluster.append(IN, value, key=request_id.encode(), headers=headers, partition=i % 2)
    return ids


def share_settings(model_root: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "input_topic": IN,
        "results_topic": OUT,
        "control_topic": "",
        "model_root": str(model_root),
        "model_name": "mlp",
        "max_batch_delay_ms": 1.0,
        "consumption": "share",
        "worker_id": "w1",
        "shutdown_grace_s": 5.0,
        "log_level": "warning",
        **changes,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def run_share_worker(model_root: Path, cluster: FakeCluster, group: FakeShareGroup, **changes: object) -> int:
    worker = ShareWorker(share_settings(model_root, **changes), clients=FakeClients(cluster), share_source=group.source)
    return await asyncio.wait_for(worker.run(), 60)


@pytest.fixture
def cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.create(IN, 2)
    return cluster


async def test_every_record_is_accepted_once_after_its_result(
    model_root: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each record: one result carrying its delivery count, then one ACCEPT; nothing released or archived."""
    monkeypatch.setattr("worker.sharing.BURST_IDLE_S", 0.2)
    ids = send(cluster, 40)
    group = FakeShareGroup(cluster, IN)
    assert 0 == await run_share_worker(model_root, cluster, group, burst=True)
    results = cluster.records(OUT)
    assert sorted(ids) == sorted(r.key.decode() for r in results if r.key)
    assert {b"1"} == {dict(r.headers)[h.DELIVERY_COUNT] for r in results}
    assert {(r.partition, r.offset): [Ack.ACCEPT] for r in cluster.records(IN)} == dict(group.acknowledged)
    assert [] == group.archived


async def test_a_bad_record_is_dead_lettered_once_and_accepted(
    model_root: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that cannot be scored: one dead letter with its delivery count, accepted after it (never rejected)."""
    monkeypatch.setattr("worker.sharing.BURST_IDLE_S", 0.2)
    bad = cluster.append(IN, b"not json", key=b"bad", partition=0)
    group = FakeShareGroup(cluster, IN)
    assert 0 == await run_share_worker(model_root, cluster, group, burst=True)
    [letter] = cluster.records(DLT)
    assert (b"not json", b"decode", b"1") == (
        letter.value,
        dict(letter.headers)[h.DLT_STAGE],
        dict(letter.headers)[h.DELIVERY_COUNT],
    )
    assert {(bad.partition, bad.offset): [Ack.ACCEPT]} == dict(group.acknowledged)


async def test_a_version_not_here_yet_is_released_until_the_limit_then_dead_lettered(
    model_root: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record asking for a version no worker has: released for redelivery (delivery 1 to 3), then at the
    group's limit (3) dead-lettered as DeliveryLimitError with its count, and accepted; never archived."""
    monkeypatch.setattr("worker.sharing.BURST_IDLE_S", 0.3)
    [request_id] = send(cluster, 1, headers=((h.MODEL_VERSION, b"9"),))
    group = FakeShareGroup(cluster, IN, rules=GroupRules(delivery_limit=3))
    assert 0 == await run_share_worker(model_root, cluster, group, burst=True)
    [letter] = cluster.records(DLT)
    headers = dict(letter.headers)
    assert (request_id.encode(), DeliveryLimitError.__name__.encode(), b"consume", b"3") == (
        letter.key,
        headers[h.DLT_ERROR],
        headers[h.DLT_STAGE],
        headers[h.DELIVERY_COUNT],
    )
    assert {(0, 0): [Ack.RELEASE, Ack.RELEASE, Ack.ACCEPT]} == dict(group.acknowledged)
    assert ([], []) == (group.archived, cluster.records(OUT))


class ManualClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_records_not_settled_within_half_the_lock_are_released_then_scored_again(
    model_root: Path, cluster: FakeCluster
) -> None:
    """Step by step:
    1. A poll acquires 10 records; their results are sent, but the broker holds the acknowledgements.
    2. Half the group's lock passes: the 10 are released to the group (not left to time out).
    3. The acknowledgements come: none of the 10 is acknowledged a second time.
    4. The group delivers them again (delivery count 2); they are scored and accepted.
    Each record: RELEASE, then ACCEPT; two results each, with delivery counts 1 and 2; none archived."""
    ids = send(cluster, 10)
    clients, clock = FakeClients(cluster), ManualClock()
    clients.hold_acks = True
    group = FakeShareGroup(cluster, IN, rules=GroupRules(lock_ms=10_000))
    settings = share_settings(model_root, max_batch_rows=10)  # a full batch closes: the clock stands still
    worker = ShareWorker(settings, clients=clients, share_source=group.source, clock=clock)
    running = asyncio.create_task(worker.run())
    try:
        await until(lambda: clients.made_producer is not None and len(clients.made_producer._held or []) == 10)
        clock.now += 10.0 * LOCK_SHARE
        await until(lambda: len(group.acknowledged) == 10)
        assert clients.made_producer is not None
        clients.made_producer.release()
        await until(lambda: all(len(acks) == 2 for acks in group.acknowledged.values()))
    finally:
        worker.request_stop()
        assert 0 == await asyncio.wait_for(running, 30)
    assert {where: [Ack.RELEASE, Ack.ACCEPT] for where in group.acknowledged} == dict(group.acknowledged)
    counts = sorted((r.key.decode(), dict(r.headers)[h.DELIVERY_COUNT]) for r in cluster.records(OUT) if r.key)
    assert sorted((i, n) for i in ids for n in (b"1", b"2")) == counts
    assert [] == group.archived


async def test_a_refused_poll_stops_the_worker_with_exit_2(model_root: Path, cluster: FakeCluster) -> None:
    """A poll the broker refuses for want of an ACL stops the worker (exit 2, as the group worker),
    rather than polling and logging forever while it reports ready."""
    group = FakeShareGroup(cluster, IN)

    def refusing(settings: Settings) -> FakeShareSource:
        source = group.source(settings)

        async def poll(timeout_s: float) -> list[InputRecord]:
            raise NotAuthorizedError("the broker refused this worker's share consumer: grant READ on group 'g'")

        source.poll = poll  # type: ignore[method-assign]
        return source

    worker = ShareWorker(share_settings(model_root), clients=FakeClients(cluster), share_source=refusing)
    assert 2 == await asyncio.wait_for(worker.run(), 30)


async def test_no_poll_while_the_records_in_flight_are_at_the_limit(model_root: Path, cluster: FakeCluster) -> None:
    """Records still being scored after their release hold their room: the worker does not poll again
    while in flight is at the limit (here the broker holds every acknowledgement, and the limit is 10)."""
    send(cluster, 30)
    clients, clock = FakeClients(cluster), ManualClock()
    clients.hold_acks = True
    group = FakeShareGroup(cluster, IN, rules=GroupRules(lock_ms=10_000), max_records=10)
    settings = share_settings(model_root, max_batch_rows=10, max_in_flight=10)
    worker = ShareWorker(settings, clients=clients, share_source=group.source, clock=clock)
    running = asyncio.create_task(worker.run())
    try:
        await until(lambda: clients.made_producer is not None and len(clients.made_producer._held or []) == 10)
        clock.now += 10.0 * LOCK_SHARE  # the 10 are released, but their outcomes are still on their way
        await until(lambda: len(group.acknowledged) == 10)
        await asyncio.sleep(0.3)
        assert 10 == worker.in_flight
        assert {} == group.acquired  # no poll since the release: a poll would have acquired 10 again
    finally:
        assert clients.made_producer is not None
        clients.made_producer.release()
        worker.request_stop()
        await asyncio.wait_for(running, 30)
