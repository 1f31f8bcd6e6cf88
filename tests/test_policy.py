"""The fate of a failed send, decided in one pure step; and the backoff before each resend."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownTopicOrPartitionError,
)

from schemas.errors import FatalError, NotAuthorizedError, ResultRejectedError, ValidationError
from tests.factories import make_record
from worker.outcomes import DeadLetter, Outcome, Result
from worker.policy import Drop, Reroute, Retry, RetryPolicy, SendFate, Stop, access_refused, after_send_failure

RECORD = make_record(b'{"inputs": []}', topic="requests", partition=2, offset=41, key=b"k")
MODEL_HEADERS = [("streamscore-model", b"iris"), ("streamscore-model-version", b"3")]
RESULT = Result(RECORD, "req-1", b"req-1", b'{"outputs": []}', MODEL_HEADERS)
DEAD = DeadLetter(RECORD, ValidationError("bad shape"), "req-1", ("iris", "3", "ab" * 32))
SHADOW_RESULT = Result(RECORD, "req-1", b"req-1", b'{"outputs": []}', [], shadow=True)
SHADOW_DEAD = DeadLetter(RECORD, ValidationError("bad shape"), "req-1", shadow=True)

BROKERS = [
    KafkaTimeoutError(),
    RequestTimedOutError(),
    NotLeaderForPartitionError(),
    NotEnoughReplicasError(),
    KafkaConnectionError(),
    UnknownTopicOrPartitionError(),
]
RECORDS = [MessageSizeTooLargeError(), RecordTooLargeError(), CorruptRecordException()]
ACLS = [TopicAuthorizationFailedError(), ClusterAuthorizationFailedError()]


def _name(error: BaseException) -> str:
    return type(error).__name__


# outcome, error, resends so far, the kind of fate
FATES = [
    pytest.param(RESULT, KafkaTimeoutError(), 0, Retry, id="result-timeout"),
    pytest.param(RESULT, NotEnoughReplicasError(), 500, Retry, id="result-broker-trouble-never-gives-up"),
    pytest.param(DEAD, UnknownTopicOrPartitionError(), 3, Retry, id="dead-letter-topic-missing-waits"),
    pytest.param(RESULT, MessageSizeTooLargeError(), 0, Reroute, id="result-too-large"),
    pytest.param(RESULT, CorruptRecordException(), 2, Reroute, id="result-corrupt-after-resends"),
    pytest.param(DEAD, MessageSizeTooLargeError(), 0, Stop, id="dead-letter-refused-for-good"),
    pytest.param(RESULT, TopicAuthorizationFailedError(), 0, Stop, id="result-not-authorized"),
    pytest.param(DEAD, TopicAuthorizationFailedError(), 0, Stop, id="dead-letter-not-authorized"),
    pytest.param(SHADOW_RESULT, RequestTimedOutError(), 0, Drop, id="shadow-result-broker-trouble"),
    pytest.param(SHADOW_RESULT, MessageSizeTooLargeError(), 0, Drop, id="shadow-result-refused"),
    pytest.param(SHADOW_DEAD, KafkaTimeoutError(), 5, Drop, id="shadow-dead-letter"),
]


@pytest.mark.parametrize(("outcome", "error", "resends", "kind"), FATES)
def test_fate_depends_on_the_outcome_and_whose_failure_it_is(
    outcome: Outcome, error: BaseException, resends: int, kind: type[SendFate]
) -> None:
    """The broker's failure: retry; the record's own: reroute a result, stop on a dead letter; an ACL: stop."""
    assert kind is type(after_send_failure(outcome, error, resends, "results"))


@pytest.mark.parametrize("resends", [0, 1, 10_000])
@pytest.mark.parametrize("error", BROKERS, ids=_name)
@pytest.mark.parametrize("outcome", [RESULT, DEAD], ids=["result", "dead-letter"])
def test_the_brokers_failure_is_resent_however_long_it_lasts(
    outcome: Outcome, error: BaseException, resends: int
) -> None:
    """A record is never dead-lettered, nor the worker stopped, for the broker's failure: resend n + 1."""
    assert Retry(resends + 1) == after_send_failure(outcome, error, resends, "results")


@pytest.mark.parametrize("error", RECORDS, ids=_name)
def test_a_result_refused_for_good_is_rerouted_as_a_dead_letter(error: BaseException) -> None:
    """A result the broker refuses for what it is becomes a dead letter of its request: stage produce,
    the model from the result's headers, the attempts made, the broker's error as the cause."""
    fate = after_send_failure(RESULT, error, 2, "results")

    assert isinstance(fate, Reroute)
    dead = fate.dead_letter
    assert (RECORD, "req-1", ("iris", "3", ""), 3, False) == (
        dead.record,
        dead.request_id,
        dead.model,
        dead.attempts,
        dead.shadow,
    )
    assert isinstance(dead.error, ResultRejectedError)
    assert "produce" == dead.error.stage
    assert error is dead.error.__cause__


@pytest.mark.parametrize("error", RECORDS, ids=_name)
def test_a_dead_letter_refused_for_good_stops_the_worker(error: BaseException) -> None:
    """A dead letter refused for good: Stop with a FatalError (exit 1) naming the record and the topic."""
    fate = after_send_failure(DEAD, error, 0, "requests.DLT")

    assert isinstance(fate, Stop)
    assert FatalError is type(fate.error)
    assert 1 == fate.error.exit_code
    assert "requests[2]@41" in str(fate.error)
    assert "requests.DLT" in str(fate.error)
    assert error is fate.error.__cause__


@pytest.mark.parametrize("error", ACLS, ids=_name)
@pytest.mark.parametrize("outcome", [RESULT, DEAD], ids=["result", "dead-letter"])
def test_a_missing_acl_stops_the_worker_naming_topic_and_acl(outcome: Outcome, error: BaseException) -> None:
    """Not authorized: Stop with NotAuthorizedError (exit 2) naming the topic and the WRITE ACL it needs."""
    fate = after_send_failure(outcome, error, 0, "results")

    assert isinstance(fate, Stop)
    assert isinstance(fate.error, NotAuthorizedError)
    assert 2 == fate.error.exit_code
    assert "'results'" in str(fate.error)
    assert "WRITE" in str(fate.error)


@pytest.mark.parametrize("error", BROKERS + RECORDS + ACLS, ids=_name)
@pytest.mark.parametrize("outcome", [SHADOW_RESULT, SHADOW_DEAD], ids=["shadow-result", "shadow-dead-letter"])
def test_shadow_outcome_is_dropped_whatever_the_error(outcome: Outcome, error: BaseException) -> None:
    """A shadow outcome is best effort: dropped at once, the error in the reason, never resent."""
    fate = after_send_failure(outcome, error, 0, "results.shadow")

    assert Drop(f"shadow result lost: {error!r}") == fate


BACKOFF = RetryPolicy(base_s=0.1, cap_s=5.0, jitter_s=0.5)

# resend number, random unit, seconds to wait
DELAYS = [
    pytest.param(1, 0.0, 0.0, id="first-resend-at-once"),
    pytest.param(1, 0.99, 0.0, id="first-resend-no-jitter"),
    pytest.param(2, 0.0, 0.1, id="second-waits-base"),
    pytest.param(3, 0.0, 0.2, id="third-doubles"),
    pytest.param(4, 0.0, 0.4, id="fourth-doubles-again"),
    pytest.param(2, 0.5, 0.35, id="jitter-half"),
    pytest.param(7, 0.99, 3.695, id="jitter-below-cap"),
    pytest.param(7, 0.0, 3.2, id="last-below-cap"),
    pytest.param(8, 0.0, 5.0, id="capped"),
    pytest.param(7, 0.9999, 3.69995, id="jitter-almost-whole"),
    pytest.param(8, 0.99, 5.0, id="capped-with-jitter"),
    pytest.param(30, 0.5, 5.0, id="far-past-cap"),
]


@pytest.mark.parametrize(("resend", "unit", "expected"), DELAYS)
def test_delay_grows_exponentially_with_jitter_up_to_the_cap(resend: int, unit: float, expected: float) -> None:
    """Resend 1 goes at once; then base * 2**(n-2) plus jitter_s * unit, never more than cap_s."""
    assert pytest.approx(expected) == BACKOFF.delay(resend, unit)


@pytest.mark.parametrize("unit", [0.0, 0.25, 0.999])
def test_delay_never_shrinks_and_never_passes_the_cap(unit: float) -> None:
    """For a fixed random unit, each resend waits at least as long as the one before, at most cap_s."""
    delays = [BACKOFF.delay(resend, unit) for resend in range(1, 40)]

    assert sorted(delays) == delays
    assert BACKOFF.cap_s == max(delays)


@pytest.mark.parametrize(
    ("error", "grant"),
    [
        (GroupAuthorizationFailedError(), "READ ACL on group 'g'"),
        (TopicAuthorizationFailedError("in"), "READ (and DESCRIBE) ACL on topic 'in'"),
        (TopicAuthorizationFailedError({"b", "a"}), "topic 'a', 'b'"),
        (TransactionalIdAuthorizationFailed(), "transactional id 'g-in-0'"),
        (ClusterAuthorizationFailedError(), "WRITE ACL on the topics it writes"),
    ],
)
def test_access_refused_names_the_acl_to_grant(error: Exception, grant: str) -> None:
    """A client refused for want of an ACL: a NotAuthorizedError (exit 2) naming the ACL and the resource."""
    refused = access_refused(error, "consumer", group="g", transactional_id="g-in-0")

    assert 2 == refused.exit_code
    assert grant in str(refused)
