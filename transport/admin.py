"""Creating topics and waiting until clients can use them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from schemas.errors import BrokerUnavailableError, ConfigError
from transport.connection import Connection

TOPIC_ALREADY_EXISTS = 36
MAX_REPLICATION = 3


async def create_topics(
    connection: Connection | str,
    names: Sequence[str],
    partitions: int = 1,
    *,
    replication: int | None = None,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics that do not exist yet and wait until every partition has a leader.

    `connection` is a Connection or a bootstrap address. `replication` None: as many replicas
    as the cluster has brokers, at most three. Raises BrokerUnavailableError when the broker
    cannot be reached in `timeout_s`, ConfigError when it refuses a topic.
    """
    if isinstance(connection, str):
        connection = Connection(bootstrap_servers=connection)
    admin = AIOKafkaAdminClient(**connection.kafka_options())
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            wanted = [name for name in names if name not in set(await admin.list_topics())]
            if wanted:
                replicas = replication or min(MAX_REPLICATION, len((await admin.describe_cluster())["brokers"]))
                topics = [NewTopic(n, partitions, replicas, topic_configs=dict(configs or {})) for n in wanted]
                response = await admin.create_topics(topics, timeout_ms=int(timeout_s * 1000))
                _raise_topic_errors(response.topic_errors)
            await wait_for_leaders(admin, names)
    except TimeoutError:
        raise BrokerUnavailableError(
            f"topics {', '.join(names)} were not ready on {connection.bootstrap_servers} within {timeout_s:.0f}s"
        ) from None
    except KafkaConnectionError:
        raise BrokerUnavailableError(
            f"no broker answers on {connection.bootstrap_servers} (start one with `streamscore broker start`)"
        ) from None
    except KafkaError as error:
        if error.retriable:
            raise BrokerUnavailableError(f"cannot reach Kafka at {connection.bootstrap_servers}: {error}") from None
        raise ConfigError(f"could not create topics on {connection.bootstrap_servers}: {error}") from None
    finally:
        await admin.close()


async def wait_for_leaders(admin: AIOKafkaAdminClient, names: Sequence[str]) -> None:
    """Return once every partition of every topic in `names` has a leader."""
    while True:
        topics = await admin.describe_topics(list(names))
        if len(topics) == len(names) and all(_topic_ready(topic) for topic in topics):
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
        raise ConfigError(f"could not create topics: {', '.join(failed)}")
