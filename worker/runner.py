"""One worker process: consume, batch, score, produce, commit.

Lifecycle: `startup()` (connect, follow the control topic, load the default model, join the
group) -> `main_loop()` (fetch until told to stop, or until drained in burst mode) ->
`shutdown()` (stop fetching, drain in-flight work within the grace period, commit, close).

Three tasks share the work: the fetch loop (here) admits records (`worker.admit` decides each
one's fate), the score loop (`worker.scoring`) runs closed batches in the model thread and hands
outcomes to the sender (`worker.sender`), the commit loop commits what is acknowledged
(`worker.committer`). An offset is committed only when every record before it in its partition
has its result or dead letter acknowledged. What happens when partitions go and come is
`worker.ownership`'s; a share group's worker (`worker.sharing`) overrides how records come and go.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiokafka import TopicPartition

from schemas.codec import Limits
from schemas.errors import FatalError
from schemas.records import Record
from transport.seams import GroupConsumer, Producer
from worker.admit import Admitted, Fate, Load, admit, admit_loaded
from worker.clients import Clients, KafkaClients, connect
from worker.committer import Commits, Committer, TransactionalCommitter
from worker.control import ControlFollower
from worker.flow import Flow, size_of
from worker.observe import Observer
from worker.offsets import OffsetTracker, partition_of
from worker.outcomes import DeadLetter, Outcome
from worker.ownership import Ownership
from worker.pauses import Pauses
from worker.policy import NOT_AUTHORIZED, access_refused
from worker.retrytopics import RetryTopics, first_not_due
from worker.scoring import ScoreLoop
from worker.sender import Sender, log_dead_letter
from worker.serving import Serving
from worker.settings import Settings
from worker.store import ModelStore
from worker.transactions import PartitionTransactions

log = structlog.get_logger("streamscore.worker")

FETCH_TIMEOUT_MS = 100
BURST_UNASSIGNED_EXIT_S = 10.0
PROGRESS_INTERVAL_S = 10.0
POLL_WHILE_PAUSED_S = 1.0


class Worker(Ownership):
    """Scores the records of the partitions this process is assigned."""

    def __init__(
        self,
        settings: Settings,
        *,
        clients: Clients | None = None,
        store: ModelStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients or KafkaClients()
        self.clock = clock
        self.observer = observer or Observer()
        self.limits = Limits(settings.max_record_bytes, settings.max_request_rows, settings.allow_nonfinite)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.flow = Flow(settings.max_in_flight, settings.max_in_flight_bytes)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.serving = Serving(store or ModelStore.from_settings(settings), self.executor, settings.worker_name)
        self.scoring = ScoreLoop(settings, self.executor, self._send, clock, self.observer)
        self.started = False  # connected, model loaded, group joined (or joining)
        self.stopping = False
        self.fatal: FatalError | None = None
        self._stuck = 0  # records whose outcome was refused for good: never acknowledged
        self._crashed = False  # a loop of the worker died: what it held will not finish
        self.consumer: GroupConsumer | None = None
        self.producer: Producer | None = None
        self.sender: Sender | None = None
        self.committer: Commits | None = None
        self.transactions: PartitionTransactions | None = None  # exactly once
        self.retries = RetryTopics.of(settings)
        self.pauses = Pauses()
        self._floors: dict[TopicPartition, int] = {}  # exactly once: where each partition was read from
        self.control: ControlFollower | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._polled_at = clock()
        self.freeze_heap = False  # a worker process's entry sets it (`freeze_heap`); tests leave their heap alone

    @property
    def in_flight(self) -> int:
        """Records taken and not yet acknowledged."""
        return self.flow.in_flight

    @property
    def since_poll(self) -> float:
        """Seconds since the consumer was last polled (fetching, or polling while paused)."""
        return self.clock() - self._polled_at

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start, work until stopped or drained, shut down. Returns the process exit code."""
        try:
            await self.startup()
            if self.freeze_heap:
                freeze_heap()
            await self.main_loop()
        finally:
            drained = await self.shutdown()
        if self.fatal is not None:
            return self.fatal.exit_code
        return 0 if drained else 1

    def request_stop(self) -> None:
        """Stop fetching and begin the drain (what a signal handler calls)."""
        if not self.stopping:
            log.info("worker_stopping", in_flight=self.in_flight)
        self.stopping = True
        self.scoring.draining = True
        self.scoring.wake.set()
        self.flow.room.set()

    async def startup(self) -> None:
        """Connect, apply the control topic's desired states, load the default model, join the group."""
        s = self.settings
        written = [s.results_topic, s.dead_letter_topic_name, s.shadow_topic_name, *self.retries.topics]
        limits = await self.clients.limits(s, written)
        self.producer = self.clients.producer(s, limits)
        if s.exactly_once:
            self.transactions = PartitionTransactions(self.clients, s, limits)
        self.sender = Sender(
            self.producer,
            s,
            self._finish,
            self._refused,
            limits=limits,
            transactions=self.transactions,
            on_lost=self._lose,
            retries=self.retries,
        )
        await connect(self.producer.start, "producer", s)
        if s.control_topic:
            self.control = ControlFollower(self.clients.reader(s), s.control_topic, self.serving.apply)
            self.serving.publish = self.sender.publish_status
            await connect(self.control.start, "control consumer", s)
        model = await self.serving.load_default()
        log.info(
            "model_serving",
            model=model.name,
            version=model.version,
            sha256=model.sha256,
            inputs=[(i.name, i.datatype, i.shape) for i in model.inputs],
            providers=list(model.providers),
        )
        await self._join()
        self._start_tasks()
        self.started = True
        log.info(
            "worker_started",
            topic=s.input_topic,
            group=s.group_id,
            results=s.results_topic,
            dead_letters=s.dead_letter_topic_name,
            bootstrap=s.bootstrap_servers,
            guarantee=s.guarantee,
        )

    async def _join(self) -> None:
        """Join the consumer group; commits go through the consumer, or through each partition's transaction."""
        s = self.settings
        self.consumer = self.clients.consumer(s, self)
        await connect(self.consumer.start, "consumer", s)
        self.pauses.consumer = self.consumer
        self.committer = (
            Committer(self.consumer, self.tracker)
            if self.transactions is None
            else TransactionalCommitter(  # self: the Barrier
                self.consumer, self.tracker, self.transactions, self, s.session_timeout_ms / 1000
            )
        )

    def _start_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        loops = {"score_loop": self.scoring.run(), "commit_loop": self.commit_loop()}
        if self.control is not None:
            loops["control_follow"] = self.control.follow()
        self._tasks = [self._watch(loop.create_task(coroutine, name=name)) for name, coroutine in loops.items()]

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
                self._crashed = True
                self._fail(FatalError(f"{task.get_name()} failed: {error!r}"))

        task.add_done_callback(done)
        return task

    async def main_loop(self) -> None:
        """Fetch and admit records until told to stop (or drained, in burst mode)."""
        unassigned_since = last_progress = self.clock()
        while not self.stopping:
            last_progress = self._progress(last_progress)
            if self._apply_backpressure():
                await self.flow.wait_for_room()
                await self._keep_polling()
                continue
            fetched = await self._fetch()
            if self._consumer.assignment():
                unassigned_since = self.clock()
            if not fetched and self.settings.burst and await self._drained(unassigned_since):
                log.info("worker_drained", **self.observer.summary())
                return

    def _progress(self, last: float) -> float:
        """Log `worker_progress` every PROGRESS_INTERVAL_S; when it was last logged."""
        if self.clock() - last < PROGRESS_INTERVAL_S:
            return last
        log.info(
            "worker_progress",
            in_flight=self.in_flight,
            in_flight_bytes=self.flow.in_flight_bytes,
            paused=self.flow.paused,
            resending=self.sender.troubled if self.sender is not None else 0,
            **self.observer.summary(),
        )
        return self.clock()

    async def shutdown(self) -> bool:
        """Drain in-flight work within the grace period, commit, close. True if fully drained."""
        self.request_stop()
        deadline = self.clock() + self._grace()
        drained = await self._wait_until(lambda: self.in_flight <= self._stuck or self._crashed, deadline)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.committer is not None and not self._abandoning():
            await self.committer.commit()  # after a fatal error too: what was acknowledged is not done again
        if self.transactions is not None:
            await self.transactions.close()
        if not drained:
            log.warning(
                "shutdown_grace_expired", cancelled_in_flight=self.in_flight, grace_s=self.settings.shutdown_grace_s
            )
        for client in (self.consumer, self.control, self.producer):
            if client is not None:
                await client.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker_stopped", drained=drained, **self.observer.summary())
        return drained

    # ------------------------------------------------------------------ fetch side

    @property
    def _consumer(self) -> GroupConsumer:
        assert self.consumer is not None, "the consumer starts in startup()"
        return self.consumer

    async def _keep_polling(self) -> None:
        """While paused, poll now and then all the same: a consumer that does not poll for
        max.poll.interval.ms leaves its group. Paused partitions return nothing; a partition a
        rebalance just added may, and what it returns is taken like any fetch."""
        if self.clock() - self._polled_at >= POLL_WHILE_PAUSED_S:
            await self._fetch(timeout_ms=0)

    async def _fetch(self, timeout_ms: int = FETCH_TIMEOUT_MS) -> bool:
        """Fetch what there is room for and admit it; whether anything came."""
        self._polled_at = self.clock()
        try:
            fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.flow.fetch_size())
        except NOT_AUTHORIZED as error:  # READ on an input topic refused: stop, committing what is done
            self._fail(access_refused(error, "consumer", group=self.settings.group_id))
            return False
        for partition, fetched_records in fetched.items():
            records = self._admissible(partition, fetched_records)
            if not records:
                continue
            due, next_due = first_not_due(records, self.retries, self.pauses.now_ms())
            for record in records[:due]:
                await self.take(record)
            if next_due is not None:  # a retry topic's record not due yet: read it again when it is
                self.pauses.wait(partition, records[due].offset, next_due)
        if fetched:
            self.scoring.wake.set()
        return bool(fetched)

    def _admissible(self, partition: TopicPartition, records: Sequence[Record]) -> Sequence[Record]:
        """Exactly once: none of a partition's records before its producer has started and it was read
        from its committed offset (`_take_on`), and none below that offset. aiokafka may fetch a newly
        assigned partition from an offset its last owner's transaction was still replacing (it does not
        ask for stable offsets, KIP-447); those records are in that transaction already."""
        if self.transactions is None:
            return records
        floor = self._floors.get(partition)
        if floor is None:
            return []
        return records if records[0].offset >= floor else [r for r in records if r.offset >= floor]

    async def take(self, record: Record) -> None:
        """Track a fetched record and carry out its fate: batch it, dead-letter it, or load first."""
        self.observer.consumed(record)
        self._track(record)
        self.flow.taken(size_of(record))
        fate = self._admit(record)
        if isinstance(fate, Load):
            problem = await self.serving.prepare(fate.name, fate.version)
            fate = admit_loaded(fate, self.serving.lineup, problem)
        if isinstance(fate, Admitted):
            self.scoring.add(fate.item)
            if fate.twin is not None:
                self.scoring.add(fate.twin)
        else:
            await self._send(fate)

    def _admit(self, record: Record) -> Fate:
        """Decode the record and choose its model (worker/admit.py decides)."""
        return admit(record, self.limits, self.serving.lineup)

    def _track(self, record: Record) -> None:
        """A record is in flight until its outcome is acknowledged (`_settle`)."""
        self.tracker.take(partition_of(record), record.offset)

    def _apply_backpressure(self) -> bool:
        """Carry out the flow's decision on the assigned partitions; True while paused."""
        step = self.flow.decide(blocked=self.sender is not None and self.sender.troubled > 0)
        if step in ("pause", "hold", "resume"):
            self.flow.paused = step != "resume"
        self.pauses.backpressure = self.flow.paused
        self.pauses.apply()
        return self.flow.paused

    async def _drained(self, unassigned_since: float) -> bool:
        if self.in_flight or not self.scoring.idle or self.pauses.held or self.tracker.any_failed():
            return False
        assignment = list(self._consumer.assignment())
        if not assignment:
            return self.clock() - unassigned_since >= BURST_UNASSIGNED_EXIT_S
        ends = await self._consumer.end_offsets(assignment)
        for tp in assignment:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    # ------------------------------------------------------------------ produce side

    async def _send(self, outcome: Outcome) -> None:
        assert self.sender is not None, "the sender starts in startup()"
        await self.sender.send(outcome)

    def _finish(self, outcome: Outcome) -> None:
        """An outcome is acknowledged: its offset may be committed (shadow results: only counted)."""
        self.observer.finished(outcome)
        if outcome.shadow:  # shadow results are best effort: no offset waits for them
            return
        self._settle(outcome)
        self.flow.finished(size_of(outcome.record))
        if isinstance(outcome, DeadLetter):
            log_dead_letter(outcome)
        if self.in_flight == 0:
            self.scoring.wake.set()

    def _settle(self, outcome: Outcome) -> None:
        """The record's offset may be committed once those before it are (worker/offsets.py)."""
        self.tracker.finish(partition_of(outcome.record), outcome.record.offset)

    def _lose(self, outcome: Outcome) -> None:
        """Exactly once: an outcome was lost with its transaction; its partition will be read again."""
        self.tracker.fail(partition_of(outcome.record), outcome.record.offset)
        self.flow.finished(size_of(outcome.record))
        if self.in_flight == 0:
            self.scoring.wake.set()

    def _refused(self, error: FatalError) -> None:
        """A record's outcome was refused for good (worker/policy.py: Stop): it stays in flight, never
        acknowledged; the others in flight may still be, and are waited for before the last commit."""
        self._stuck += 1
        self._fail(error)

    def _fail(self, error: FatalError) -> None:
        """Something must not go on (a dead letter refused, an ACL missing): stop. The offsets of what
        was acknowledged are committed; from the record that failed on, nothing is."""
        self.fatal = error
        self.request_stop()


def freeze_heap() -> None:
    """Collect once, then keep what startup built (modules, the model's session, the clients) out of
    every later garbage collection.

    CPython's full collections walk every tracked object; in a worker most of them are the modules
    and objects loaded at startup, which live as long as the process. Measured with two worker
    processes on single-row requests (`python -m bench --scenarios two-process-mlp`, four
    interleaved pairs): 32.4k-34.8k -> 36.1k-39.5k rows/s, and p99 at half the peak rate 87-113 ->
    46-64 ms; in one process, each of a run's 39 full collections took 33 ms on average, up to 87 ms.
    Objects made later are collected as before; a frozen object is still freed when its count drops.
    """
    gc.collect()
    gc.freeze()
