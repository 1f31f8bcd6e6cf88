"""Dead letters: the original record byte for byte, plus headers saying what failed and where."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from schemas import headers as h
from schemas.records import Record

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
    if model is not None:
        name, version, sha256 = model
        out += [
            (h.DLT_MODEL, name.encode()),
            (h.DLT_MODEL_VERSION, version.encode()),
            (h.DLT_MODEL_SHA256, sha256.encode()),
        ]
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
