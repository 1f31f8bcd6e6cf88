"""Follow the control topic: every desired-state change reaches `apply`, in order.

The follower reads the compacted control topic from the beginning (no consumer group: every
worker process reads all of it), hands the latest state of each model to `apply` before the
worker starts consuming requests, then keeps following. If the topic does not exist yet, the
worker serves without it and looks again every `MISSING_TOPIC_RETRY_S`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from registry.bus import behind, partitions_of
from registry.control import DesiredState, decode_state
from schemas.errors import ConfigError

log = structlog.get_logger("streamscore.control")

MISSING_TOPIC_RETRY_S = 5.0
Apply = Callable[[DesiredState], Awaitable[None]]


class ControlFollower:
    """Reads desired states from the control topic and applies them."""

    def __init__(self, options: dict[str, Any], topic: str, apply: Apply) -> None:
        self.topic = topic
        self.apply = apply
        self.consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
        self.assigned = False

    async def start(self) -> None:
        """Connect, and apply the current state of every model (if the topic exists)."""
        await self.consumer.start()
        await self._catch_up()

    async def _catch_up(self) -> None:
        partitions = [TopicPartition(self.topic, p) for p in sorted(await partitions_of(self.consumer, self.topic))]
        if not partitions:
            log.warning(
                "control_topic_missing",
                topic=self.topic,
                hint="models serve their highest version until `streamscore model promote` creates it",
            )
            return
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        self.assigned = True
        ends = await self.consumer.end_offsets(partitions)
        latest: dict[str, DesiredState] = {}
        while await behind(self.consumer, ends):
            for records in (await self.consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    state = self._decode(record)
                    if state is not None:
                        latest[state.model] = state
        for state in latest.values():
            await self._apply(state)

    def _decode(self, record: Any) -> DesiredState | None:
        if record.value is None:
            return None
        try:
            return decode_state(record.value)
        except ConfigError as error:
            log.error("control_record_unreadable", offset=record.offset, error=str(error))
            return None

    async def follow(self) -> None:
        """Apply each new state as it arrives (runs until cancelled)."""
        while True:
            if not self.assigned:
                await asyncio.sleep(MISSING_TOPIC_RETRY_S)
                await self._catch_up()
                continue
            for records in (await self.consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    state = self._decode(record)
                    if state is not None:
                        await self._apply(state)

    async def _apply(self, state: DesiredState) -> None:
        try:
            await self.apply(state)
        except Exception as error:  # one state that cannot be applied must not stop the following ones
            log.exception("control_state_not_applied", model=state.model, change=state.change, error=repr(error))

    async def stop(self) -> None:
        await self.consumer.stop()
