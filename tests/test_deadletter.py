"""Dead-letter headers: the original headers byte for byte, then Spring's kafka_dlt-*, then ours."""

from __future__ import annotations

import struct

import pytest

from schemas import headers as h
from schemas.errors import DecodeError, InferenceError, ValidationError
from tests.factories import make_record
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, record_size
from worker.deadletter import added_headers, dead_letter_headers, fit, fqcn, original_headers

ORIGINAL = (
    ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("binary", bytes(range(256))),
    ("traceparent", b"duplicate names keep their order"),
    ("empty", b""),
)
MODEL = ("iris", "3", "ab" * 32)


def _record(**overrides: object) -> object:
    fields: dict[str, object] = {
        "topic": "requests",
        "partition": 7,
        "offset": 2**40 + 3,
        "timestamp": 1_712_345_678_901,
        "timestamp_type": 1,
        "headers": ORIGINAL,
        "key": b"k",
    }
    fields.update(overrides)
    return make_record(b"\x00not json", **fields)  # type: ignore[arg-type]


def _headers(error: BaseException, **overrides: object) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        _record(**overrides),  # type: ignore[arg-type]
        error,
        stage="infer",
        group_id="scorers",
        worker="host-1/42",
        attempts=3,
        model=MODEL,
    )


def _raised(error: Exception, cause: Exception | None = None) -> Exception:
    try:
        if cause is None:
            raise error
        raise error from cause
    except Exception as caught:
        return caught


def test_original_headers_come_first_byte_for_byte() -> None:
    """The dead letter starts with the record's own headers, unchanged and in order."""
    out = _headers(ValidationError("bad"))

    assert list(ORIGINAL) == out[: len(ORIGINAL)]


def test_original_headers_gives_back_exactly_the_original() -> None:
    """original_headers() strips what the dead letter added and nothing else."""
    out = _headers(_raised(InferenceError("boom"), RuntimeError("ort")))

    assert list(ORIGINAL) == original_headers(out)


def test_spring_binary_headers_decode_with_struct() -> None:
    """Partition is a 4-byte big-endian int; offset and timestamp are 8-byte big-endian longs."""
    added = added_headers(_headers(ValidationError("bad")))

    assert (7,) == struct.unpack(">i", added[h.DLT_ORIGINAL_PARTITION])
    assert (2**40 + 3,) == struct.unpack(">q", added[h.DLT_ORIGINAL_OFFSET])
    assert (1_712_345_678_901,) == struct.unpack(">q", added[h.DLT_ORIGINAL_TIMESTAMP])
    assert [4, 8, 8] == [
        len(added[name]) for name in (h.DLT_ORIGINAL_PARTITION, h.DLT_ORIGINAL_OFFSET, h.DLT_ORIGINAL_TIMESTAMP)
    ]


def test_spring_text_headers() -> None:
    """Topic, timestamp type, consumer group and exception class and message are UTF-8 text."""
    added = added_headers(_headers(ValidationError("shape [2] is wrong: é")))

    assert b"requests" == added[h.DLT_ORIGINAL_TOPIC]
    assert b"LogAppendTime" == added[h.DLT_ORIGINAL_TIMESTAMP_TYPE]
    assert b"scorers" == added[h.DLT_ORIGINAL_CONSUMER_GROUP]
    assert b"schemas.errors.ValidationError" == added[h.DLT_EXCEPTION_FQCN]
    assert "shape [2] is wrong: é".encode() == added[h.DLT_EXCEPTION_MESSAGE]


def test_create_time_is_the_default_timestamp_type() -> None:
    """Timestamp type 0 is written as CreateTime."""
    added = added_headers(_headers(ValidationError("bad"), timestamp_type=0))

    assert b"CreateTime" == added[h.DLT_ORIGINAL_TIMESTAMP_TYPE]


def test_stacktrace_names_where_the_error_was_raised() -> None:
    """The stacktrace header holds the formatted traceback of a raised error."""
    added = added_headers(_headers(_raised(InferenceError("boom"))))

    stacktrace = added[h.DLT_EXCEPTION_STACKTRACE].decode()
    assert "Traceback (most recent call last)" in stacktrace
    assert "_raised" in stacktrace
    assert stacktrace.rstrip().endswith("schemas.errors.InferenceError: boom")


def test_cause_fqcn_only_when_there_is_a_cause() -> None:
    """kafka_dlt-exception-cause-fqcn names __cause__'s class, and is absent without one."""
    with_cause = added_headers(_headers(_raised(InferenceError("boom"), KeyError("x"))))
    without = added_headers(_headers(_raised(InferenceError("boom"))))

    assert b"builtins.KeyError" == with_cause[h.DLT_EXCEPTION_CAUSE_FQCN]
    assert h.DLT_EXCEPTION_CAUSE_FQCN not in without


def test_our_headers_say_stage_error_attempts_worker_and_model() -> None:
    """streamscore-dlt-* carry stage, error class, attempts, worker and the model's name, version, sha256."""
    added = added_headers(_headers(InferenceError("boom")))

    ours = {key: value for key, value in added.items() if key.startswith("streamscore-dlt-")}
    assert {
        h.DLT_STAGE: b"infer",
        h.DLT_ERROR: b"InferenceError",
        h.DLT_ATTEMPTS: b"3",
        h.DLT_WORKER: b"host-1/42",
        h.DLT_MODEL: b"iris",
        h.DLT_MODEL_VERSION: b"3",
        h.DLT_MODEL_SHA256: b"ab" * 32,
    } == ours


def test_model_headers_absent_when_the_model_is_unknown() -> None:
    """Without a model (e.g. a decode failure), no model headers are written."""
    out = dead_letter_headers(
        _record(),  # type: ignore[arg-type]
        ValidationError("bad"),
        stage="decode",
        group_id="g",
        worker="w",
        attempts=1,
        model=None,
    )

    names = {key for key, _ in out}
    assert not names & {h.DLT_MODEL, h.DLT_MODEL_VERSION, h.DLT_MODEL_SHA256}
    assert b"decode" == added_headers(out)[h.DLT_STAGE]


def test_record_without_headers_gets_only_added_headers() -> None:
    """A record with no headers yields a dead letter whose original headers are empty."""
    out = _headers(ValidationError("bad"), headers=())

    assert [] == original_headers(out)
    assert h.DLT_ORIGINAL_TOPIC == out[0][0]


def test_fqcn_is_module_and_qualified_name() -> None:
    """fqcn gives module.QualName, as Spring's exception-fqcn does for Java classes."""
    assert "schemas.errors.InferenceError" == fqcn(InferenceError("x"))
    assert "builtins.ValueError" == fqcn(ValueError())


# ---------------------------------------------------------------------------------------------
# Fitting a dead letter to its topic


def _fitted(record: object, limit: int) -> tuple[bytes | None, bytes | None, dict[str, bytes], int]:
    """Fit `record`'s dead letter to `limit`: key, value, added headers, and the written size."""
    headers = dead_letter_headers(
        record,  # type: ignore[arg-type]
        DecodeError("too large"),
        stage="decode",
        group_id="scorers",
        worker="w",
        attempts=1,
        model=None,
    )
    key, value, written = fit(record, headers, limit, "requests.DLT")  # type: ignore[arg-type]
    return key, value, added_headers(written), record_size(key, value, written)


def test_a_dead_letter_that_fits_is_the_record_unchanged() -> None:
    """Under the limit: key, value and the original headers stay byte for byte; nothing says omitted."""
    record = make_record(b"x" * 1000, key=b"k", headers=ORIGINAL)

    key, value, added, _ = _fitted(record, DEFAULT_MAX_MESSAGE_BYTES)

    assert (b"k", b"x" * 1000) == (key, value)
    assert not {h.DLT_VALUE_OMITTED, h.DLT_HEADERS_OMITTED, h.DLT_KEY_OMITTED, h.DLT_TOMBSTONE} & set(added)


@pytest.mark.parametrize("size", [1_048_000, 1_204_424, 5_000_000])
def test_a_value_too_large_for_the_topic_is_left_out_and_said_so(size: int) -> None:
    """A value the topic cannot take is left out: the dead letter fits, and says the size, the reason and
    where the original is (its own topic, partition and offset headers)."""
    record = make_record(b"v" * size, key=b"k", partition=3, offset=99)

    key, value, added, written = _fitted(record, DEFAULT_MAX_MESSAGE_BYTES)

    assert (b"k", b"") == (key, value)
    assert written <= DEFAULT_MAX_MESSAGE_BYTES
    note = added[h.DLT_VALUE_OMITTED].decode()
    assert f"{size} bytes" in note and "max.message.bytes 1048588" in note and "requests[3]@99" in note


def test_headers_too_large_go_after_the_value() -> None:
    """A record whose own headers alone pass the limit loses them too, and says how many and how large."""
    record = make_record(b"v", key=b"k", headers=[("h", b"x" * 600_000), ("i", b"y" * 600_000)])

    key, value, added, written = _fitted(record, DEFAULT_MAX_MESSAGE_BYTES)

    assert written <= DEFAULT_MAX_MESSAGE_BYTES
    assert (b"k", b"") == (key, value)
    assert added[h.DLT_HEADERS_OMITTED].startswith(b"2 headers of 1200002 bytes")


def test_a_huge_key_goes_last() -> None:
    """A key that alone passes the limit is left out as well: the dead letter still fits."""
    record = make_record(b"v", key=b"k" * 2_000_000)

    key, _, added, written = _fitted(record, DEFAULT_MAX_MESSAGE_BYTES)

    assert key is None
    assert written <= DEFAULT_MAX_MESSAGE_BYTES
    assert added[h.DLT_KEY_OMITTED].startswith(b"2000000 bytes")


def test_a_record_without_key_or_value_is_written_empty_and_marked() -> None:
    """Neither key nor value (what `kcat -Z` sends): written with an empty value, marked as a tombstone."""
    key, value, added, _ = _fitted(make_record(None, key=None), DEFAULT_MAX_MESSAGE_BYTES)

    assert (None, b"") == (key, value)
    assert h.DLT_TOMBSTONE in added


def test_a_keyed_tombstone_keeps_its_null_value() -> None:
    """A null value beside a key is sendable: it stays null, byte for byte, and is not marked."""
    key, value, added, _ = _fitted(make_record(None, key=b"k"), DEFAULT_MAX_MESSAGE_BYTES)

    assert (b"k", None) == (key, value)
    assert h.DLT_TOMBSTONE not in added
