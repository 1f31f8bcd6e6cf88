"""A worker in a share group (`--consumption share`): any number of workers share each partition.

Everything between taking a record and writing its outcome is the group worker's (worker/runner.py):
admission, micro-batches, model versions, canary, shadow, pinning, dead letters. What differs is
how records come and go:

- a poll acquires up to `share_max_records` records under the group's lock (30 s by default), and
  the next poll waits until every one of them is settled (`worker.share.Deliveries`);
- a record is accepted once its result or dead letter is acknowledged by the broker; a record whose
  failure may pass (`retry_later`: a model version not here yet, an inference timeout) is released
  and delivered again, to this worker or another; a record the group delivered as often as its
  `share.delivery.count.limit` allows is dead-lettered before the broker would archive it unseen;
- records not settled within half the lock are released (their outcome, if it comes, is still
  written: a duplicate, never a loss); at shutdown, what is not settled is released at once.

No offsets, no ordering, no transactions: at least once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import TopicPartition

from schemas.errors import DeliveryLimitError, FatalError
from schemas.records import Record, delivery_count_of
from worker.admit import Fate
from worker.clients import FETCH_MAX_BYTES
from worker.flow import size_of
from worker.outcomes import DeadLetter, Outcome
from worker.pipeline import dead_letter
from worker.runner import Worker
from worker.settings import Settings
from worker.share import LOCK_SHARE, Ack, Deliveries, GroupRules, SharedConsumer, ShareSource, client_options

log = structlog.get_logger("streamscore.worker")

POLL_TIMEOUT_S = 0.1
BURST_IDLE_S = 10.0  # burst mode: a share group has no end offsets to reach; stop after this long without records


class Acknowledger:
    """Sends the settled records' acknowledgements and commits them (the share group's 'commit')."""

    def __init__(self, source: SharedConsumer, deliveries: Deliveries) -> None:
        self.source = source
        self.deliveries = deliveries

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        failed = await self.source.acknowledge(self.deliveries.drain())
        if failed:
            log.warning(
                "share_acknowledge_failed",
                failures=failed[:10],
                count=len(failed),
                hint=(
                    "their locks expired, the broker refused, or it is away (the client sends them again with "
                    "the next poll): records whose acknowledgement is lost are delivered again (duplicates)"
                ),
            )


def redeliverable(letter: DeadLetter, delivery_limit: int) -> bool:
    """Whether a dead letter's record should rather be released to its share group and scored again:
    its error may pass, and the group has deliveries left for it."""
    if letter.shadow or letter.final or letter.hop is not None or not getattr(letter.error, "retry_later", False):
        return False
    return (delivery_count_of(letter.record) or 1) < delivery_limit


def over_limit(record: Record, delivery_limit: int) -> bool:
    """Whether this is the last delivery the group allows of a record that was delivered before (and
    never settled: each earlier delivery crashed, timed out, or was released)."""
    count = delivery_count_of(record) or 1
    return count > 1 and count >= delivery_limit


def make_source(settings: Settings) -> ShareSource:
    """confluent-kafka's share consumer of the input topic, in the worker's group."""
    s = settings
    fetch_max_bytes = max(s.max_record_bytes, min(FETCH_MAX_BYTES, s.max_in_flight_bytes // 4))
    client_id = f"streamscore-{s.worker_name}"
    options = client_options(s.connection, s.group_id, client_id, s.share_max_records, fetch_max_bytes)
    return ShareSource(options, [s.input_topic])


class ShareWorker(Worker):
    """Scores the records its share group hands it, acknowledging each one."""

    def __init__(
        self,
        settings: Settings,
        *,
        share_source: Callable[[Settings], SharedConsumer] = make_source,
        **options: Any,  # those of Worker: clients, store, clock, observer
    ) -> None:
        super().__init__(settings, **options)
        self.deliveries = Deliveries()
        self.rules = GroupRules()
        self.source: SharedConsumer | None = None
        self._make_source = share_source
        self._told_oversized = False
        self._released_at = float("-inf")  # burst mode: a release is activity (the record comes again)

    async def _join(self) -> None:
        s = self.settings
        self.source = self._make_source(s)
        await self.source.start()
        self.rules = await self.source.rules()
        self.committer = Acknowledger(self.source, self.deliveries)
        self.observer.assigned(set())  # a member of the group (health: joined)
        log.info(
            "share_group_joined",
            group=s.group_id,
            topic=s.input_topic,
            lock_ms=self.rules.lock_ms,
            delivery_limit=self.rules.delivery_limit,
            max_records=s.share_max_records,
            settle_within_s=self.rules.lock_ms / 1000 * LOCK_SHARE,
            hint="a poll's records not settled within settle_within_s are released to the group",
        )

    async def main_loop(self) -> None:
        """Poll, take, wait until the poll's records are settled, acknowledge them; again."""
        s, idle_since = self.settings, self.clock()
        last_progress = idle_since
        while not self.stopping:
            last_progress = self._progress(last_progress)
            if not await self._settled():
                continue
            assert self.committer is not None and self.source is not None
            await self.committer.commit()
            if self._apply_backpressure():  # released records still being scored hold their room until their outcome
                await self.flow.wait_for_room()
                continue
            self._polled_at = self.clock()
            try:
                records = await self.source.poll(POLL_TIMEOUT_S)
            except FatalError as error:  # an ACL missing, or the client's fatal error: stop
                self._fail(error)
                return
            self.deliveries.take(records, self.clock(), self.rules.lock_ms)
            if len(records) > s.share_max_records:
                self._oversized(len(records))
            for record in records:
                await self.take(record)
            if records:
                idle_since = self.clock()
                self.scoring.wake.set()
            elif self.settings.burst and self._idle(max(idle_since, self._released_at)):
                log.info("worker_drained", **self.observer.summary())
                return

    async def _settled(self) -> bool:
        """Wait until the last poll's records are settled, releasing those past the deadline."""
        done = await self._wait_until(lambda: self.deliveries.complete or self.stopping, self.deliveries.deadline)
        if done:
            return self.deliveries.complete
        late = self.deliveries.overdue(self.clock())
        log.warning(
            "share_records_released",
            count=len(late),
            lock_ms=self.rules.lock_ms,
            hint="a poll's records took more than half the group's lock: lower STREAMSCORE_SHARE_MAX_RECORDS",
        )
        return True

    def _oversized(self, count: int) -> None:
        """librdkafka 2.16 hands out whole producer batches whatever max.poll.records says (KIP-1206's
        record_limit mode is not in it yet): say so once a poll brings more than asked for."""
        if not self._told_oversized:
            self._told_oversized = True
            log.warning(
                "share_poll_oversized",
                records=count,
                max_records=self.settings.share_max_records,
                hint=(
                    "the client acquires whole producer batches: for a slow model, produce requests in small "
                    "batches (linger.ms=0), or raise the group's share.record.lock.duration.ms; what is not "
                    "settled within half the lock is released"
                ),
            )

    @property
    def since_poll(self) -> float:
        """Waiting for the last poll's records to settle (within half the lock) is not a stall."""
        if not self.deliveries.complete and self.clock() < self.deliveries.deadline:
            return 0.0
        return super().since_poll

    def _idle(self, since: float) -> bool:
        return self.in_flight == 0 and self.scoring.idle and self.clock() - since >= BURST_IDLE_S

    async def shutdown(self) -> bool:
        """The group worker's shutdown; then what is not settled goes back to the group, and it leaves."""
        try:
            return await super().shutdown()
        finally:
            if self.source is not None:
                self.deliveries.release_all()
                if self.committer is not None:
                    await self.committer.commit()
                await self.source.stop()

    # ------------------------------------------------------------------ hooks of the group worker

    def _admit(self, record: Record) -> Fate:
        if over_limit(record, self.rules.delivery_limit):
            count = delivery_count_of(record)
            return dead_letter(
                record,
                DeliveryLimitError(
                    f"delivered {count} times, the share group's limit (share.delivery.count.limit="
                    f"{self.rules.delivery_limit}), without an outcome: dead-lettered before the broker drops it"
                ),
            )
        return super()._admit(record)

    def _track(self, record: Record) -> None:
        """Tracked in `self.deliveries` (taken per poll): a share group has no offsets to commit."""

    def _settle(self, outcome: Outcome) -> None:
        self.deliveries.settle(outcome.record, Ack.ACCEPT)

    async def _send(self, outcome: Outcome) -> None:
        if isinstance(outcome, DeadLetter) and redeliverable(outcome, self.rules.delivery_limit):
            self._release(outcome)
            return
        await super()._send(outcome)

    def _release(self, letter: DeadLetter) -> None:
        """The record goes back to the group, to be scored again on its next delivery."""
        record = letter.record
        self.observer.released(record)
        self._released_at = self.clock()
        if self.deliveries.settle(record, Ack.RELEASE):
            log.info(
                "share_record_released",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                delivery_count=delivery_count_of(record),
                error=f"{type(letter.error).__name__}: {letter.error}",
            )
        self.flow.finished(size_of(record))
        if self.in_flight == 0:
            self.scoring.wake.set()
