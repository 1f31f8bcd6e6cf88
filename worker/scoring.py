"""The score loop: close batches (full, due, or all of them when stopping), score each in the model
thread, and hand its outcomes on. Scoring itself is pure (`worker.pipeline.score_batch`).

The loop never dies of a batch: should scoring raise after all, the batch's records are
dead-lettered with the error (stage infer) and the loop goes on with the next batch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import structlog

from transport.partitioner import PARTITIONER
from worker.batcher import Batch, MicroBatcher
from worker.observe import Observer
from worker.outcomes import Item, Outcome, Result
from worker.pipeline import score_batch, unscored
from worker.settings import DEFAULT_MAX_BATCH_ROWS, Settings

log = structlog.get_logger("streamscore.worker")

PIPELINE = 2  # batches out to the model thread at once: the one it scores, and the next
Scored = asyncio.Queue[tuple[Batch[Item], "asyncio.Future[list[Outcome]]"]]  # batches out, in the order they closed


class ScoreLoop:
    """Batches items and scores the batches in `executor`, the next one queued while one runs."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        send: Callable[[Outcome], Awaitable[None]],
        clock: Callable[[], float],
        observer: Observer,
    ) -> None:
        rows = settings.max_batch_rows or DEFAULT_MAX_BATCH_ROWS  # for a model the store did not size
        self.batcher: MicroBatcher[Item] = MicroBatcher(rows, settings.max_batch_delay_ms / 1000)
        self.ready: deque[Batch[Item]] = deque()
        self.wake = asyncio.Event()  # a batch may be ready, or the worker is stopping
        self.draining = False  # close every batch now, due or not
        self.executor = executor
        self.send = send
        self.clock = clock
        self.observer = observer
        self.score = functools.partial(
            score_batch, correlation=settings.correlation_headers, check_finite=not settings.allow_nonfinite
        )

    def add(self, item: Item) -> None:
        """Put an item in its batch; a batch it fills is ready at once."""
        model = item.model
        cap = model.max_batch_rows or self.batcher.max_rows
        closed = self.batcher.add(item.key, item, item.rows, self.clock(), min(cap, model.fixed_batch or cap))
        if closed:
            self.ready.extend(closed)

    @property
    def idle(self) -> bool:
        """Nothing waits to be scored."""
        return not len(self.batcher) and not self.ready

    async def run(self) -> None:
        """Score batches as they close, forever (cancelled at shutdown).

        The next batch goes to the model thread while the last one's outcomes are sent: the thread
        starts it the moment it is free, instead of idling while the loop takes the outcomes and
        closes another batch (13 % of its time for the bench's CNN). At most `PIPELINE` batches
        are out; the thread scores them in turn, so outcomes are sent in the order batches closed.
        """
        scored: Scored = asyncio.Queue()
        room = asyncio.Semaphore(PIPELINE)
        try:
            async with asyncio.TaskGroup() as group:  # one fails: the other is cancelled, and run() raises
                group.create_task(self._submit(scored, room))
                group.create_task(self._send_in_turn(scored, room))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _submit(self, scored: Scored, room: asyncio.Semaphore) -> None:
        while True:
            await room.acquire()
            batch = await self.next_batch()
            self.observer.started(batch)
            scored.put_nowait((batch, asyncio.ensure_future(self.outcomes_of(batch))))

    async def _send_in_turn(self, scored: Scored, room: asyncio.Semaphore) -> None:
        while True:
            batch, outcomes = await scored.get()
            done = await outcomes
            self.observer.scored(batch)
            room.release()
            PARTITIONER.prime([outcome.key for outcome in done if isinstance(outcome, Result)])
            for outcome in done:
                await self.send(self.observer.outgoing(outcome))

    def _timed(self, batch: Batch[Item]) -> list[Outcome]:
        """Score in the model thread, noting how long it took (the batch may have waited behind another)."""
        started = time.perf_counter()
        try:
            return self.score(batch.items)
        finally:
            batch.ran_s = time.perf_counter() - started

    async def outcomes_of(self, batch: Batch[Item]) -> list[Outcome]:
        """Score `batch` in the model thread; if that raises, every record's dead letter with the error."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._timed, batch)
        except Exception as error:  # a failed score loop would stop the worker: a crash loop on restart
            model = batch.items[0].model
            log.error(
                "batch_failed",
                model=model.name,
                version=model.version,
                records=len(batch.items),
                error=repr(error),
                hint="its records are dead-lettered (stage infer); the worker goes on",
            )
            return [unscored(item, error) for item in batch.items]

    async def next_batch(self) -> Batch[Item]:
        """The next closed batch, waiting until one is full or due."""
        while True:
            self.ready.extend(self.batcher.drain() if self.draining else self.batcher.due(self.clock()))
            if self.ready:
                return self.ready.popleft()
            self.wake.clear()
            deadline = self.batcher.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
