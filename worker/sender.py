"""The produce side of a worker: send outcomes, re-send what fails, publish status records.

A result goes to the results topic (a shadow result to the shadow topic), a dead letter to the
dead-letter topic; `on_finished` is called when the broker acknowledges it (then its input offset
may be committed). A send that fails for a transient reason is re-sent in the background under
the retry policy; a result refused for good becomes a dead letter; a dead letter that cannot be
written is fatal (`on_fatal`): its input offset stays uncommitted. Shadow outcomes are best effort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer

from registry.control import STATUS_SUFFIX
from schemas.errors import FatalError, RecordError, ResultRejectedError
from worker.deadletter import dead_letter_headers
from worker.records import DeadLetter, Outcome, Record, Result
from worker.retry import is_retriable, retrying
from worker.settings import Settings

log = structlog.get_logger("streamscore.worker")

Destination = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers


class Sender:
    """Sends a worker's outcomes with `producer`; reports each acknowledged one to `on_finished`."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        on_finished: Callable[[Outcome], None],
        on_fatal: Callable[[FatalError], None],
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.on_finished = on_finished
        self.on_fatal = on_fatal
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
            self._spawn(self._resend(outcome, error))
            return
        future.add_done_callback(lambda f: self._acknowledged(outcome, f))

    async def publish_status(self, key: bytes, value: bytes) -> None:
        """Send a status record in the background (a missing status topic must not stall us)."""
        producer, topic = self.producer, self.settings.control_topic + STATUS_SUFFIX

        async def send() -> None:
            try:
                await producer.send_and_wait(topic, value=value, key=key)
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
            self._spawn(self._resend(outcome, error or asyncio.CancelledError()))
            return
        self.on_finished(outcome)

    async def _resend(self, outcome: Outcome, error: BaseException) -> None:
        """Retry a send that failed for a transient reason; else dead-letter, or stop uncommitted."""
        if outcome.shadow:
            log.warning("shadow_result_lost", request_id=outcome.request_id, error=repr(error))
            return
        topic, key, value, headers = self._destination(outcome)
        s = self.settings
        if is_retriable(error):
            try:
                async for attempt in retrying(s.retry_attempts, s.retry_max_s):
                    with attempt:
                        await (await self.producer.send(topic, value=value, key=key, headers=headers))
                self.on_finished(outcome)
                return
            except Exception as final:
                error = final
        await self._give_up(outcome, error)

    async def _give_up(self, outcome: Outcome, error: BaseException) -> None:
        """A result refused for good becomes a dead letter; a dead letter that cannot be written is fatal."""
        record = outcome.record
        if isinstance(outcome, Result):
            rejected = ResultRejectedError(f"the result of request {outcome.request_id!r} was refused: {error!r}")
            rejected.__cause__ = error
            attempts = self.settings.retry_attempts
            await self.send(DeadLetter(record, rejected, outcome.request_id, None, attempts=attempts))
            return
        log.critical(
            "dead_letter_failed",
            **position(record),
            request_id=outcome.request_id,
            error=repr(error),
            hint="the input offset stays uncommitted; the record is retried after a restart",
        )
        self.on_fatal(FatalError(f"dead letter of {record.topic}[{record.partition}]@{record.offset} not written"))

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
