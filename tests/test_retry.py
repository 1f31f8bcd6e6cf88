"""The retry policy: transient failures retried with capped exponential backoff; permanent ones not."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from schemas.errors import (
    BrokerUnavailableError,
    ConfigError,
    DecodeError,
    FatalError,
    InferenceError,
    ProduceError,
    ResultRejectedError,
    TransientError,
    ValidationError,
)
from worker.retry import is_retriable, retrying

RETRIABLE = [
    TransientError("x"),
    BrokerUnavailableError("x"),
    ProduceError("x"),
    KafkaTimeoutError(),
    RequestTimedOutError(),
    KafkaConnectionError(),
    NodeNotReadyError(),
    TimeoutError(),
    ConnectionResetError(),
]
PERMANENT = [
    DecodeError("x"),
    ValidationError("x"),
    InferenceError("x"),
    ResultRejectedError("x"),
    ConfigError("x"),
    FatalError("x"),
    MessageSizeTooLargeError(),
    RecordTooLargeError(),
    TopicAuthorizationFailedError(),
    ValueError("x"),
    KeyError("x"),
]


@pytest.mark.parametrize("error", RETRIABLE, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retriable(error: BaseException) -> None:
    """Our TransientError family, aiokafka's retriable errors, timeouts and dropped connections retry."""
    assert is_retriable(error)


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_are_not_retriable(error: BaseException) -> None:
    """Record errors, broker refusals for good, and programming errors are not retried."""
    assert not is_retriable(error)


class FakeSleep:
    """Records the delays asked for; never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Flaky:
    """Fails with `error` the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def _run(operation: Flaky, attempts: int, sleep: FakeSleep) -> str:
    result = ""
    async for attempt in retrying(attempts, max_seconds=3600, sleep=sleep):
        with attempt:
            result = await operation()
    return result


async def test_transient_failure_is_retried_until_it_succeeds() -> None:
    """Two transient failures, then success: three calls, two sleeps, the result returned."""
    sleep = FakeSleep()
    operation = Flaky(2, ProduceError("not acknowledged"))

    assert "ok" == await _run(operation, attempts=5, sleep=sleep)
    assert 3 == operation.calls
    assert 2 == len(sleep.delays)


async def test_retries_stop_at_the_attempt_bound_and_reraise() -> None:
    """A failure that never passes is tried `attempts` times, then the last error is raised as is."""
    sleep = FakeSleep()
    error = RequestTimedOutError()
    operation = Flaky(100, error)

    with pytest.raises(RequestTimedOutError) as raised:
        await _run(operation, attempts=4, sleep=sleep)

    assert raised.value is error
    assert 4 == operation.calls
    assert 3 == len(sleep.delays)


async def test_permanent_error_is_never_retried() -> None:
    """A permanent error is raised on the first call, without sleeping."""
    sleep = FakeSleep()
    operation = Flaky(1, MessageSizeTooLargeError())

    with pytest.raises(MessageSizeTooLargeError):
        await _run(operation, attempts=5, sleep=sleep)

    assert 1 == operation.calls
    assert [] == sleep.delays


async def test_delays_grow_exponentially_with_jitter_up_to_a_cap() -> None:
    """The n-th delay is 0.1 * 2**(n-1) plus up to 0.5 s of jitter, never more than 5 s."""
    sleep = FakeSleep()
    attempts = 12

    with pytest.raises(BrokerUnavailableError):
        await _run(Flaky(100, BrokerUnavailableError("down")), attempts=attempts, sleep=sleep)

    assert attempts - 1 == len(sleep.delays)
    for n, delay in enumerate(sleep.delays, start=1):
        base = 0.1 * 2 ** (n - 1)
        assert min(base, 5.0) <= delay <= min(base + 0.5, 5.0)
    assert [5.0, 5.0, 5.0] == sleep.delays[-3:]  # 0.1 * 2**8 = 25.6: long past the cap
    assert sleep.delays[5] > sleep.delays[0]
