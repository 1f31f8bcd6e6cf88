"""How large a record may be: on a topic (its `max.message.bytes`), and as the client counts it."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from transport.connection import Connection

log = structlog.get_logger("streamscore.transport")

#: Kafka's default `max.message.bytes` of a topic (and `message.max.bytes` of a broker).
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION

Headers = Sequence[tuple[str, bytes]]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """The bytes of a record alone in a batch, as the producer counts them against `max_request_size`.

    A record this size fits a topic whose `max.message.bytes` is at least as large (uncompressed).
    """
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


async def topic_limits(connection: Connection, topics: Sequence[str]) -> dict[str, int]:
    """Each topic's `max.message.bytes`; Kafka's default for a topic that cannot be described.

    A topic that does not exist yet, or that this principal may not describe (DESCRIBE_CONFIGS),
    gets the default, with a warning: records up to it are written, larger ones are refused by
    the broker.
    """
    limits = dict.fromkeys(topics, DEFAULT_MAX_MESSAGE_BYTES)
    admin = AIOKafkaAdminClient(**connection.kafka_options())
    try:
        await admin.start()
        resources = [ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None}) for name in topics]
        for response in await admin.describe_configs(resources):
            limits.update(_limits_in(response))
    except KafkaError as error:
        log.warning("topic_limits_unknown", topics=list(topics), error=repr(error), assumed=DEFAULT_MAX_MESSAGE_BYTES)
    finally:
        await admin.close()
    return limits


def _limits_in(response: object) -> dict[str, int]:
    found: dict[str, int] = {}
    for error_code, _message, _kind, name, entries, *_ in getattr(response, "resources", []):
        if error_code == UNKNOWN_TOPIC:  # not created yet (an unused shadow topic): Kafka's default will apply
            continue
        if error_code != 0:
            log.warning("topic_limit_unknown", topic=name, error_code=error_code, assumed=DEFAULT_MAX_MESSAGE_BYTES)
            continue
        for entry in entries:
            if entry[0] == "max.message.bytes" and entry[1] is not None:
                found[name] = int(entry[1])
    return found
