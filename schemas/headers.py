"""Kafka record header names of the contract, and their encodings.

Requests may carry (names are matched case-insensitively, as in HTTP):
    streamscore-model          the model to score with (default: the worker's default model)
    streamscore-model-version  pin a version of that model
    inference-header-content-length
                               length of the JSON header when binary tensor data follows it
    mlserver-model, mlserver-version
                               MLServer's names for the first two, accepted as well

Results carry the correlation headers of their request (traceparent, ...) and
    streamscore-model, streamscore-model-version
    inference-header-content-length
                               only on a result some of whose outputs are binary (the request
                               asked for it): the length of its JSON header, as on a request

Dead letters keep the request's headers byte for byte and add Spring Kafka's `kafka_dlt-*`
headers (binary ints and longs are big-endian) and ours, `streamscore-dlt-*` (UTF-8 text):
stage, error, attempts, worker, model, model-version, model-sha256.

Records on retry topics keep the request's headers too, with Spring Kafka's `retry_topic-*`
headers set: attempts (a 4-byte int: the attempt this delivery is), the original timestamp and
the time the record is due (milliseconds since the epoch, as Java's BigInteger.toByteArray writes
them: big-endian two's complement, as few bytes as it takes), and ours: the error of the last
attempt (`streamscore-retry-error`).

A record that `streamscore dlq replay` sent back carries
    streamscore-replay-count   how many times it was replayed (decimal text); a dead letter keeps
                               it among the original headers, so the next replay counts on
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MODEL = "streamscore-model"
MODEL_VERSION = "streamscore-model-version"
MODEL_ALIASES = (MODEL, "mlserver-model")
MODEL_VERSION_ALIASES = (MODEL_VERSION, "mlserver-version")
BINARY_HEADER_LENGTH = "inference-header-content-length"

# Spring Kafka (KafkaHeaders.DLT_*)
DLT_ORIGINAL_TOPIC = "kafka_dlt-original-topic"
DLT_ORIGINAL_PARTITION = "kafka_dlt-original-partition"
DLT_ORIGINAL_OFFSET = "kafka_dlt-original-offset"
DLT_ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
DLT_ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
DLT_ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
DLT_EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
DLT_EXCEPTION_CAUSE_FQCN = "kafka_dlt-exception-cause-fqcn"
DLT_EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
DLT_EXCEPTION_STACKTRACE = "kafka_dlt-exception-stacktrace"

# Ours, on dead letters: a replay strips every `kafka_dlt-*` and `streamscore-dlt-*` header
DLT_PREFIXES = ("kafka_dlt-", "streamscore-dlt-")
DLT_STAGE = "streamscore-dlt-stage"
DLT_ERROR = "streamscore-dlt-error"
DLT_ATTEMPTS = "streamscore-dlt-attempts"
DLT_WORKER = "streamscore-dlt-worker"
DLT_MODEL = "streamscore-dlt-model"
DLT_MODEL_VERSION = "streamscore-dlt-model-version"
DLT_MODEL_SHA256 = "streamscore-dlt-model-sha256"
# When the dead letter cannot carry all of the original record (larger than the dead-letter topic
# allows, or a tombstone): what was left out, its size, and why. The original stays at its
# topic, partition and offset (the kafka_dlt-original-* headers).
DLT_VALUE_OMITTED = "streamscore-dlt-value-omitted"
DLT_HEADERS_OMITTED = "streamscore-dlt-headers-omitted"
DLT_KEY_OMITTED = "streamscore-dlt-key-omitted"
DLT_TOMBSTONE = "streamscore-dlt-tombstone"  # the original value was null (written as empty bytes)

# Spring Kafka (RetryTopicHeaders), on records sent to a retry topic
RETRY_ATTEMPTS = "retry_topic-attempts"
RETRY_ORIGINAL_TIMESTAMP = "retry_topic-original-timestamp"
RETRY_BACKOFF_TIMESTAMP = "retry_topic-backoff-timestamp"
RETRY_ERROR = "streamscore-retry-error"
RETRY_HEADERS = (RETRY_ATTEMPTS, RETRY_ORIGINAL_TIMESTAMP, RETRY_BACKOFF_TIMESTAMP, RETRY_ERROR)

# Not a dead-letter header: it travels with the replayed record, and back into its next dead letter
REPLAY_COUNT = "streamscore-replay-count"
# Share groups (KIP-932): the broker's count of deliveries of the input record to the group, on its
# result and its dead letter (a decimal number, 1 on the first delivery).
DELIVERY_COUNT = "streamscore-delivery-count"

TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}


def encode_int(value: int) -> bytes:
    """A 4-byte big-endian int, as Spring writes the original partition."""
    return struct.pack(">i", value)


def encode_long(value: int) -> bytes:
    """An 8-byte big-endian long, as Spring writes the original offset and timestamp."""
    return struct.pack(">q", value)


def encode_big_integer(value: int) -> bytes:
    """As Java's `BigInteger.valueOf(value).toByteArray()`: big-endian two's complement, fewest bytes."""
    magnitude = value if value >= 0 else ~value
    return value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def decode_big_integer(raw: bytes) -> int:
    """What `encode_big_integer` (or Java's `new BigInteger(raw)`) wrote; ValueError when empty."""
    if not raw:
        raise ValueError("an empty big integer")
    return int.from_bytes(raw, "big", signed=True)


def decode_int(raw: bytes) -> int:
    return int(struct.unpack(">i", raw)[0])


def decode_long(raw: bytes) -> int:
    return int(struct.unpack(">q", raw)[0])


def header_length(headers: Sequence[tuple[str, bytes]]) -> int | None:
    """The JSON header's length in `inference-header-content-length` (any case), or None.

    ValueError when the header is there but not a decimal integer.
    """
    raw = first(headers, (BINARY_HEADER_LENGTH,)) if headers else None
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"header {BINARY_HEADER_LENGTH}={raw!r} is not an integer") from None


def first(headers: Sequence[tuple[str, bytes]], names: tuple[str, ...]) -> str | None:
    """The UTF-8 value of the first header called one of `names` (lower case), or None.

    Names compare case-insensitively, as HTTP's do: `Inference-Header-Content-Length` is found.
    """
    for key, value in headers:
        if value is not None and (key in names or key.lower() in names):
            return value.decode("utf-8", errors="replace")
    return None
