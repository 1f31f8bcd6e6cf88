"""Dead letters: the original record byte for byte, plus headers saying what failed and where.

A dead letter must be writable whatever the record was. `fit` makes it so: a record with neither
key nor value (which a producer cannot send) is written with an empty value and
`streamscore-dlt-tombstone` (a null value beside a key stays null); a record too large for the
dead-letter topic loses its value, then its headers, then its key, each omission said in a
`streamscore-dlt-*-omitted` header with the size and the reason. Its topic, partition and offset
(`kafka_dlt-original-*`) always say where the original can still be read.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from schemas import headers as h
from schemas.records import Record, delivery_count_of
from transport.limits import record_size

MAX_STACKTRACE_BYTES = 8192


def fqcn(error: BaseException) -> str:
    """The fully qualified class name of an exception (Spring's `exception-fqcn`)."""
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def dead_letter_headers(
    record: Record,
    error: BaseException,
    *,
    stage: str,
    group_id: str,
    worker: str,
    attempts: int,
    model: tuple[str, str, str] | None,
) -> list[tuple[str, bytes]]:
    """The record's own headers, then Spring Kafka's `kafka_dlt-*`, then ours.

    `model` is (name, version, sha256) of the model the record was meant for, if known.
    """
    out = [*(record.headers or ()), *_spring_headers(record, error, group_id)]
    out += [
        (h.DLT_STAGE, stage.encode()),
        (h.DLT_ERROR, type(error).__name__.encode()),
        (h.DLT_ATTEMPTS, str(attempts).encode()),
        (h.DLT_WORKER, worker.encode()),
    ]
    if (deliveries := delivery_count_of(record)) is not None:  # read through a share group
        out.append((h.DELIVERY_COUNT, str(deliveries).encode()))
    if model is not None:
        name, version, sha256 = model
        out += [
            (h.DLT_MODEL, name.encode()),
            (h.DLT_MODEL_VERSION, version.encode()),
        ]
        if sha256:  # unknown for a result refused after scoring
            out.append((h.DLT_MODEL_SHA256, sha256.encode()))
    return out


def _spring_headers(record: Record, error: BaseException, group_id: str) -> list[tuple[str, bytes]]:
    """Spring Kafka's `kafka_dlt-*` headers, in its encodings."""
    out = [
        (h.DLT_ORIGINAL_TOPIC, record.topic.encode()),
        (h.DLT_ORIGINAL_PARTITION, h.encode_int(record.partition)),
        (h.DLT_ORIGINAL_OFFSET, h.encode_long(record.offset)),
        (h.DLT_ORIGINAL_TIMESTAMP, h.encode_long(record.timestamp)),
        (h.DLT_ORIGINAL_TIMESTAMP_TYPE, h.TIMESTAMP_TYPES.get(record.timestamp_type, "CreateTime").encode()),
        (h.DLT_ORIGINAL_CONSUMER_GROUP, group_id.encode()),
        (h.DLT_EXCEPTION_FQCN, fqcn(error).encode()),
        (h.DLT_EXCEPTION_MESSAGE, str(error).encode()),
        (h.DLT_EXCEPTION_STACKTRACE, _stacktrace(error)),
    ]
    if error.__cause__ is not None:
        out.append((h.DLT_EXCEPTION_CAUSE_FQCN, fqcn(error.__cause__).encode()))
    return out


def _stacktrace(error: BaseException) -> bytes:
    text = "".join(traceback.format_exception(error)).encode()
    return text[-MAX_STACKTRACE_BYTES:]


def added_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """The headers a dead letter added, by name (for readers and tests)."""
    return {key: value for key, value in headers if key.startswith(h.DLT_PREFIXES)}


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers of the original record, as a replay sends them back."""
    return [(key, value) for key, value in headers if not key.startswith(h.DLT_PREFIXES)]


Written = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers of a dead letter


def fit(record: Record, headers: list[tuple[str, bytes]], limit: int, topic: str) -> Written:
    """The dead letter of `record` (`headers`: its own, then the added ones) as `topic` can take it.

    Leaves out, in this order and only as far as needed to fit `limit` bytes: the value, the
    record's own headers, the key, the stack trace. A record with neither key nor value gets an
    empty value (a producer cannot send neither).
    """
    key, value = record.key, record.value
    count = len(record.headers or ())
    own, added = headers[:count], headers[count:]
    if key is None and value is None:
        value = b""
        added.append((h.DLT_TOMBSTONE, b"the original key and value were null"))
    why = f"larger than {topic} takes (max.message.bytes {limit}); read it at {_position(record)}"
    if record_size(key, value, own + added) > limit and value:
        added.append((h.DLT_VALUE_OMITTED, f"{len(value)} bytes, {why}".encode()))
        value = b""
    if record_size(key, value, own + added) > limit and own:
        size = sum(len(name) + len(v or b"") for name, v in own)
        added.append((h.DLT_HEADERS_OMITTED, f"{len(own)} headers of {size} bytes, {why}".encode()))
        own = []
    if record_size(key, value, own + added) > limit and key:
        added.append((h.DLT_KEY_OMITTED, f"{len(key)} bytes, {why}".encode()))
        key, value = None, value or b""
    if record_size(key, value, own + added) > limit:
        added = [(name, b"" if name == h.DLT_EXCEPTION_STACKTRACE else v[:1024]) for name, v in added]
    return key, value, own + added


def _position(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
