"""The retry policy for transient failures: exponential backoff with jitter, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from schemas.errors import StreamscoreError

Sleep = Callable[[float], Awaitable[Any]]


def is_retriable(error: BaseException) -> bool:
    """Whether retrying the same operation may succeed (ours and aiokafka's errors say so)."""
    if isinstance(error, KafkaTimeoutError):  # a send not done in time; aiokafka marks it not retriable
        return True
    if isinstance(error, StreamscoreError | KafkaError):
        return bool(error.retriable)
    return isinstance(error, asyncio.TimeoutError | ConnectionError)


def retrying(attempts: int, max_seconds: float, sleep: Sleep = asyncio.sleep) -> AsyncRetrying:
    """A tenacity controller: retry retriable errors, up to `attempts` and `max_seconds`."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retriable),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        wait=wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.5),
        sleep=sleep,
        reraise=True,
    )
