"""Creating topics on a broker (the local one, or any other) and waiting until they can be used."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from broker.errors import LocalBrokerError

TOPIC_ALREADY_EXISTS = 36


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 1, *, timeout_s: float = 30.0) -> None:
    """Create topics (replication factor 1; existing ones are kept) and wait until all their
    partitions have a leader in the metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(name, partitions, 1) for name in names],
                timeout_ms=int(timeout_s * 1000),
            )
            _raise_topic_errors(response.topic_errors)
            await _wait_for_leaders(admin, names)
    except TimeoutError:
        raise LocalBrokerError(
            f"topics {', '.join(names)} were not ready on {bootstrap} within {timeout_s:.0f}s"
        ) from None
    except KafkaConnectionError:
        raise LocalBrokerError(
            f"no broker answers on {bootstrap} (start one with `streamscore broker start`)"
        ) from None
    except KafkaError as error:
        raise LocalBrokerError(f"could not create topics on {bootstrap}: {error}") from None
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: Sequence[str]) -> None:
    while True:
        topics = await admin.describe_topics(list(names))
        if all(_topic_ready(topic) for topic in topics) and len(topics) == len(names):
            return
        await asyncio.sleep(0.1)


def _topic_ready(topic: dict[str, object]) -> bool:
    partitions = topic.get("partitions")
    if topic.get("error_code") != 0 or not isinstance(partitions, list) or not partitions:
        return False
    return all(partition["leader"] >= 0 for partition in partitions)


def _raise_topic_errors(topic_errors: Sequence[tuple[object, ...]]) -> None:
    failed = [
        f"{error[0]} (error {error[1]}{': ' + str(error[2]) if len(error) > 2 else ''})"
        for error in topic_errors
        if error[1] not in (0, TOPIC_ALREADY_EXISTS)
    ]
    if failed:
        raise LocalBrokerError(f"could not create topics: {', '.join(failed)}")
