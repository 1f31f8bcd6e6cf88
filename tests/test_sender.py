"""The sender on the in-memory producer: acknowledgements, resends, rerouted results, fatal dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from schemas import headers as h
from schemas.errors import FatalError, NotAuthorizedError, ValidationError
from tests.factories import make_record
from tests.fakes import FakeCluster, FakeProducer
from worker.deadletter import added_headers
from worker.outcomes import DeadLetter, Outcome, Result
from worker.policy import BACKOFF_BASE_S, RetryPolicy
from worker.sender import Sender
from worker.settings import Settings

IN, OUT, DLT, SHADOW, STATUS = "requests", "results", "requests.DLT", "results.shadow", "c.status"
SETTINGS = Settings(input_topic=IN, results_topic=OUT, control_topic="c", worker_id="w1")
RECORD = make_record(b'{"inputs": []}', topic=IN, partition=2, offset=41, key=b"k")


def result(shadow: bool = False) -> Result:
    return Result(RECORD, "req-1", b"req-1", b'{"outputs": []}', [("streamscore-model", b"iris")], shadow)


def dead_letter(shadow: bool = False) -> DeadLetter:
    return DeadLetter(RECORD, ValidationError("bad shape"), "req-1", ("iris", "3", "ab" * 32), shadow=shadow)


@dataclass
class Rig:
    """A sender over a fake cluster, with what it reported, slept and read from its clock."""

    cluster: FakeCluster = field(default_factory=FakeCluster)
    finished: list[Outcome] = field(default_factory=list)
    fatal: list[FatalError] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    now: float = 0.0
    step_s: float = 0.0  # how far the clock moves on each sleep

    def __post_init__(self) -> None:
        self.producer = FakeProducer(self.cluster)
        self.sender = Sender(
            self.producer,
            SETTINGS,
            self.finished.append,
            self.fatal.append,
            sleep=self.sleep,
            clock=lambda: self.now,
            unit=lambda: 0.0,
        )

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += self.step_s

    def written(self) -> dict[str, int]:
        """How many records each topic holds (empty topics left out)."""
        return {topic: n for topic in self.cluster.topics if (n := len(self.cluster.records(topic)))}


@pytest.fixture
def rig() -> Rig:
    return Rig()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    """Let the loop run until `condition` holds (the sender works in background tasks)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)


async def settle() -> None:
    """Let pending callbacks run, then wait until no task but this test's is left."""
    for _ in range(3):
        await asyncio.sleep(0)
    await wait_until(lambda: asyncio.all_tasks() <= {asyncio.current_task()})


async def test_acknowledged_result_is_finished_once(rig: Rig) -> None:
    """A result the broker acknowledges: on_finished once with it, the record on the results topic."""
    sent = result()

    await rig.sender.send(sent)
    await settle()

    assert [sent] == rig.finished
    assert [] == rig.fatal
    [written] = rig.cluster.records(OUT)
    assert (b"req-1", b'{"outputs": []}', (("streamscore-model", b"iris"),)) == (
        written.key,
        written.value,
        written.headers,
    )
    assert {OUT: 1} == rig.written()


@pytest.mark.parametrize(
    ("error", "at_send"),
    [
        pytest.param(RequestTimedOutError(), False, id="request-timed-out-on-ack"),
        pytest.param(NotLeaderForPartitionError(), False, id="not-leader-on-ack"),
        pytest.param(KafkaTimeoutError(), True, id="kafka-timeout-at-send"),
    ],
)
async def test_result_is_resent_after_transient_failures(rig: Rig, error: BaseException, at_send: bool) -> None:
    """Fails twice with a retriable error, then is acknowledged: 3 sends, sleeps 0 then base, finished once."""
    sent = result()
    rig.producer.fail(OUT, error, times=2, at_send=at_send)

    await rig.sender.send(sent)
    await settle()

    assert [sent] == rig.finished
    assert [(OUT, b"req-1")] * 3 == rig.producer.attempts
    policy = RetryPolicy()
    assert [0.0, BACKOFF_BASE_S] == [policy.delay(1, 0.0), policy.delay(2, 0.0)]
    assert [0.0, BACKOFF_BASE_S] == rig.sleeps
    assert {OUT: 1} == rig.written()


@pytest.mark.parametrize(
    ("error", "times", "at_send", "sends"),
    [
        pytest.param(MessageSizeTooLargeError(), 1, True, 1, id="too-large-at-send"),
        pytest.param(MessageSizeTooLargeError(), 1, False, 1, id="too-large-on-ack"),
        pytest.param(CorruptRecordException(), 1, False, 1, id="corrupt-on-ack"),
    ],
)
async def test_refused_result_is_dead_lettered_instead(
    rig: Rig, error: BaseException, times: int, at_send: bool, sends: int
) -> None:
    """A result refused for good: its input goes to <input>.DLT, stage produce; on_finished gets the DeadLetter."""
    rig.producer.fail(OUT, error, times=times, at_send=at_send)

    await rig.sender.send(result())
    await settle()

    [finished] = rig.finished
    assert isinstance(finished, DeadLetter)
    assert (RECORD, "req-1") == (finished.record, finished.request_id)
    assert [(OUT, b"req-1")] * sends + [(DLT, b"k")] == rig.producer.attempts
    assert {DLT: 1} == rig.written()
    [written] = rig.cluster.records(DLT)
    assert (RECORD.key, RECORD.value) == (written.key, written.value)
    added = added_headers(written.headers)
    assert b"produce" == added[h.DLT_STAGE]
    assert b"ResultRejectedError" == added[h.DLT_ERROR]
    assert f"aiokafka.errors.{type(error).__name__}".encode() == added[h.DLT_EXCEPTION_CAUSE_FQCN]
    assert [] == rig.fatal


async def test_the_brokers_failure_is_resent_until_it_passes_and_never_dead_lettered() -> None:
    """Not enough replicas for 12 sends (a minute by the clock): the result is resent each time, counted
    as trouble while it lasts, and finished once the broker takes it; nothing goes to the dead-letter topic."""
    rig = Rig(step_s=5.0)
    rig.producer.fail(OUT, NotEnoughReplicasError(), times=12)
    troubled: list[int] = []
    rig.producer.on_send = lambda: troubled.append(rig.sender.troubled)

    await rig.sender.send(result())
    await settle()

    assert [(OUT, b"req-1")] * 13 == rig.producer.attempts
    assert [Result] == [type(outcome) for outcome in rig.finished]
    assert [0] + [1] * 12 == troubled
    assert 0 == rig.sender.troubled
    assert {OUT: 1} == rig.written()


async def test_a_dead_letter_waits_for_its_topic_however_long() -> None:
    """The dead-letter topic does not answer for 20 sends: the dead letter is resent until it lands; no stop."""
    rig = Rig(step_s=5.0)
    rig.producer.fail(DLT, KafkaTimeoutError(), times=20, at_send=True)

    await rig.sender.send(dead_letter())
    await settle()

    assert ([DeadLetter], []) == ([type(outcome) for outcome in rig.finished], rig.fatal)
    assert {DLT: 1} == rig.written()


@pytest.mark.parametrize(
    ("topic", "outcome"),
    [pytest.param(OUT, result(), id="result"), pytest.param(DLT, dead_letter(), id="dead-letter")],
)
async def test_a_missing_acl_stops_the_worker_with_exit_2(rig: Rig, topic: str, outcome: Outcome) -> None:
    """Not authorized to write: on_fatal with a NotAuthorizedError naming the topic; nothing finished, no resend."""
    rig.producer.fail(topic, TopicAuthorizationFailedError(), times=100)

    await rig.sender.send(outcome)
    await settle()

    [fatal] = rig.fatal
    assert isinstance(fatal, NotAuthorizedError)
    assert f"topic {topic!r}" in str(fatal)
    key = outcome.record.key if topic == DLT else b"req-1"
    assert ([], [(topic, key)]) == (rig.finished, rig.producer.attempts)


@pytest.mark.parametrize(
    ("error", "at_send"),
    [
        pytest.param(MessageSizeTooLargeError(), True, id="too-large-at-send"),
        pytest.param(CorruptRecordException(), False, id="corrupt-on-ack"),
    ],
)
async def test_a_dead_letter_refused_for_good_stops_the_worker(rig: Rig, error: BaseException, at_send: bool) -> None:
    """A dead letter the broker refuses for what it is: on_fatal (exit 1) naming the record; never finished."""
    rig.producer.fail(DLT, error, times=100, at_send=at_send)

    await rig.sender.send(dead_letter())
    await settle()

    [fatal] = rig.fatal
    assert (FatalError, 1) == (type(fatal), fatal.exit_code)
    assert "requests[2]@41" in str(fatal)
    assert error is fatal.__cause__
    assert ([], [(DLT, b"k")], {}) == (rig.finished, rig.producer.attempts, rig.written())


@pytest.mark.parametrize(
    ("error", "at_send"),
    [
        pytest.param(RequestTimedOutError(), False, id="retriable-on-ack"),
        pytest.param(KafkaTimeoutError(), True, id="retriable-at-send"),
        pytest.param(MessageSizeTooLargeError(), True, id="too-large-at-send"),
    ],
)
async def test_failed_shadow_result_is_dropped(rig: Rig, error: BaseException, at_send: bool) -> None:
    """A shadow result whose send fails: one try, no resend, no dead letter, neither callback."""
    rig.producer.fail(SHADOW, error, times=1, at_send=at_send)

    await rig.sender.send(result(shadow=True))
    await settle()

    assert ([], [], []) == (rig.finished, rig.fatal, rig.sleeps)
    assert [(SHADOW, b"req-1")] == rig.producer.attempts
    assert {} == rig.written()


async def test_shadow_dead_letter_is_not_sent(rig: Rig) -> None:
    """A shadow version's dead letter is only logged: nothing sent, neither callback."""
    await rig.sender.send(dead_letter(shadow=True))
    await settle()

    assert ([], [], []) == (rig.producer.attempts, rig.finished, rig.fatal)


async def test_shadow_result_goes_to_the_shadow_topic(rig: Rig) -> None:
    """A result of a shadow version goes to <results>.shadow, not to the results topic."""
    sent = result(shadow=True)

    await rig.sender.send(sent)
    await settle()

    assert {SHADOW: 1} == rig.written()
    assert [sent] == rig.finished


async def test_status_is_published_to_the_status_topic(rig: Rig) -> None:
    """publish_status sends key and value to <control>.status in the background."""
    await rig.sender.publish_status(b"w1", b'{"serving": []}')
    await settle()

    [written] = rig.cluster.records(STATUS)
    assert (b"w1", b'{"serving": []}') == (written.key, written.value)


@pytest.mark.parametrize("at_send", [False, True], ids=["on-ack", "at-send"])
async def test_failed_status_is_only_logged(rig: Rig, at_send: bool) -> None:
    """A status send that fails raises nothing and stops nothing: no resend, no on_fatal."""
    rig.producer.fail(STATUS, KafkaTimeoutError(), times=1, at_send=at_send)

    await rig.sender.publish_status(b"w1", b"{}")
    await settle()

    assert ([], [], {}) == (rig.fatal, rig.finished, rig.written())
    assert [(STATUS, b"w1")] == rig.producer.attempts
