"""The fate of a failed send, decided in one pure step; and the backoff before each resend."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from schemas.errors import FatalError, ResultRejectedError, ValidationError
from tests.factories import make_record
from worker.outcomes import DeadLetter, Outcome, Result
from worker.policy import Drop, Reroute, Retry, RetryPolicy, SendFate, Stop, after_send_failure

POLICY = RetryPolicy(attempts=3, max_s=30.0)
RECORD = make_record(b'{"inputs": []}', topic="requests", partition=2, offset=41, key=b"k")
RESULT = Result(RECORD, "req-1", b"req-1", b'{"outputs": []}', [("streamscore-model", b"iris")])
DEAD = DeadLetter(RECORD, ValidationError("bad shape"), "req-1", ("iris", "3", "ab" * 32))
SHADOW_RESULT = Result(RECORD, "req-1", b"req-1", b'{"outputs": []}', [], shadow=True)
SHADOW_DEAD = DeadLetter(RECORD, ValidationError("bad shape"), "req-1", shadow=True)

RETRIABLE = [KafkaTimeoutError(), RequestTimedOutError(), NotLeaderForPartitionError()]
PERMANENT = [MessageSizeTooLargeError(), TopicAuthorizationFailedError()]


def _name(error: BaseException) -> str:
    return type(error).__name__


# outcome, error, resends so far, seconds since the first failure, the kind of fate
FATES = [
    pytest.param(RESULT, KafkaTimeoutError(), 0, 0.0, Retry, id="result-timeout-first-failure"),
    pytest.param(RESULT, NotLeaderForPartitionError(), 2, 29.9, Retry, id="result-retriable-last-resend"),
    pytest.param(DEAD, RequestTimedOutError(), 1, 1.0, Retry, id="dead-letter-retriable"),
    # pins the code: README section 6 says transient failures are never dead-lettered; one of the two is wrong
    pytest.param(RESULT, RequestTimedOutError(), 3, 1.0, Reroute, id="result-exhausted-by-count"),
    pytest.param(RESULT, RequestTimedOutError(), 1, 30.0, Reroute, id="result-exhausted-by-time"),
    pytest.param(RESULT, MessageSizeTooLargeError(), 0, 0.0, Reroute, id="result-too-large"),
    pytest.param(RESULT, TopicAuthorizationFailedError(), 0, 0.0, Reroute, id="result-not-authorized"),
    pytest.param(DEAD, KafkaTimeoutError(), 3, 1.0, Stop, id="dead-letter-exhausted-by-count"),
    pytest.param(DEAD, NotLeaderForPartitionError(), 0, 31.0, Stop, id="dead-letter-exhausted-by-time"),
    pytest.param(DEAD, MessageSizeTooLargeError(), 0, 0.0, Stop, id="dead-letter-too-large"),
    pytest.param(SHADOW_RESULT, RequestTimedOutError(), 0, 0.0, Drop, id="shadow-result-retriable"),
    pytest.param(SHADOW_RESULT, MessageSizeTooLargeError(), 0, 0.0, Drop, id="shadow-result-refused"),
    pytest.param(SHADOW_DEAD, KafkaTimeoutError(), 5, 99.0, Drop, id="shadow-dead-letter-exhausted"),
]


@pytest.mark.parametrize(("outcome", "error", "resends", "elapsed_s", "kind"), FATES)
def test_fate_depends_on_outcome_error_and_budget(
    outcome: Outcome, error: BaseException, resends: int, elapsed_s: float, kind: type[SendFate]
) -> None:
    """Retriable within budget: retry; else a result is rerouted, a dead letter stops, a shadow drops."""
    fate = after_send_failure(outcome, error, resends, elapsed_s, POLICY)

    assert kind is type(fate)


@pytest.mark.parametrize("resends", [0, 1, 2])
@pytest.mark.parametrize("error", RETRIABLE, ids=_name)
@pytest.mark.parametrize("outcome", [RESULT, DEAD], ids=["result", "dead-letter"])
def test_retriable_error_within_budget_is_resent(outcome: Outcome, error: BaseException, resends: int) -> None:
    """A retriable error with resends and time left: resend number resends + 1."""
    assert Retry(resends + 1) == after_send_failure(outcome, error, resends, 29.9, POLICY)


REROUTED = [
    pytest.param(MessageSizeTooLargeError(), 0, 0.0, id="too-large"),
    pytest.param(TopicAuthorizationFailedError(), 0, 0.0, id="not-authorized"),
    pytest.param(KafkaTimeoutError(), 3, 0.0, id="exhausted-by-count"),
    pytest.param(RequestTimedOutError(), 0, 30.0, id="exhausted-by-time"),
]


@pytest.mark.parametrize(("error", "resends", "elapsed_s"), REROUTED)
def test_refused_result_is_rerouted_as_a_dead_letter(error: BaseException, resends: int, elapsed_s: float) -> None:
    """A result given up on becomes a dead letter of its record: ResultRejectedError, stage produce."""
    fate = after_send_failure(RESULT, error, resends, elapsed_s, POLICY)

    assert isinstance(fate, Reroute)
    dead = fate.dead_letter
    assert (RECORD, "req-1", None, POLICY.attempts, False) == (
        dead.record,
        dead.request_id,
        dead.model,
        dead.attempts,
        dead.shadow,
    )
    assert isinstance(dead.error, ResultRejectedError)
    assert "produce" == dead.error.stage
    assert error is dead.error.__cause__


STOPPED = [
    pytest.param(MessageSizeTooLargeError(), 0, 0.0, id="too-large"),
    pytest.param(TopicAuthorizationFailedError(), 1, 0.0, id="not-authorized"),
    pytest.param(NotLeaderForPartitionError(), 3, 0.0, id="exhausted-by-count"),
    pytest.param(KafkaTimeoutError(), 0, 45.0, id="exhausted-by-time"),
]


@pytest.mark.parametrize(("error", "resends", "elapsed_s"), STOPPED)
def test_dead_letter_not_written_stops_the_worker(error: BaseException, resends: int, elapsed_s: float) -> None:
    """A dead letter given up on: Stop with a FatalError naming topic[partition]@offset, caused by the error."""
    fate = after_send_failure(DEAD, error, resends, elapsed_s, POLICY)

    assert isinstance(fate, Stop)
    assert FatalError is type(fate.error)
    assert "requests[2]@41" in str(fate.error)
    assert error is fate.error.__cause__


@pytest.mark.parametrize("error", RETRIABLE + PERMANENT, ids=_name)
@pytest.mark.parametrize("outcome", [SHADOW_RESULT, SHADOW_DEAD], ids=["shadow-result", "shadow-dead-letter"])
def test_shadow_outcome_is_dropped_whatever_the_error(outcome: Outcome, error: BaseException) -> None:
    """A shadow outcome is best effort: dropped at once, the error in the reason, never resent."""
    fate = after_send_failure(outcome, error, 0, 0.0, POLICY)

    assert Drop(f"shadow result lost: {error!r}") == fate


BACKOFF = RetryPolicy(attempts=10, max_s=60.0, base_s=0.1, cap_s=5.0, jitter_s=0.5)

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
