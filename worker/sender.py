"""The produce side of a worker: send outcomes, carry out what a failed send's fate says, publish status.

A result goes to the results topic (a shadow result to the shadow topic), a dead letter to the
dead-letter topic; `on_finished` is called when the broker acknowledges it (then its input offset
may be committed). When a send fails, `worker.policy.after_send_failure` decides: resend, dead-letter
the refused result instead, stop the worker (`on_fatal`: a dead letter that cannot be written keeps
its offset uncommitted), or drop a best-effort shadow result.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from schemas.errors import FatalError, RecordError
from schemas.records import Record
from transport.seams import Producer
from worker.deadletter import dead_letter_headers
from worker.outcomes import DeadLetter, Outcome, Result
from worker.policy import Drop, Reroute, Retry, RetryPolicy, Stop, after_send_failure
from worker.settings import Settings

log = structlog.get_logger("streamscore.worker")

Destination = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers
Sleep = Callable[[float], Awaitable[Any]]


class Sender:
    """Sends a worker's outcomes with `producer`; reports each acknowledged one to `on_finished`."""

    def __init__(
        self,
        producer: Producer,
        settings: Settings,
        on_finished: Callable[[Outcome], None],
        on_fatal: Callable[[FatalError], None],
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        unit: Callable[[], float] = random.random,
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.policy = RetryPolicy(settings.retry_attempts, settings.retry_max_s)
        self.on_finished = on_finished
        self.on_fatal = on_fatal
        self._sleep, self._clock, self._unit = sleep, clock, unit
        self._background: set[asyncio.Task[None]] = set()

    async def send(self, outcome: Outcome) -> None:
        """Send a result or dead letter; its offset finishes when the broker acknowledges it."""
        if isinstance(outcome, DeadLetter) and outcome.shadow:
            log.warning("shadow_failed", request_id=outcome.request_id, model=outcome.model, error=str(outcome.error))
            return
        topic, key, value, headers = self._destination(outcome)
        try:
            future = await self.producer.send(topic, value=value, key=key, headers=headers)
        except Exception as error:  # raised before sending: too large, no metadata, ...
            self._spawn(self._recover(outcome, error))
            return
        future.add_done_callback(lambda f: self._acknowledged(outcome, f))

    async def publish_status(self, key: bytes, value: bytes) -> None:
        """Send a status record in the background (a missing status topic must not stall us)."""
        producer, topic = self.producer, self.settings.status_topic_name

        async def send() -> None:
            try:
                await (await producer.send(topic, value=value, key=key))
            except Exception as error:
                log.warning("status_not_published", topic=topic, error=repr(error))

        self._spawn(send())

    def _destination(self, outcome: Outcome) -> Destination:
        if isinstance(outcome, Result):
            topic = self.settings.shadow_topic_name if outcome.shadow else self.settings.results_topic
            return topic, outcome.key, outcome.value, outcome.headers
        record, error = outcome.record, outcome.error
        headers = dead_letter_headers(
            record,
            error,
            stage=stage_of(error),
            group_id=self.settings.group_id,
            worker=self.settings.worker_name,
            attempts=outcome.attempts,
            model=outcome.model,
        )
        return self.settings.dead_letter_topic_name, record.key, record.value, headers

    def _acknowledged(self, outcome: Outcome, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._spawn(self._recover(outcome, error or asyncio.CancelledError()))
            return
        self.on_finished(outcome)

    async def _recover(self, outcome: Outcome, error: BaseException) -> None:
        """Carry out the fates `after_send_failure` decides until the outcome is sent or given up."""
        started, resends = self._clock(), 0
        while True:
            fate = after_send_failure(outcome, error, resends, self._clock() - started, self.policy)
            if isinstance(fate, Retry):
                await self._sleep(self.policy.delay(fate.resend, self._unit()))
                resends = fate.resend
                failure = await self._send_and_wait(outcome)
                if failure is None:
                    self.on_finished(outcome)
                    return
                error = failure
            elif isinstance(fate, Reroute):
                await self.send(fate.dead_letter)
                return
            else:
                self._give_up(outcome, fate)
                return

    async def _send_and_wait(self, outcome: Outcome) -> BaseException | None:
        topic, key, value, headers = self._destination(outcome)
        try:
            await (await self.producer.send(topic, value=value, key=key, headers=headers))
        except Exception as error:
            return error
        return None

    def _give_up(self, outcome: Outcome, fate: Stop | Drop) -> None:
        if isinstance(fate, Drop):
            log.warning("shadow_result_lost", request_id=outcome.request_id, reason=fate.reason)
            return
        log.critical(
            "dead_letter_failed",
            **position(outcome.record),
            request_id=outcome.request_id,
            error=repr(fate.error.__cause__),
            hint="the input offset stays uncommitted; the record is retried after a restart",
        )
        self.on_fatal(fate.error)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def log_dead_letter(outcome: DeadLetter) -> None:
    """Log a dead letter the broker acknowledged: where its record was, why it failed, its model."""
    error = outcome.error
    log.warning(
        "record_dead_lettered",
        **position(outcome.record),
        request_id=outcome.request_id,
        stage=stage_of(error),
        error=type(error).__name__,
        reason=str(error),
        model=outcome.model[0] if outcome.model else None,
        model_version=outcome.model[1] if outcome.model else None,
    )


def stage_of(error: Exception) -> str:
    """The pipeline stage an error belongs to (inference, when it is not a record's own error)."""
    return error.stage if isinstance(error, RecordError) else "infer"


def position(record: Record) -> dict[str, Any]:
    """Where a record sits, as log keys."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}
