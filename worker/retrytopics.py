"""Retry topics: a record that may be scored later waits on a retry topic instead of being dead-lettered.

Spring Kafka's non-blocking retries, with its topic names and headers. A record whose error says
`retry_later` (schemas/errors.py: a model version not on this worker yet, an inference timeout)
goes to `<input>-retry-<delay ms>` for its next attempt, with
`retry_topic-attempts` (the attempt that delivery is), `retry_topic-original-timestamp` and
`retry_topic-backoff-timestamp` (when it is due). The worker consumes the retry topics in the same
group as the input topic; a record that is not due yet pauses its partition until it is (the fetch
loop goes on with the others, it never sleeps). After the last attempt the record goes to the
dead-letter topic, its attempts counted there.

    RetryTopics.of(settings).hop(letter, now_ms) -> the dead letter, sent to its next retry topic
                                                    (`hop` set), or as it was (attempts counted)
    RetryTopics.due_at(record)                   -> when a record read from a retry topic is due

Everything here is pure: the sender (worker/sender.py) and the fetch loop (worker/runner.py) act on it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import headers as h
from schemas.records import Record
from schemas.topics import retry_topic_of
from worker.outcomes import DeadLetter, Hop
from worker.settings import Settings

MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RetryTopics:
    """The retry topics of one input topic: a delay each, and how many attempts a record gets in all."""

    input_topic: str
    delays_ms: tuple[int, ...] = ()
    attempts: int = 1  # the first attempt included

    @classmethod
    def of(cls, settings: Settings) -> RetryTopics:
        delays = settings.retry_delays_ms
        attempts = (settings.retry_topic_attempts or len(delays) + 1) if delays else 1
        return cls(settings.input_topic, delays, attempts)

    @functools.cached_property
    def topics(self) -> list[str]:
        """The retry topics, in the order a record goes through them."""
        return [retry_topic_of(self.input_topic, delay) for delay in self.delays_ms]

    @functools.cached_property
    def _topic_set(self) -> frozenset[str]:
        return frozenset(self.topics)

    def is_retry_topic(self, topic: str) -> bool:
        return topic in self._topic_set

    def attempt_of(self, record: Record) -> int:
        """Which attempt this delivery of `record` is: 1 on the input topic, the header's on a retry topic
        (a header that cannot be read counts as the last attempt: the record is not retried again)."""
        if not self.is_retry_topic(record.topic):
            return 1
        raw = _header(record.headers, h.RETRY_ATTEMPTS)
        if raw is None:
            return self.attempts
        if len(raw) == 1:  # Spring Kafka before 2.8.3 wrote a single byte
            return raw[0]
        return h.decode_int(raw) if len(raw) == 4 else self.attempts

    def due_at(self, record: Record) -> int | None:
        """When a record read from a retry topic is due (ms since the epoch); None: now."""
        if not self.is_retry_topic(record.topic):
            return None
        raw = _header(record.headers, h.RETRY_BACKOFF_TIMESTAMP)
        try:
            return None if raw is None else h.decode_big_integer(raw)
        except ValueError:
            return None

    def hop(self, letter: DeadLetter, now_ms: int) -> DeadLetter:
        """`letter` on its way to the next retry topic when its error may pass and attempts are left;
        else `letter` with the attempts its record has had counted."""
        record, error = letter.record, letter.error
        made = self.attempt_of(record)
        if letter.final or letter.shadow or not getattr(error, "retry_later", False) or made >= self.attempts:
            return letter if made <= letter.attempts else dataclasses.replace(letter, attempts=made)
        delay = self.delays_ms[min(made - 1, len(self.delays_ms) - 1)]
        kept = [(key, value) for key, value in record.headers if key not in h.RETRY_HEADERS]
        original = _header(record.headers, h.RETRY_ORIGINAL_TIMESTAMP) or h.encode_big_integer(record.timestamp)
        headers = [
            *kept,
            (h.RETRY_ATTEMPTS, h.encode_int(made + 1)),
            (h.RETRY_ORIGINAL_TIMESTAMP, original),
            (h.RETRY_BACKOFF_TIMESTAMP, h.encode_big_integer(now_ms + delay)),
            (h.RETRY_ERROR, f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS].encode()),
        ]
        return dataclasses.replace(letter, hop=Hop(retry_topic_of(self.input_topic, delay), headers, made + 1))


def first_not_due(records: Sequence[Record], retries: RetryTopics, now_ms: int) -> tuple[int, int | None]:
    """How many of a partition's fetched `records` are due, from the first; and when the next one is."""
    if not records or not retries.is_retry_topic(records[0].topic):  # the input topic's: all due
        return len(records), None
    for index, record in enumerate(records):
        due = retries.due_at(record)
        if due is not None and due > now_ms:
            return index, due
    return len(records), None


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in reversed(headers):  # the last one wins, as Spring reads lastHeader
        if key == name:
            return value
    return None
