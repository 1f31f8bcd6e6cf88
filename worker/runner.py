"""One worker process: consume, batch, score, produce, commit. The only module that talks to Kafka.

Lifecycle: `startup()` (load the default model, start the clients) -> `main_loop()` (fetch until
told to stop, or until drained in burst mode) -> `shutdown()` (stop fetching, drain in-flight
work within the grace period, commit, close). Three tasks share the work: the fetch loop
decodes records into the batcher, the score loop runs closed batches in a thread and sends
their outcomes, the commit loop commits what is acknowledged. An offset is committed only
when every record before it in its partition has its result or dead letter acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from registry.control import STATUS_SUFFIX
from schemas.codec import InferenceRequest, Limits
from schemas.errors import (
    BrokerUnavailableError,
    FatalError,
    ModelLoadError,
    ModelNotFoundError,
    RecordError,
    ResultRejectedError,
)
from worker.batcher import Batch, MicroBatcher
from worker.control import ControlFollower
from worker.deadletter import dead_letter_headers
from worker.model import LoadedModel
from worker.offsets import OffsetTracker
from worker.pipeline import dead_letter, decode, fallback_id, make_item, model_choice, score_batch
from worker.records import DeadLetter, Item, Outcome, Result
from worker.retry import is_retriable, retrying
from worker.serving import Serving
from worker.settings import Settings
from worker.store import ModelStore

log = structlog.get_logger("streamscore.worker")

FETCH_MAX_RECORDS = 1000
FETCH_TIMEOUT_MS = 100
PRODUCER_MAX_BATCH_BYTES = 262_144
PRODUCER_LINGER_MS = 5
BURST_UNASSIGNED_EXIT_S = 10.0
PAUSED_CHECK_S = 0.1
PROGRESS_INTERVAL_S = 10.0


class Worker:
    """Scores the records of the partitions this process is assigned."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: ModelStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store or ModelStore(
            settings.model_root_path,
            default_name=settings.model_name,
            pinned_version=settings.model_version,
            intra_op_threads=settings.intra_op_threads,
        )
        self.clock = clock
        self.limits = Limits(settings.max_record_bytes, settings.max_request_rows, settings.allow_nonfinite)
        self.batcher: MicroBatcher[Item] = MicroBatcher(settings.max_batch_rows, settings.max_batch_delay_ms / 1000)
        self.tracker: OffsetTracker[int] = OffsetTracker()  # by partition of the input topic
        self.ready: deque[Batch[Item]] = deque()
        self.wake = asyncio.Event()  # the score loop: a batch may be ready, or all is acknowledged
        self.room = asyncio.Event()  # the fetch loop: in-flight records fell below the resume mark
        self._resume_at = settings.max_in_flight // 2
        self.stopping = False
        self.fatal: BaseException | None = None
        self.in_flight = 0
        self.paused = False
        self.counts = {"results": 0, "dead_letters": 0, "rows": 0, "shadow": 0}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._joined = False
        self.serving = Serving(self.store, self.executor, settings.worker_name)
        self.control: ControlFollower | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start, work until stopped or drained, shut down. Returns the process exit code."""
        try:
            await self.startup()
            await self.main_loop()
        finally:
            drained = await self.shutdown()
        if self.fatal is not None:
            return 1
        return 0 if drained else 1

    def request_stop(self) -> None:
        """Stop fetching and begin the drain (what a signal handler calls)."""
        if not self.stopping:
            log.info("worker_stopping", in_flight=self.in_flight)
        self.stopping = True
        self.wake.set()
        self.room.set()

    async def startup(self) -> None:
        """Connect, apply the control topic's desired states, load the default model, join the group."""
        s = self.settings
        options = s.kafka_options()
        self.producer = AIOKafkaProducer(
            **options,
            acks="all",
            enable_idempotence=True,
            linger_ms=PRODUCER_LINGER_MS,
            max_batch_size=PRODUCER_MAX_BATCH_BYTES,
            request_timeout_ms=s.request_timeout_ms,
            client_id=f"streamscore-{s.worker_name}",
        )
        self.consumer = AIOKafkaConsumer(
            **options,
            group_id=s.group_id,
            client_id=f"streamscore-{s.worker_name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=max(1_048_576, s.max_record_bytes),
            request_timeout_ms=max(s.request_timeout_ms, s.session_timeout_ms + 5000),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 3),
        )
        self.consumer.subscribe([s.input_topic], listener=_Rebalance(self))
        await self._connect(self.producer.start, "producer")
        if s.control_topic:
            self.control = ControlFollower(options, s.control_topic, self.serving.apply)
            self.serving.publish = self._publish_status
            await self._connect(self.control.start, "control consumer")
        model = await self.serving.load_default()
        log.info(
            "model_serving",
            model=model.name,
            version=model.version,
            sha256=model.sha256,
            inputs=[(i.name, i.datatype, i.shape) for i in model.inputs],
        )
        await self._connect(self.consumer.start, "consumer")
        self._joined = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.score_loop()), loop.create_task(self.commit_loop())]
        if self.control is not None:
            self._tasks.append(loop.create_task(self.control.follow()))
        log.info(
            "worker_started",
            topic=s.input_topic,
            group=s.group_id,
            results=s.results_topic,
            dead_letters=s.dead_letter_topic_name,
            bootstrap=s.bootstrap_servers,
        )

    async def _connect(self, start: Callable[[], Any], what: str) -> None:
        s = self.settings
        try:
            async for attempt in retrying(s.retry_attempts, s.retry_max_s):
                with attempt:
                    try:
                        await start()
                    except KafkaError as error:
                        raise BrokerUnavailableError(
                            f"Kafka {what} cannot reach {s.bootstrap_servers}: {error}"
                        ) from error
        except BrokerUnavailableError:
            log.error(
                "broker_unavailable",
                client=what,
                bootstrap=s.bootstrap_servers,
                hint="is the broker running? `streamscore broker start` starts a local one",
            )
            raise

    async def main_loop(self) -> None:
        """Fetch and prepare records until told to stop (or drained, in burst mode)."""
        assert self.consumer is not None
        unassigned_since = self.clock()
        last_progress = self.clock()
        while not self.stopping:
            if self._apply_backpressure():
                await self._wait_for_room()
                continue
            room = max(1, min(FETCH_MAX_RECORDS, self.settings.max_in_flight - self.in_flight))
            batches = await self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room)
            for records in batches.values():
                for record in records:
                    await self._dispatch(record)
            if batches:
                self.wake.set()
            if self.clock() - last_progress >= PROGRESS_INTERVAL_S:
                last_progress = self.clock()
                log.info("worker_progress", in_flight=self.in_flight, paused=self.paused, **self.counts)
            if self.consumer.assignment():
                unassigned_since = self.clock()
            if not batches and self.settings.burst and await self._drained(unassigned_since):
                log.info("worker_drained", **self.counts)
                return

    async def shutdown(self) -> bool:
        """Drain in-flight work within the grace period, commit, close. True if fully drained."""
        self.request_stop()
        deadline = self.clock() + self.settings.shutdown_grace_s
        drained = await self._wait_until(lambda: self.in_flight == 0 or self.fatal is not None, deadline)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.fatal is None and self._joined:
            await self.commit()
        if not drained:
            log.warning(
                "shutdown_grace_expired",
                cancelled_in_flight=self.in_flight,
                grace_s=self.settings.shutdown_grace_s,
            )
        if self.consumer is not None:
            await self.consumer.stop()
        if self.control is not None:
            await self.control.stop()
        if self.producer is not None:
            await self.producer.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker_stopped", drained=drained, **self.counts)
        return drained

    # ------------------------------------------------------------------ fetch side

    def _take(self, record: Any) -> Item | DeadLetter | None:
        """Track a fetched record and decode it; None when its model must be loaded first."""
        self.tracker.take(record.partition, record.offset)
        self.in_flight += 1
        try:
            request = decode(record, self.limits)
            name, version = model_choice(record)
            name, version = self.store.resolve(name, version, request.id or fallback_id(record))
        except RecordError as error:
            return dead_letter(record, error)
        model = self.store.cached(name, version)
        if model is None:
            return None
        return self._item(record, request, model)

    async def _take_with_load(self, record: Any) -> Item | DeadLetter:
        """The rare path of `_take`: the record names a model or version not loaded yet."""
        request = decode(record, self.limits)
        name, pinned = model_choice(record)
        try:
            if pinned:
                model = await self._load_for_request(*self.store.resolve(name, pinned))
            else:
                model = await self.serving.load_default(name)
        except (RecordError, ModelLoadError) as error:
            if isinstance(error, ModelLoadError):
                error = ModelNotFoundError(f"model {name} cannot be served: {error}")
            return dead_letter(record, error)
        return self._item(record, request, model)

    def _item(self, record: Any, request: InferenceRequest, model: LoadedModel) -> Item | DeadLetter:
        try:
            return make_item(record, request, model)
        except RecordError as error:
            return dead_letter(record, error, model)

    async def _dispatch(self, record: Any) -> None:
        """Take one record: a dead letter is sent at once, an item waits for its batch."""
        outcome = self._take(record)
        if outcome is None:
            outcome = await self._take_with_load(record)
        if isinstance(outcome, DeadLetter):
            await self.send(outcome)
            return
        self._batch(outcome)
        shadow = self.serving.shadow_model(outcome.model)
        if shadow is not None and not model_choice(record)[1]:
            twin = self._item(record, outcome.request, shadow)
            if isinstance(twin, Item):
                twin.shadow = True
                self._batch(twin)

    def _batch(self, item: Item) -> None:
        closed = self.batcher.add(item.key, item, item.rows, self.clock(), item.model.fixed_batch)
        if closed:
            self.ready.extend(closed)

    async def _load_for_request(self, name: str, version: str) -> LoadedModel:
        try:
            model = await self.serving.load(name, version)
        except ModelLoadError as error:
            raise ModelNotFoundError(f"model {name} version {version} cannot be served: {error}") from error
        log.info("model_loaded", model=model.name, version=model.version, sha256=model.sha256)
        return model

    def _apply_backpressure(self) -> bool:
        """Pause every partition at `max_in_flight`, resume at half of it; True while paused."""
        assert self.consumer is not None
        if not self.paused and self.in_flight >= self.settings.max_in_flight:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True
        elif self.paused and self.in_flight <= self._resume_at:
            self.consumer.resume(*self.consumer.paused())
            self.paused = False
        elif self.paused:
            # a rebalance may have handed us partitions that are not paused yet
            self.consumer.pause(*self.consumer.assignment())
        return self.paused

    async def _wait_for_room(self) -> None:
        """While paused, wait for acknowledgements instead of polling an empty fetch."""
        self.room.clear()
        if self.in_flight > self._resume_at and not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), PAUSED_CHECK_S)

    async def _drained(self, unassigned_since: float) -> bool:
        assert self.consumer is not None
        if self.in_flight or len(self.batcher) or self.ready:
            return False
        assignment = list(self.consumer.assignment())
        if not assignment:
            return self.clock() - unassigned_since >= BURST_UNASSIGNED_EXIT_S
        ends = await self.consumer.end_offsets(assignment)
        for tp in assignment:
            if await self.consumer.position(tp) < ends[tp]:
                return False
        return True

    # ------------------------------------------------------------------ score side

    async def score_loop(self) -> None:
        """Run closed batches in the onnxruntime thread and send their outcomes."""
        loop = asyncio.get_running_loop()
        score = functools.partial(
            score_batch,
            correlation=self.settings.correlation_headers,
            check_finite=not self.settings.allow_nonfinite,
        )
        while True:
            batch = await self._next_batch()
            outcomes = await loop.run_in_executor(self.executor, score, batch.items)
            self.counts["rows"] += batch.rows
            for outcome in outcomes:
                await self.send(outcome)

    async def _next_batch(self) -> Batch[Item]:
        while True:
            if self.stopping:
                self.ready.extend(self.batcher.drain())
            else:
                self.ready.extend(self.batcher.due(self.clock()))
            if self.ready:
                return self.ready.popleft()
            self.wake.clear()
            deadline = self.batcher.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    # ------------------------------------------------------------------ produce side

    async def send(self, outcome: Outcome) -> None:
        """Send a result or dead letter; its offset finishes when the broker acknowledges it."""
        assert self.producer is not None
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

    def _destination(self, outcome: Outcome) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]:
        if isinstance(outcome, Result):
            topic = self.settings.shadow_topic_name if outcome.shadow else self.settings.results_topic
            return topic, outcome.key, outcome.value, outcome.headers
        record, error = outcome.record, outcome.error
        stage = error.stage if isinstance(error, RecordError) else "infer"
        headers = dead_letter_headers(
            record,
            error,
            stage=stage,
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
        self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        if outcome.shadow:  # shadow results are best effort: no offset waits for them
            self.counts["shadow"] += 1
            return
        record = outcome.record
        self.tracker.finish(record.partition, record.offset)
        self.in_flight -= 1
        if isinstance(outcome, Result):
            self.counts["results"] += 1
        else:
            self.counts["dead_letters"] += 1
            self._log_dead_letter(outcome)
        if self.in_flight <= self._resume_at:
            self.room.set()
        if self.in_flight == 0:
            self.wake.set()

    def _log_dead_letter(self, outcome: DeadLetter) -> None:
        record, error = outcome.record, outcome.error
        log.warning(
            "record_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            request_id=outcome.request_id,
            stage=error.stage if isinstance(error, RecordError) else "infer",
            error=type(error).__name__,
            reason=str(error),
            model=outcome.model[0] if outcome.model else None,
            model_version=outcome.model[1] if outcome.model else None,
        )

    async def _resend(self, outcome: Outcome, error: BaseException) -> None:
        """Retry a send that failed for a transient reason; else dead-letter, or stop uncommitted."""
        assert self.producer is not None
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
                self._finish(outcome)
                return
            except Exception as final:
                error = final
        record = outcome.record
        if isinstance(outcome, Result):
            rejected = ResultRejectedError(f"the result of request {outcome.request_id!r} was refused: {error!r}")
            rejected.__cause__ = error
            await self.send(DeadLetter(record, rejected, outcome.request_id, None, attempts=s.retry_attempts))
            return
        log.critical(
            "dead_letter_failed",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            request_id=outcome.request_id,
            error=repr(error),
            hint="the input offset stays uncommitted; the record is retried after a restart",
        )
        self.fatal = FatalError(f"dead letter of {record.topic}[{record.partition}]@{record.offset} not written")
        self.request_stop()

    async def _publish_status(self, key: bytes, value: bytes) -> None:
        """Send a status record in the background (a missing status topic must not stall us)."""
        assert self.producer is not None
        producer, topic = self.producer, self.settings.control_topic + STATUS_SUFFIX

        async def send() -> None:
            try:
                await producer.send_and_wait(topic, value=value, key=key)
            except Exception as error:
                log.warning("status_not_published", topic=topic, error=repr(error))

        self._spawn(send())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ commit side

    async def commit_loop(self) -> None:
        """Commit acknowledged offsets every commit interval."""
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            await self.commit()

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit the offsets whose every predecessor is acknowledged."""
        assert self.consumer is not None
        if self.fatal is not None:
            return
        assigned = {tp.partition for tp in self.consumer.assignment() if tp.topic == self.settings.input_topic}
        offsets = {
            partition: offset
            for partition, offset in self.tracker.committable().items()
            if partition in assigned and (partitions is None or partition in partitions)
        }
        if not offsets:
            return
        topic = self.settings.input_topic
        try:
            await self.consumer.commit({TopicPartition(topic, p): offset for p, offset in offsets.items()})
        except KafkaError as error:
            log.warning(
                "commit_failed",
                error=repr(error),
                partitions=len(offsets),
                hint="the records after the last commit will be delivered again",
            )
            return
        self.tracker.mark_committed(offsets)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Before partitions go to another worker: finish their in-flight records, commit them."""
        deadline = self.clock() + self.settings.shutdown_grace_s
        self.wake.set()
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.input_topic}
        await self._wait_until(lambda: self.tracker.in_flight(partitions) == 0, deadline)
        await self.commit(partitions)
        self.tracker.forget(partitions)
        if revoked:
            log.info("partitions_revoked", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def _wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        while not condition():
            if self.clock() >= deadline:
                return False
            self.wake.set()
            await asyncio.sleep(0.01)
        return True


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if not assigned:
            return
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
