"""Committing input offsets: only those whose every predecessor is acknowledged (worker/offsets.py)."""

from __future__ import annotations

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from transport.seams import GroupConsumer
from worker.offsets import OffsetTracker

log = structlog.get_logger("streamscore.worker")


class Committer:
    """Commits the acknowledged prefix of every assigned partition of the input topic."""

    def __init__(self, consumer: GroupConsumer, topic: str, tracker: OffsetTracker[int]) -> None:
        self.consumer = consumer
        self.topic = topic
        self.tracker = tracker

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit what may be committed (on `partitions`, or on every assigned one)."""
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}
        offsets = {
            partition: offset
            for partition, offset in self.tracker.committable().items()
            if partition in assigned and (partitions is None or partition in partitions)
        }
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(self.topic, p): offset for p, offset in offsets.items()})
        except KafkaError as error:
            log.warning(
                "commit_failed",
                error=repr(error),
                partitions=len(offsets),
                hint="the records after the last commit will be delivered again",
            )
            return
        self.tracker.mark_committed(offsets)
