"""The topics of the contract: their default names, and the names derived from others.

Producers, workers and the lifecycle commands meet on these names, so each is defined here once.
"""

from __future__ import annotations

DEFAULT_INPUT_TOPIC = "streamscore.requests"
DEFAULT_RESULTS_TOPIC = "streamscore.results"
DEFAULT_CONTROL_TOPIC = "streamscore.control"  # desired model versions (compacted)
DEFAULT_GROUP_ID = "streamscore"

DEAD_LETTER_SUFFIX = ".DLT"  # as Spring Kafka's plain DeadLetterPublishingRecoverer names it
SHADOW_SUFFIX = ".shadow"
STATUS_SUFFIX = ".status"
RETRY_INFIX = "-retry-"  # Spring Kafka's retry topics: <topic>-retry-<delay ms>


def dead_letter_topic_of(input_topic: str) -> str:
    """The default dead-letter topic of an input topic: `<input>.DLT`."""
    return input_topic + DEAD_LETTER_SUFFIX


def shadow_topic_of(results_topic: str) -> str:
    """Where a shadow version's results go by default: `<results>.shadow`."""
    return results_topic + SHADOW_SUFFIX


def status_topic_of(control_topic: str) -> str:
    """Where workers report what they serve: `<control>.status` (compacted)."""
    return control_topic + STATUS_SUFFIX


def retry_topic_of(input_topic: str, delay_ms: int) -> str:
    """The retry topic of an input topic for one delay: `<input>-retry-<delay ms>`, as Spring Kafka names it."""
    return f"{input_topic}{RETRY_INFIX}{delay_ms}"


def retried_topic_of(topic: str) -> str | None:
    """The input topic `topic` is a retry topic of (`<input>-retry-<delay ms>` -> `<input>`); None if it is not one."""
    stem, infix, delay = topic.rpartition(RETRY_INFIX)
    return stem if infix and stem and delay.isdigit() else None
