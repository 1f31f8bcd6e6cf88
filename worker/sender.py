"""The produce side of a worker: send outcomes, carry out what a failed send's fate says, publish status.

A result goes to the results topic (a shadow result to the shadow topic), a dead letter to the
dead-letter topic, made to fit it (`worker.deadletter.fit`); `on_finished` is called when the
broker acknowledges it (then its input offset may be committed). When a send fails,
`worker.policy.after_send_failure` decides: resend (the broker's trouble: for as long as it
takes, while `troubled` tells the worker to stop fetching), dead-letter a refused result instead,
stop the worker (`on_fatal`), or drop a best-effort shadow result. Exactly once (`transactions`
given), a partition's outcomes go out through its transactional producer, and a send that fails
inside a transaction loses its outcome (`on_lost`): the partition's transaction is aborted and its
records read again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import structlog

from schemas.errors import FatalError, RecordError, ResultRejectedError
from schemas.records import Record
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, record_size
from transport.seams import Producer
from worker.deadletter import dead_letter_headers, fit
from worker.offsets import partition_of
from worker.outcomes import DeadLetter, Outcome, Result
from worker.policy import Abandon, Drop, Reroute, Retry, RetryPolicy, Stop, after_send_failure, model_of
from worker.retrytopics import RetryTopics
from worker.settings import Settings
from worker.transactions import PartitionTransactions

log = structlog.get_logger("streamscore.worker")

Destination = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]  # topic, key, value, headers
Sleep = Callable[[float], Awaitable[Any]]
TROUBLE_LOG_INTERVAL_S = 10.0


class Sender:
    """Sends a worker's outcomes with `producer`; reports each acknowledged one to `on_finished`.

    `limits` are the topics' `max.message.bytes` (`transport.limits.topic_limits`).
    """

    def __init__(
        self,
        producer: Producer,
        settings: Settings,
        on_finished: Callable[[Outcome], None],
        on_fatal: Callable[[FatalError], None],
        *,
        limits: Mapping[str, int] | None = None,
        transactions: PartitionTransactions | None = None,
        on_lost: Callable[[Outcome], None] | None = None,
        retries: RetryTopics | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        unit: Callable[[], float] = random.random,
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.limits = dict(limits or {})
        self.policy = RetryPolicy()
        self.on_finished = on_finished
        self.on_fatal = on_fatal
        self.transactions = transactions
        self.on_lost = on_lost
        self.retries = retries or RetryTopics(settings.input_topic)
        self._sleep, self._clock, self._wall, self._unit = sleep, clock, wall, unit
        self._background: set[asyncio.Task[None]] = set()
        self.troubled = 0  # outcomes being resent because the broker did not take them
        self._trouble_since: float | None = None
        self._trouble_logged = 0.0

    async def send(self, outcome: Outcome) -> None:
        """Send a result or dead letter; its offset finishes when the broker acknowledges it."""
        if isinstance(outcome, DeadLetter) and outcome.shadow:
            log.warning("shadow_failed", request_id=outcome.request_id, model=outcome.model, error=str(outcome.error))
            return
        if isinstance(outcome, DeadLetter) and outcome.hop is None:
            outcome = self._hop(outcome)
        topic, key, value, headers = self._destination(outcome)
        if isinstance(outcome, Result) and not outcome.shadow and record_size(key, value, headers) > self._limit(topic):
            await self.send(too_large(outcome, record_size(key, value, headers), topic, self._limit(topic)))
            return
        try:
            producer = await self._producer_for(outcome)
            future = await producer.send(topic, value=value, key=key, headers=headers)
        except Exception as error:  # raised before sending: too large, no metadata, ...
            self._spawn(self._recover(outcome, error, at_send=True))
            return
        future.add_done_callback(lambda f: self._acknowledged(outcome, f))

    async def _producer_for(self, outcome: Outcome) -> Producer:
        """The partition's transactional producer (exactly once, but for shadow results), else the producer."""
        if self.transactions is None or outcome.shadow:
            return self.producer
        return await self.transactions.producer_for(partition_of(outcome.record))

    def _hop(self, letter: DeadLetter) -> DeadLetter:
        """To the next retry topic when the record may be scored later and it fits there; else as it was."""
        hopped = self.retries.hop(letter, int(self._wall() * 1000))
        if hopped.hop is None:
            return hopped
        record = letter.record
        if record_size(record.key, record.value, hopped.hop.headers) > self._limit(hopped.hop.topic):
            return dataclasses.replace(letter, final=True)  # the dead letter fits, whatever the size (fit)
        return hopped

    def _limit(self, topic: str) -> int:
        return self.limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES)

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
        if outcome.hop is not None:
            return outcome.hop.topic, outcome.record.key, outcome.record.value, outcome.hop.headers
        record, error, topic = outcome.record, outcome.error, self.settings.dead_letter_topic_name
        headers = dead_letter_headers(
            record,
            error,
            stage=stage_of(error),
            group_id=self.settings.group_id,
            worker=self.settings.worker_name,
            attempts=outcome.attempts,
            model=outcome.model,
        )
        key, value, headers = fit(record, headers, self._limit(topic), topic)
        return topic, key, value, headers

    def _acknowledged(self, outcome: Outcome, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            self._spawn(self._recover(outcome, error or asyncio.CancelledError()))
            return
        self.on_finished(outcome)

    async def _recover(self, outcome: Outcome, error: BaseException, at_send: bool = False) -> None:
        """Carry out the fates `after_send_failure` decides until the outcome is sent or given up.

        While it is being resent, the outcome counts in `troubled` (the worker pauses fetching).
        """
        resends, troubled = 0, False
        try:
            while True:
                topic, transaction = self._destination(outcome)[0], self._in_transaction(outcome)
                fate = after_send_failure(outcome, error, resends, topic, transaction=transaction, at_send=at_send)
                if not isinstance(fate, Retry):
                    await self._give_up(outcome, fate)
                    return
                if not troubled:
                    troubled = self._trouble_starts(outcome, error)
                await self._sleep(self.policy.delay(fate.resend, self._unit()))
                failure = await self._send_and_wait(outcome)
                if failure is None:
                    self.on_finished(outcome)
                    return
                error, resends = failure, fate.resend
        finally:
            if troubled:
                self._trouble_ends()

    def _in_transaction(self, outcome: Outcome) -> bool:
        return self.transactions is not None and not outcome.shadow

    async def _send_and_wait(self, outcome: Outcome) -> BaseException | None:
        topic, key, value, headers = self._destination(outcome)
        try:
            await (await self.producer.send(topic, value=value, key=key, headers=headers))
        except asyncio.CancelledError:  # the acknowledgement was cancelled (the client closing): try again
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # this task is being cancelled: stop
            return asyncio.CancelledError()
        except Exception as error:
            return error
        return None

    def _trouble_starts(self, outcome: Outcome, error: BaseException) -> bool:
        """One more outcome is being resent; log when the trouble starts, and every so often."""
        now = self._clock()
        if self.troubled == 0:
            self._trouble_since = self._trouble_logged = now
            log.warning("send_failing", **position(outcome.record), error=repr(error), hint=TROUBLE_HINT)
        elif now - self._trouble_logged >= TROUBLE_LOG_INTERVAL_S:
            self._trouble_logged = now
            since = round(now - (self._trouble_since or now))
            log.warning("send_still_failing", resending=self.troubled + 1, since_s=since, error=repr(error))
        self.troubled += 1
        return True

    def _trouble_ends(self) -> None:
        self.troubled -= 1
        if self.troubled == 0:
            log.info("send_recovered", after_s=round(self._clock() - (self._trouble_since or self._clock()), 1))

    async def _give_up(self, outcome: Outcome, fate: Reroute | Stop | Drop | Abandon) -> None:
        if isinstance(fate, Reroute):
            await self.send(fate.dead_letter)
            return
        if isinstance(fate, Abandon):
            log.warning("outcome_lost_with_its_transaction", **position(outcome.record), reason=fate.reason)
            if self.on_lost is not None:
                self.on_lost(outcome)
            return
        if isinstance(fate, Drop):
            log.warning("shadow_result_lost", request_id=outcome.request_id, reason=fate.reason)
            return
        reason = (
            {"stage": stage_of(outcome.error), "reason": str(outcome.error)} if isinstance(outcome, DeadLetter) else {}
        )
        log.critical(
            "send_refused" if isinstance(outcome, Result) else "dead_letter_failed",
            **position(outcome.record),
            request_id=outcome.request_id,
            error=str(fate.error),
            **{f"dead_letter_{k}": v for k, v in reason.items()},
            hint="the input offset stays uncommitted; the record is read again after a restart",
        )
        self.on_fatal(fate.error)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


TROUBLE_HINT = (
    "the broker does not acknowledge: fetching pauses and nothing is committed past this record; "
    "sends are retried until the broker answers (check its health, min.insync.replicas and the topic)"
)


def log_dead_letter(outcome: DeadLetter) -> None:
    """Log a dead letter the broker acknowledged: where its record was, why it failed, its model
    (or, for a record sent to a retry topic, which one and which attempt comes next)."""
    error = outcome.error
    if outcome.hop is not None:
        log.info(
            "record_sent_to_retry_topic",
            **position(outcome.record),
            request_id=outcome.request_id,
            retry_topic=outcome.hop.topic,
            next_attempt=outcome.hop.attempt,
            error=type(error).__name__,
            reason=str(error),
        )
        return
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


def too_large(result: Result, size: int, topic: str, limit: int) -> DeadLetter:
    """The dead letter of a request whose result is larger than the results topic takes (never sent)."""
    error = ResultRejectedError(
        f"the result of request {result.request_id!r} is {size} bytes, larger than {topic} takes "
        f"(max.message.bytes {limit}, so Kafka would refuse it: MessageSizeTooLarge); ask for fewer rows or outputs"
    )
    return DeadLetter(result.record, error, result.request_id, model_of(result))
