"""One worker process: consume, batch, score, produce, commit. With its clients (`worker/clients.py`)
and its produce side (`worker/sender.py`), the only code that talks to Kafka.

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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.codec import InferenceRequest, Limits
from schemas.errors import FatalError, ModelLoadError, ModelNotFoundError, RecordError
from worker.batcher import Batch, MicroBatcher
from worker.clients import connect, make_consumer, make_producer
from worker.control import ControlFollower
from worker.model import LoadedModel
from worker.offsets import OffsetTracker
from worker.pipeline import dead_letter, decode, fallback_id, make_item, model_choice, score_batch
from worker.records import DeadLetter, Item, Outcome, Result
from worker.sender import Sender, log_dead_letter
from worker.serving import Serving
from worker.settings import Settings
from worker.store import ModelStore

log = structlog.get_logger("streamscore.worker")

FETCH_MAX_RECORDS = 1000
FETCH_TIMEOUT_MS = 100
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
        self.sender: Sender | None = None
        self._tasks: list[asyncio.Task[None]] = []
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
        self.producer = make_producer(s, options)
        self.sender = Sender(self.producer, s, self._finish, self._fail)
        self.consumer = make_consumer(s, options, self.on_revoked)
        await connect(self.producer.start, "producer", s)
        if s.control_topic:
            self.control = ControlFollower(options, s.control_topic, self.serving.apply)
            self.serving.publish = self.sender.publish_status
            await connect(self.control.start, "control consumer", s)
        model = await self.serving.load_default()
        log.info(
            "model_serving",
            model=model.name,
            version=model.version,
            sha256=model.sha256,
            inputs=[(i.name, i.datatype, i.shape) for i in model.inputs],
        )
        await connect(self.consumer.start, "consumer", s)
        self._joined = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            self._watch(loop.create_task(self.score_loop(), name="score_loop")),
            self._watch(loop.create_task(self.commit_loop(), name="commit_loop")),
        ]
        if self.control is not None:
            self._tasks.append(self._watch(loop.create_task(self.control.follow(), name="control_follow")))
        log.info(
            "worker_started",
            topic=s.input_topic,
            group=s.group_id,
            results=s.results_topic,
            dead_letters=s.dead_letter_topic_name,
            bootstrap=s.bootstrap_servers,
        )

    def _watch(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """A loop that dies takes the worker down (uncommitted) rather than leaving it half-alive."""

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                log.critical(
                    "worker_task_failed",
                    task=task.get_name(),
                    error=repr(error),
                    hint="the process stops; the supervisor starts a new one",
                )
                self._fail(FatalError(f"{task.get_name()} failed: {error!r}"))

        task.add_done_callback(done)
        return task

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

    def _take(self, record: Any) -> Item | DeadLetter | InferenceRequest:
        """Track a fetched record and decode it; the bare request when its model must be loaded first."""
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
            return request
        return self._item(record, request, model)

    async def _take_with_load(self, record: Any, request: InferenceRequest) -> Item | DeadLetter:
        """The rare path of `_take`: the record names a model or version not loaded yet."""
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
        if isinstance(outcome, InferenceRequest):
            outcome = await self._take_with_load(record, outcome)
        if isinstance(outcome, DeadLetter):
            assert self.sender is not None
            await self.sender.send(outcome)
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
        assert self.sender is not None
        loop, send = asyncio.get_running_loop(), self.sender.send
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
                await send(outcome)

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

    # ------------------------------------------------------------------ produce side (worker/sender.py)

    def _finish(self, outcome: Outcome) -> None:
        """An outcome is acknowledged: its offset may be committed (shadow results: only counted)."""
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
            log_dead_letter(outcome)
        if self.in_flight <= self._resume_at:
            self.room.set()
        if self.in_flight == 0:
            self.wake.set()

    def _fail(self, error: FatalError) -> None:
        """Something must not go on (a dead letter not written): stop, leaving offsets uncommitted."""
        self.fatal = error
        self.request_stop()

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
