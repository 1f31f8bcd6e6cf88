"""Dead letters read, selected and turned into replays, without a broker (`producer/dlq.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from producer.dlq import (
    DeadLetter,
    Filters,
    Outcome,
    Plan,
    Refuse,
    Replay,
    Skip,
    decide,
    hour_of,
    iso_time,
    parse_offsets,
    parse_time,
    place,
    read_ranges,
    replayed_headers,
    spring_number,
)
from schemas import headers as h
from schemas.errors import DecodeError, InferenceError, ValidationError
from schemas.records import InputRecord
from tests.factories import make_record
from worker.deadletter import dead_letter_headers, fit

WRITTEN_AT = 1_764_684_191_123  # 2025-12-02T14:03:11.123Z, when the dead letter was written
OWN = (("traceparent", b"00-abc-01"), ("x-custom", b"\x00\x01"))


def dead_letter(
    value: bytes | None = b'{"id": "r1", "inputs": []}',
    *,
    key: bytes | None = b"r1",
    headers: Sequence[tuple[str, bytes]] = OWN,
    error: Exception | None = None,
    stage: str = "validate",
    model: tuple[str, str, str] | None = ("mlp", "2", "ab" * 32),
    limit: int = 1_048_588,
    at: tuple[int, int] = (0, 0),
    timestamp: int = WRITTEN_AT,
    topic: str = "requests",
) -> DeadLetter:
    """A dead letter as the worker writes it (its headers and `fit`), of <topic>[3]@41, read at `at` of the DLT."""
    original = make_record(value, topic=topic, partition=3, offset=41, key=key, headers=headers)
    added = dead_letter_headers(
        original,
        error or ValidationError("input 'x': shape [1, 7]"),
        stage=stage,
        group_id="scorers",
        worker="host-1/42",
        attempts=1,
        model=model,
    )
    key, value, written = fit(original, added, limit, "requests.DLT")
    return DeadLetter.of(InputRecord("requests.DLT", at[0], at[1], value, key, tuple(written), timestamp))


# ---------------------------------------------------------------------------------------------
# Reading a dead letter


@pytest.mark.parametrize(
    ("raw", "size", "expected"),
    [
        pytest.param(b"\x00\x00\x00\x07", 4, 7, id="int"),
        pytest.param(b"\xff\xff\xff\xff", 4, -1, id="negative-int"),
        pytest.param(h.encode_long(2**40 + 3), 8, 2**40 + 3, id="long"),
        pytest.param(h.encode_long(WRITTEN_AT), 8, WRITTEN_AT, id="timestamp"),
        pytest.param(b"\x00\x07", 4, None, id="too-short"),
        pytest.param(h.encode_int(7), 8, None, id="an-int-where-a-long-belongs"),
        pytest.param(None, 4, None, id="absent"),
    ],
)
def test_spring_numbers_are_big_endian_of_their_exact_size(raw: bytes | None, size: int, expected: int | None) -> None:
    """Spring's partition (4 bytes) and offset or timestamp (8 bytes) decode; any other size is unreadable."""
    assert expected == spring_number(raw, size)


def test_times_are_utc_iso() -> None:
    """A dead letter's time prints to the millisecond in UTC, and its hour is the UTC hour."""
    assert ("2025-12-02T14:03:11.123Z", "2025-12-02T14:00Z") == (iso_time(WRITTEN_AT), hour_of(WRITTEN_AT))


def test_a_dead_letter_splits_into_the_original_record_and_the_added_headers() -> None:
    """The headers before the dead-letter ones are the original's, byte for byte; the rest are read by name."""
    letter = dead_letter()

    assert OWN == letter.original_headers
    assert all(name.startswith(h.DLT_PREFIXES) for name, _ in letter.added_headers)
    assert ("validate", "ValidationError", ("mlp", "2")) == (letter.stage, letter.error, letter.model)
    assert ("requests", 3, 41) == (letter.original_topic, letter.original_partition, letter.original_offset)
    assert "requests[3]@41" == letter.original_position
    assert ((), False, 0) == (letter.omitted, letter.tombstone, letter.replay_count())


def test_a_spring_dead_letter_gets_its_error_class_from_the_fqcn() -> None:
    """Without our stage and error headers (a Spring application wrote it), the error is the fqcn's class."""
    record = InputRecord(
        "orders.DLT", 0, 5, b"{}", None, ((h.DLT_EXCEPTION_FQCN, b"org.springframework.kafka.KafkaException"),)
    )

    letter = DeadLetter.of(record)

    assert (None, "KafkaException", (None, None)) == (letter.stage, letter.error, letter.model)
    assert "?[?]@?" == letter.original_position


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param((), 0, id="never-replayed"),
        pytest.param(((h.REPLAY_COUNT, b"2"),), 2, id="replayed-twice"),
        pytest.param(((h.REPLAY_COUNT.title(), b"1"),), 1, id="any-case"),
        pytest.param(((h.REPLAY_COUNT, b"1"), (h.REPLAY_COUNT, b"3")), 3, id="the-last-counts"),
        pytest.param(((h.REPLAY_COUNT, b"-1"),), None, id="negative"),
        pytest.param(((h.REPLAY_COUNT, b"two"),), None, id="not-a-number"),
        pytest.param(((h.REPLAY_COUNT, b""),), None, id="empty"),
        pytest.param(((h.REPLAY_COUNT, "²".encode()),), None, id="a-unicode-digit"),
    ],
)
def test_the_replay_count_is_read_from_the_original_headers(
    headers: tuple[tuple[str, bytes], ...], expected: int | None
) -> None:
    """0 without the header, the decimal count with it, None when it is not a count."""
    assert expected == dead_letter(headers=headers).replay_count()


def test_what_did_not_fit_is_named_in_the_order_the_worker_leaves_it_out() -> None:
    """A dead letter over the topic's limit loses its value first, then its headers, then its key."""
    big = b"v" * 5000
    value_only = dead_letter(big, limit=4500)
    everything = dead_letter(big, key=b"k" * 3000, headers=(("h", b"x" * 3000),), limit=1500)

    assert (("value",), b"") == (value_only.omitted, value_only.value)
    assert ("value", "headers", "key") == everything.omitted


def test_a_record_with_neither_key_nor_value_is_a_tombstone_dead_letter() -> None:
    """The worker writes it with an empty value and the tombstone marker."""
    letter = dead_letter(None, key=None, error=DecodeError("empty"), stage="decode")

    assert (True, b"", None) == (letter.tombstone, letter.value, letter.key)


# ---------------------------------------------------------------------------------------------
# Selecting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1764684191123", 1_764_684_191_123),
        ("2025-12-02T14:03:11.123Z", 1_764_684_191_123),
        ("2025-12-02T15:03:11.123+01:00", 1_764_684_191_123),
        ("2025-12-02T14:03:11.123", 1_764_684_191_123),  # no zone: UTC
        ("2025-12-02", 1_764_633_600_000),
    ],
)
def test_times_are_iso_or_epoch_milliseconds(text: str, expected: int) -> None:
    """--since and --until take ISO times (UTC unless they say) or epoch ms."""
    assert expected == parse_time(text)


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "-5", ""])
def test_a_time_that_is_neither_is_refused_saying_what_is_accepted(text: str) -> None:
    """The error shows an example of each accepted form."""
    with pytest.raises(ValueError, match="neither an ISO time"):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4-9", (4, 9)), ("4-", (4, None)), ("4", (4, 4)), ("0-0", (0, 0))],
)
def test_offset_ranges(text: str, expected: tuple[int, int | None]) -> None:
    """A-B is inclusive; A- runs to the end; A alone is one offset."""
    assert expected == parse_offsets(text)


@pytest.mark.parametrize(("text", "message"), [("9-4", "ends before"), ("a-b", "not an offset"), ("-4", "not an")])
def test_bad_offset_ranges_are_refused(text: str, message: str) -> None:
    """A range that ends before it starts, or is not numbers, says so."""
    with pytest.raises(ValueError, match=message):
        parse_offsets(text)


SELECTION_CASES = [
    pytest.param(Filters(), True, id="no-filter"),
    pytest.param(Filters(stages=frozenset({"validate", "infer"})), True, id="stage-among-several"),
    pytest.param(Filters(stages=frozenset({"decode"})), False, id="other-stage"),
    pytest.param(Filters(errors=frozenset({"ValidationError"})), True, id="error-class"),
    pytest.param(Filters(errors=frozenset({"schemas.errors.ValidationError"})), True, id="error-fqcn"),
    pytest.param(Filters(errors=frozenset({"DecodeError"})), False, id="other-error"),
    pytest.param(Filters(model="mlp", model_version="2"), True, id="model-version"),
    pytest.param(Filters(model_version="1"), False, id="other-version"),
    pytest.param(Filters(model="iris"), False, id="other-model"),
    pytest.param(Filters(since_ms=WRITTEN_AT), True, id="since-is-inclusive"),
    pytest.param(Filters(until_ms=WRITTEN_AT), False, id="until-is-exclusive"),
    pytest.param(Filters(since_ms=WRITTEN_AT - 1, until_ms=WRITTEN_AT + 1), True, id="between"),
    pytest.param(Filters(partition=1), True, id="partition"),
    pytest.param(Filters(partition=0), False, id="other-partition"),
    pytest.param(Filters(partition=1, offsets=(7, 7)), True, id="offset"),
    pytest.param(Filters(partition=1, offsets=(8, None)), False, id="before-the-range"),
    pytest.param(Filters(stages=frozenset({"validate"}), model_version="1"), False, id="every-filter-must-hold"),
]


@pytest.mark.parametrize(("filters", "selected"), SELECTION_CASES)
def test_filters_select_dead_letters(filters: Filters, selected: bool) -> None:
    """A validate-stage ValidationError of mlp version 2, at requests.DLT[1]@7."""
    assert selected == filters.matches(dead_letter(at=(1, 7)))


AVAILABLE = {0: (0, 10), 1: (5, 8), 2: (0, 0)}


@pytest.mark.parametrize(
    ("filters", "limit", "newest", "expected"),
    [
        pytest.param(Filters(), None, True, AVAILABLE, id="everything"),
        pytest.param(Filters(), 2, True, {0: (8, 10), 1: (6, 8), 2: (0, 0)}, id="the-last-2-of-each"),
        pytest.param(Filters(), 2, False, {0: (0, 2), 1: (5, 7), 2: (0, 0)}, id="the-first-2-of-each"),
        pytest.param(Filters(), 50, True, AVAILABLE, id="a-limit-over-the-size"),
        pytest.param(Filters(partition=1), None, True, {1: (5, 8)}, id="one-partition"),
        pytest.param(Filters(partition=0, offsets=(3, 5)), None, True, {0: (3, 6)}, id="an-inclusive-range"),
        pytest.param(Filters(partition=0, offsets=(3, None)), 2, True, {0: (8, 10)}, id="the-last-2-of-a-range"),
        pytest.param(Filters(partition=1, offsets=(0, 2)), None, True, {1: (5, 5)}, id="a-range-deleted-already"),
        pytest.param(Filters(partition=7), None, True, {}, id="no-such-partition"),
    ],
)
def test_read_ranges(filters: Filters, limit: int | None, newest: bool, expected: dict[int, tuple[int, int]]) -> None:
    """Only the offsets that can be selected are read; --limit takes the newest (or oldest) of each partition."""
    assert expected == read_ranges(AVAILABLE, filters, limit=limit, newest=newest)


# ---------------------------------------------------------------------------------------------
# Replaying


def test_a_replay_sends_the_original_back_with_a_replay_count() -> None:
    """Key, value and original headers unchanged, to the original topic and partition, counted 1."""
    letter = dead_letter()

    replay = decide(letter)

    assert Replay(letter, "requests", 3, b"r1", letter.value, (*OWN, (h.REPLAY_COUNT, b"1")), 1) == replay


def test_a_replay_of_a_replay_counts_on() -> None:
    """The count the dead letter's original headers carry goes up by one, in place of the old header."""
    letter = dead_letter(headers=(("a", b"1"), (h.REPLAY_COUNT, b"1"), ("b", b"2")))

    replay = decide(letter)

    assert isinstance(replay, Replay)
    assert ((("a", b"1"), ("b", b"2"), (h.REPLAY_COUNT, b"2")), 2) == (replay.headers, replay.count)


@pytest.mark.parametrize(
    ("original", "count", "expected"),
    [
        ((), 1, ((h.REPLAY_COUNT, b"1"),)),
        (OWN, 1, (*OWN, (h.REPLAY_COUNT, b"1"))),
        (((h.REPLAY_COUNT.upper(), b"4"), ("x", b"")), 5, (("x", b""), (h.REPLAY_COUNT, b"5"))),
        (((h.REPLAY_COUNT, b"1"), (h.REPLAY_COUNT, b"2")), 3, ((h.REPLAY_COUNT, b"3"),)),
    ],
)
def test_replayed_headers_hold_one_count_last(
    original: tuple[tuple[str, bytes], ...], count: int, expected: tuple[tuple[str, bytes], ...]
) -> None:
    """Every old count header (of any case) goes; the others keep their order; the new count comes last."""
    assert expected == replayed_headers(original, count)


DECISION_CASES = [
    pytest.param({}, {}, Replay, "", id="replayed"),
    pytest.param({"headers": ((h.REPLAY_COUNT, b"2"),)}, {}, Replay, "", id="under-the-cap"),
    pytest.param({"headers": ((h.REPLAY_COUNT, b"3"),)}, {}, Refuse, "", id="at-the-cap"),
    pytest.param({"headers": ((h.REPLAY_COUNT, b"9"),)}, {"max_replays": 10}, Replay, "", id="a-higher-cap"),
    pytest.param({"headers": ((h.REPLAY_COUNT, b"1"),)}, {"max_replays": 1}, Refuse, "", id="cap-of-one"),
    pytest.param({"headers": ((h.REPLAY_COUNT, b"x"),)}, {}, Refuse, "", id="an-unreadable-count"),
    pytest.param({"value": b"v" * 5000, "limit": 4500}, {}, Skip, "value omitted", id="value-omitted"),
    pytest.param(
        {"value": None, "key": b"k" * 5000, "headers": (), "limit": 4500}, {}, Skip, "key omitted", id="key-omitted"
    ),
    pytest.param(
        {"value": b"", "headers": (("h", b"x" * 5000),), "limit": 4500}, {}, Skip, "headers omitted", id="headers"
    ),
    pytest.param(
        {"value": b"v" * 5000, "limit": 4500, "headers": ((h.REPLAY_COUNT, b"3"),)},
        {},
        Refuse,
        "",
        id="over-the-cap-and-incomplete",
    ),
]


@pytest.mark.parametrize(("letter_args", "decide_args", "kind", "reason"), DECISION_CASES)
def test_what_a_replay_does_with_each_dead_letter(
    letter_args: dict[str, object], decide_args: dict[str, int], kind: type, reason: str
) -> None:
    """Replayed when whole and under the cap (default 3); refused at the cap; skipped when incomplete."""
    decision = decide(dead_letter(**letter_args), **decide_args)  # type: ignore[arg-type]

    assert kind is type(decision)
    assert reason == getattr(decision, "reason", "")


def test_a_tombstone_replays_as_a_null_value() -> None:
    """The marker's empty value goes back as null, with no key, as the original was."""
    replay = decide(dead_letter(None, key=None, error=DecodeError("empty"), stage="decode"))

    assert isinstance(replay, Replay)
    assert (None, None) == (replay.key, replay.value)


def test_a_null_value_beside_a_key_replays_as_null() -> None:
    """The worker keeps a keyed null value null; so does the replay."""
    replay = decide(dead_letter(None, error=DecodeError("empty"), stage="decode"))

    assert isinstance(replay, Replay)
    assert (b"r1", None) == (replay.key, replay.value)


def test_to_sends_elsewhere_and_leaves_the_partition_to_the_partitioner() -> None:
    """--to names the topic; the original partition means nothing there."""
    replay = decide(dead_letter(), to="requests-again")

    assert isinstance(replay, Replay)
    assert ("requests-again", None) == (replay.topic, replay.partition)


RETRIED = (
    (h.RETRY_ATTEMPTS, h.encode_int(3)),
    (h.RETRY_ORIGINAL_TIMESTAMP, h.encode_big_integer(WRITTEN_AT - 70_000)),
    (h.RETRY_BACKOFF_TIMESTAMP, h.encode_big_integer(WRITTEN_AT - 1_000)),
    (h.RETRY_ERROR, b"InferenceTimeout: slow"),
)


def test_a_dead_letter_of_a_last_retry_goes_back_to_the_input_topic_as_first_sent() -> None:
    """Read from requests-retry-10000 after its last attempt: the replay goes to requests (the partitioner
    chooses, as for the first send), without the worker's retry_topic-* headers, counted 1."""
    letter = dead_letter(topic="requests-retry-10000", headers=(*OWN, *RETRIED))

    replay = decide(letter)

    assert Replay(letter, "requests", None, b"r1", letter.value, (*OWN, (h.REPLAY_COUNT, b"1")), 1) == replay


@pytest.mark.parametrize(
    ("topic", "headers"),
    [
        pytest.param("requests-retry-10000", OWN, id="no-retry-attempts-header"),
        pytest.param("requests-retry-soon", (*OWN, *RETRIED), id="not-a-delay"),
        pytest.param("-retry-10", (*OWN, *RETRIED), id="no-input-name"),
    ],
)
def test_a_topic_that_only_looks_like_a_retry_topic_is_replayed_to_itself(
    topic: str, headers: tuple[tuple[str, bytes], ...]
) -> None:
    """Only a `<input>-retry-<ms>` topic whose record carries retry_topic-attempts is a retry topic."""
    replay = decide(dead_letter(topic=topic, headers=headers))

    assert isinstance(replay, Replay)
    assert (topic, 3, (*headers, (h.REPLAY_COUNT, b"1"))) == (replay.topic, replay.partition, replay.headers)


def test_to_wins_over_the_input_topic_of_a_retry_and_the_retry_headers_still_go() -> None:
    """--to names the topic whatever the dead letter came from."""
    replay = decide(dead_letter(topic="requests-retry-10000", headers=(*OWN, *RETRIED)), to="elsewhere")

    assert isinstance(replay, Replay)
    assert ("elsewhere", None, (*OWN, (h.REPLAY_COUNT, b"1"))) == (replay.topic, replay.partition, replay.headers)


def test_a_dead_letter_without_an_original_topic_needs_to() -> None:
    """Without kafka_dlt-original-topic a replay has nowhere to go, unless --to says."""
    letter = DeadLetter("x.DLT", 0, 0, 0, b"k", b"v")

    assert (Skip(letter, "no original topic"), "y") == (decide(letter), getattr(decide(letter, to="y"), "topic", ""))


def test_a_partition_the_topic_no_longer_has_is_left_to_the_partitioner() -> None:
    """A topic recreated with fewer partitions: the replay goes where the partitioner puts it."""
    replay = decide(dead_letter())
    assert isinstance(replay, Replay)

    [kept] = place([replay], {"requests": {0, 1, 2, 3}})
    [moved] = place([replay], {"requests": {0, 1}})

    assert (3, None) == (kept.partition, moved.partition)


def test_the_outcome_counts_by_original_topic_what_was_acknowledged() -> None:
    """A failed record is not counted as replayed; an aborted transaction replayed nothing."""
    plan = Plan()
    for offset, letter_args in enumerate([{}, {}, {"value": b"v" * 5000, "limit": 4500}]):
        plan.add(decide(dead_letter(at=(0, offset), **letter_args)))  # type: ignore[arg-type]
    plan.add(decide(DeadLetter("x.DLT", 0, 9, 0, b"k", b"v")))

    failed = Outcome(plan, ((plan.replays[0], "MessageSizeTooLargeError"),))
    aborted = Outcome(plan, aborted="1 of 2 records failed")

    assert {"(none)": (0, 1, 0), "requests": (2, 1, 0)} == Outcome(plan).by_original_topic()
    assert {"(none)": (0, 1, 0), "requests": (1, 1, 0)} == failed.by_original_topic()
    assert ([], ["requests"]) == (aborted.replayed, plan.targets)


def test_an_inference_failure_names_its_model() -> None:
    """Dead letters of the infer stage carry the model; the fqcn is the worker's error class."""
    letter = dead_letter(error=InferenceError("Gather"), stage="infer", model=("failing", "1", "cd" * 32))

    assert ("infer", "InferenceError", ("failing", "1")) == (letter.stage, letter.error, letter.model)
    assert "schemas.errors.InferenceError" == letter.text(h.DLT_EXCEPTION_FQCN)
