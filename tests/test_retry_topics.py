"""Retry topics, the pure part: where a record that may be scored later goes next, with which headers."""

from __future__ import annotations

import pytest

from schemas import headers as h
from schemas.errors import ConfigError, InferenceTimeout, ModelUnavailableError, ValidationError
from schemas.records import InputRecord
from worker.outcomes import DeadLetter
from worker.retrytopics import RetryTopics, first_not_due
from worker.settings import Settings

NOW_MS = 1_800_000_000_000
SENT_MS = 1_700_000_000_000
RETRIES = RetryTopics("in", (1000, 5000), attempts=3)


def record(topic: str = "in", headers: list[tuple[str, bytes]] | None = None, offset: int = 7) -> InputRecord:
    return InputRecord(topic, 0, offset, b"{}", b"k", tuple(headers or [("traceparent", b"00-ab")]), SENT_MS)


def letter(rec: InputRecord, error: Exception | None = None) -> DeadLetter:
    return DeadLetter(rec, error or ModelUnavailableError("model 'mlp' has no version '2' on this worker"), "r1")


def headers_of(letter: DeadLetter) -> dict[str, bytes]:
    assert letter.hop is not None
    return dict(letter.hop.headers)


@pytest.mark.parametrize(
    ("value", "java"),
    [
        pytest.param(0, b"\x00", id="zero"),
        pytest.param(127, b"\x7f", id="one-byte"),
        pytest.param(128, b"\x00\x80", id="sign-byte"),
        pytest.param(SENT_MS, bytes.fromhex("018bcfe56800"), id="a-timestamp"),
        pytest.param(-1, b"\xff", id="minus-one"),
        pytest.param(-128, b"\x80", id="minus-128"),
    ],
)
def test_big_integers_are_written_as_javas_biginteger_to_byte_array(value: int, java: bytes) -> None:
    """Spring writes the retry timestamps with BigInteger.toByteArray: the same bytes, and read back."""
    assert java == h.encode_big_integer(value)
    assert value == h.decode_big_integer(java)


def test_a_record_that_may_succeed_later_goes_to_the_first_retry_topic() -> None:
    """From the input topic: the first delay's topic, attempt 2 next, the original timestamp and the
    due time set, the error said, the record's own headers kept in front."""
    hopped = RETRIES.hop(letter(record()), NOW_MS)

    assert hopped.hop is not None
    assert ("in-retry-1000", 2) == (hopped.hop.topic, hopped.hop.attempt)
    assert [
        ("traceparent", b"00-ab"),
        (h.RETRY_ATTEMPTS, (2).to_bytes(4, "big")),
        (h.RETRY_ORIGINAL_TIMESTAMP, h.encode_big_integer(SENT_MS)),
        (h.RETRY_BACKOFF_TIMESTAMP, h.encode_big_integer(NOW_MS + 1000)),
        (h.RETRY_ERROR, b"ModelUnavailableError: model 'mlp' has no version '2' on this worker"),
    ] == hopped.hop.headers


def test_from_a_retry_topic_the_next_one_and_the_first_timestamp_kept() -> None:
    """Attempt 2 fails: the record goes to the next delay's topic; its retry headers are replaced, not
    added to, and its original timestamp is the one the first hop wrote."""
    first = RETRIES.hop(letter(record()), NOW_MS)
    assert first.hop is not None
    again = record("in-retry-1000", first.hop.headers)

    second = RETRIES.hop(letter(again), NOW_MS + 2000)

    assert second.hop is not None
    assert ("in-retry-5000", 3) == (second.hop.topic, second.hop.attempt)
    assert 1 == sum(key == h.RETRY_ATTEMPTS for key, _ in second.hop.headers)
    assert h.encode_big_integer(SENT_MS) == headers_of(second)[h.RETRY_ORIGINAL_TIMESTAMP]
    assert h.encode_big_integer(NOW_MS + 2000 + 5000) == headers_of(second)[h.RETRY_BACKOFF_TIMESTAMP]


def test_after_the_last_attempt_the_record_is_dead_lettered_with_its_attempts() -> None:
    """Attempt 3 of 3 fails: no hop; the dead letter counts 3 attempts."""
    last = record("in-retry-5000", [(h.RETRY_ATTEMPTS, h.encode_int(3))])

    dead = RETRIES.hop(letter(last), NOW_MS)

    assert (None, 3) == (dead.hop, dead.attempts)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ModelUnavailableError("not pulled"), id="version-not-pulled"),
        pytest.param(InferenceTimeout("ran past 60 s"), id="inference-timeout"),
    ],
)
def test_errors_that_may_pass_are_retried(error: Exception) -> None:
    assert RETRIES.hop(letter(record(), error), NOW_MS).hop is not None


def test_errors_of_the_record_itself_are_dead_lettered_at_once() -> None:
    """A record that is wrong (invalid) would fail the same way later: no retry topic."""
    dead = RETRIES.hop(letter(record(), ValidationError("wrong shape")), NOW_MS)

    assert (None, 1) == (dead.hop, dead.attempts)


def test_without_delays_nothing_is_retried() -> None:
    """Retry topics are off by default: every dead letter goes to the dead-letter topic."""
    retries = RetryTopics.of(Settings())

    assert ([], 1) == (retries.topics, retries.attempts)
    assert retries.hop(letter(record()), NOW_MS).hop is None


def test_more_attempts_than_delays_reuse_the_last_delays_topic() -> None:
    """Five attempts over two delays: attempts 2 and 3..5 go to the 1 s and then the 5 s topic."""
    retries = RetryTopics.of(Settings(input_topic="in", retry_topic_delays_ms=("1000", "5000"), retry_topic_attempts=5))
    topics = []
    for attempt in (2, 3, 4):
        rec = record("in-retry-5000", [(h.RETRY_ATTEMPTS, h.encode_int(attempt))])
        hopped = retries.hop(letter(rec), NOW_MS)
        assert hopped.hop is not None
        topics.append(hopped.hop.topic)

    assert ["in-retry-5000", "in-retry-5000", "in-retry-5000"] == topics
    assert ["in-retry-1000", "in-retry-5000"] == retries.topics


@pytest.mark.parametrize(
    ("topic", "value", "attempt"),
    [
        pytest.param("in", h.encode_int(3), 1, id="header-on-the-input-topic-ignored"),
        pytest.param("in-retry-1000", h.encode_int(2), 2, id="four-byte-int"),
        pytest.param("in-retry-1000", b"\x02", 2, id="spring-before-2.8.3-one-byte"),
        pytest.param("in-retry-1000", b"\x00\x02", 3, id="unreadable-counts-as-last"),
    ],
)
def test_the_attempt_a_delivery_is(topic: str, value: bytes, attempt: int) -> None:
    """Only a retry topic's attempts header counts (a producer cannot skip retries, or add them)."""
    assert attempt == RETRIES.attempt_of(record(topic, [(h.RETRY_ATTEMPTS, value)]))


def test_a_shadow_failure_or_a_final_dead_letter_is_never_retried() -> None:
    shadow = letter(record())
    shadow.shadow = True
    final = letter(record())
    final.final = True

    assert (None, None) == (RETRIES.hop(shadow, NOW_MS).hop, RETRIES.hop(final, NOW_MS).hop)


def test_records_are_taken_up_to_the_first_that_is_not_due() -> None:
    """A retry topic's records are in the order they were sent, so are their due times: the ones
    due are taken, the partition waits from the first that is not (records of other topics are due)."""

    def due(ms: int, offset: int) -> InputRecord:
        return record("in-retry-1000", [(h.RETRY_BACKOFF_TIMESTAMP, h.encode_big_integer(ms))], offset)

    fetched = [due(NOW_MS - 5, 0), due(NOW_MS, 1), due(NOW_MS + 700, 2), due(NOW_MS + 900, 3)]

    assert (2, NOW_MS + 700) == first_not_due(fetched, RETRIES, NOW_MS)
    assert (2, None) == first_not_due([record(), record(offset=8)], RETRIES, NOW_MS)


@pytest.mark.parametrize(
    ("delays", "attempts", "message"),
    [
        pytest.param(("1000", "soon"), 0, "positive whole milliseconds", id="not-a-number"),
        pytest.param(("0",), 0, "positive whole milliseconds", id="zero"),
        pytest.param(("1000", "1000"), 0, "names a delay twice", id="twice"),
        pytest.param(("1000",), 1, r"must be 0 \(one per delay\) or at least 2", id="one-attempt"),
    ],
)
def test_retry_settings_are_checked(delays: tuple[str, ...], attempts: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(retry_topic_delays_ms=delays, retry_topic_attempts=attempts)
