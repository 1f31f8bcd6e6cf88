"""Follow the control topic: every desired-state change reaches `apply`, in order.

The follower reads the compacted control topic from the beginning (no consumer group: every
worker process reads all of it), hands the latest state of each model to `apply` before the
worker starts consuming requests, then keeps following. If the topic does not exist yet, the
worker serves without it and looks again every `MISSING_TOPIC_RETRY_S` (saying so once, then
every `MISSING_TOPIC_LOG_S`). A record that is not a valid desired state (`decode_state`), or
whose key is not its model's name, is logged and skipped: it is never applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from schemas.control import DesiredState, decode_state
from schemas.errors import ConfigError
from schemas.records import Record
from transport.reading import read_to_end
from transport.seams import Reader

log = structlog.get_logger("streamscore.control")

MISSING_TOPIC_RETRY_S = 5.0
MISSING_TOPIC_LOG_S = 300.0
FOLLOW_POLL_MS = 1000
Apply = Callable[[DesiredState], Awaitable[None]]


class ControlFollower:
    """Reads desired states from the control topic with `reader` and applies them."""

    def __init__(
        self,
        reader: Reader,
        topic: str,
        apply: Apply,
        *,
        retry_s: float = MISSING_TOPIC_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.topic = topic
        self.apply = apply
        self.retry_s = retry_s
        self.clock = clock
        self.assigned = False
        self._missing_logged: float | None = None

    async def start(self) -> None:
        """Connect, and apply the current state of every model (if the topic exists)."""
        await self.reader.start()
        await self._catch_up()

    async def _catch_up(self) -> None:
        latest: dict[str, DesiredState] = {}

        def keep(records: Sequence[Record]) -> None:
            for state in self._decode_all(records):
                latest[state.model] = state

        if await read_to_end(self.reader, self.topic, keep, snapshot=False) == "missing":
            self._say_missing()
            return
        self.assigned = True
        for state in latest.values():
            await self._apply(state)

    def _say_missing(self) -> None:
        """Warn that the topic is missing the first time, then every MISSING_TOPIC_LOG_S."""
        now = self.clock()
        if self._missing_logged is not None and now - self._missing_logged < MISSING_TOPIC_LOG_S:
            return
        self._missing_logged = now
        log.warning(
            "control_topic_missing",
            topic=self.topic,
            hint="models serve their highest version until `streamscore model promote` creates it",
        )

    def _decode_all(self, records: Sequence[Any]) -> list[DesiredState]:
        states = []
        for record in records:
            if record.value is None:
                continue
            try:
                state = decode_state(record.value)
            except ConfigError as error:
                log.error("control_record_skipped", topic=self.topic, offset=record.offset, error=str(error))
                continue
            if record.key is not None and record.key != state.model.encode():
                log.error("control_record_skipped", topic=self.topic, offset=record.offset, error=_keyed(record, state))
                continue
            states.append(state)
        return states

    async def follow(self) -> None:
        """Apply each new state as it arrives (runs until cancelled)."""
        while True:
            if not self.assigned:
                await asyncio.sleep(self.retry_s)
                await self._catch_up()
                continue
            for records in (await self.reader.getmany(timeout_ms=FOLLOW_POLL_MS)).values():
                for state in self._decode_all(records):
                    await self._apply(state)

    async def _apply(self, state: DesiredState) -> None:
        try:
            await self.apply(state)
        except Exception as error:  # one state that cannot be applied must not stop the following ones
            log.exception("control_state_not_applied", model=state.model, change=state.change, error=repr(error))

    async def stop(self) -> None:
        await self.reader.stop()


def _keyed(record: Any, state: DesiredState) -> str:
    key = record.key.decode("utf-8", "replace")
    return f"the record is keyed {key!r} but holds the state of model {state.model!r}; keys are model names"
