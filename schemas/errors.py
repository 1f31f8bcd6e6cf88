"""The exceptions of streamscore, one tree.

    StreamscoreError
    ├── RecordError                 a record cannot be scored; permanent: dead-letter it at once
    │   ├── DecodeError             stage "decode":   empty, oversized, not JSON, not a V2 request
    │   ├── ValidationError         stage "validate": names, shapes, datatypes, row limits, NaN
    │   ├── ModelNotFoundError      stage "validate": no such model, or no such version
    │   │   └── ModelUnavailableError   not on this worker (yet): a version not pulled   [retry later]
    │   ├── InferenceError          stage "infer":    onnxruntime raised on this record alone
    │   │   └── InferenceTimeout    stage "infer":    the model ran past the inference timeout  [retry later]
    │   └── DeliveryLimitError      stage "consume":  a share group delivered it as often as it allows
    ├── TransientError              retriable: the same call may succeed later
    │   ├── BrokerUnavailableError  the broker could not be reached or timed out
    │   └── ProduceError            a result or dead letter was not acknowledged (retriable cause)
    ├── ResultRejectedError         stage "produce": the broker refused a result for good
    │                               (too large, invalid); the input is dead-lettered instead
    ├── ModelLoadError              a model file is missing, unreadable or not runnable
    ├── ConfigError                 a setting is missing or invalid; fix the environment or flags
    └── FatalError                  the worker must stop; what it has not acknowledged stays
        │                           uncommitted (exit 1: the supervisor starts it again)
        └── NotAuthorizedError      the broker refuses an operation for want of an ACL (exit 2:
                                    restarting would not help; the message names topic and ACL)

`retry_later` (record errors) says whether the same record may be scored later: with retry
topics set (STREAMSCORE_RETRY_TOPIC_DELAYS_MS), such a record goes to the next retry topic
instead of the dead-letter topic, until its attempts run out (worker/retrytopics.py).
`retriable` says whether retrying the same operation can help; the retry policy is
`retry_if_exception(lambda e: getattr(e, "retriable", False))`. `stage` says where a
record failed, and becomes the `streamscore-stage` header of its dead letter.
"""

from __future__ import annotations

from typing import ClassVar


class StreamscoreError(Exception):
    """Base of every error streamscore raises on purpose."""

    retriable: ClassVar[bool] = False


class RecordError(StreamscoreError):
    """A record that cannot be scored; it goes to the dead-letter topic with the reason."""

    stage: ClassVar[str] = "decode"
    retry_later: ClassVar[bool] = False


class DecodeError(RecordError):
    """The record value is not a readable V2 inference request."""

    stage = "decode"


class ValidationError(RecordError):
    """The request is well formed but does not fit the model or the limits."""

    stage = "validate"


class ModelNotFoundError(RecordError):
    """The request names a model, or pins a version, that this worker cannot serve."""

    stage = "validate"


class ModelUnavailableError(ModelNotFoundError):
    """The model, or the version a request pins, is not on this worker: it may be pulled later."""

    retry_later = True


class InferenceError(RecordError):
    """onnxruntime raised while scoring this record on its own."""

    stage = "infer"


class InferenceTimeout(InferenceError):
    """A model run took longer than the inference timeout and was stopped (a loaded machine, or a
    model waiting on something outside it, may do better later)."""

    retry_later = True


class DeliveryLimitError(RecordError):
    """A share group delivered the record as many times as its `share.delivery.count.limit` allows
    without an outcome (each earlier delivery crashed, timed out or was released): dead-lettered now,
    before the broker would archive it unseen."""

    stage = "consume"


class ResultRejectedError(RecordError):
    """The broker refused the result for good (for example: larger than the topic allows)."""

    stage = "produce"


class TransientError(StreamscoreError):
    """A failure that may pass: retried with backoff, bounded in attempts and time."""

    retriable = True


class BrokerUnavailableError(TransientError):
    """The Kafka broker could not be reached, or did not answer in time."""


class ProduceError(TransientError):
    """A record was not acknowledged by the broker for a reason that may pass."""


class ModelLoadError(StreamscoreError):
    """A model file is missing, unreadable, or onnxruntime cannot run it."""


class ConfigError(StreamscoreError):
    """A setting is missing or invalid."""


class FatalError(StreamscoreError):
    """The worker cannot keep its promise (a dead letter refused for good); it stops, and every offset
    after the record that failed stays uncommitted."""

    exit_code: ClassVar[int] = 1


class NotAuthorizedError(FatalError):
    """The broker refuses a write, read or commit for want of an ACL; the message names topic and operation."""

    exit_code = 2
