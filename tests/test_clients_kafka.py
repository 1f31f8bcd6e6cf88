"""The worker's group consumer on the real broker: where it rewinds a partition to."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from tests.conftest import MakeTopics
from tests.harness import Out, produce
from worker.clients import KafkaClients
from worker.settings import Settings

pytestmark = pytest.mark.kafka


class Listener:
    """Hears nothing of interest: the test owns the only member of its group."""

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to finish."""

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to start."""


async def test_seek_to_committed_rewinds_to_the_beginning_or_to_a_committed_zero(
    kafka_bootstrap: str, make_topics: MakeTopics, unique_group: str
) -> None:
    """Exactly once, a partition whose transaction is aborted is read again from its committed
    offset. Before its first commit there is none, and aiokafka's own seek_to_committed left the
    position after the aborted records (it seeks only to a committed offset above 0): a broker
    outage longer than the transaction timeout lost them. The worker's consumer rewinds to the
    beginning then, to a committed 0, and to any other committed offset."""
    [topic] = await make_topics("in", partitions=1)
    tp = TopicPartition(topic, 0)
    await produce(kafka_bootstrap, topic, [Out(b"k", b"v%d" % i) for i in range(10)])
    settings = Settings(bootstrap_servers=kafka_bootstrap, input_topic=topic, group_id=unique_group)
    consumer = KafkaClients().consumer(settings, Listener())
    await consumer.start()
    try:
        read = 0
        while read < 10:
            read += sum(len(records) for records in (await consumer.getmany(timeout_ms=1000)).values())
        assert 10 == await consumer.position(tp)

        assert {tp: None} == await consumer.seek_to_committed(tp)
        assert 0 == await consumer.position(tp)

        await consumer.commit({tp: 0})
        consumer.seek(tp, 10)
        await consumer.seek_to_committed(tp)
        assert 0 == await consumer.position(tp)

        await consumer.commit({tp: 4})
        consumer.seek(tp, 10)
        await consumer.seek_to_committed(tp)
        assert 4 == await consumer.position(tp)
        fetched = await consumer.getmany(tp, timeout_ms=5000)
        assert b"v4" == fetched[tp][0].value
    finally:
        await consumer.stop()
