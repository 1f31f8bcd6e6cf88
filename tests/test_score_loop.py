"""The score loop hands the model thread its next batch while the last one's outcomes are sent,
sends outcomes in the order batches closed, and fails as a whole when sending fails."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import until
from worker.batcher import Batch
from worker.observe import Observer
from worker.scoring import PIPELINE, ScoreLoop
from worker.settings import Settings


@dataclass
class FakeModel:
    max_batch_rows: int | None = 1  # every item its own batch
    fixed_batch: int | None = None


@dataclass
class FakeItem:
    name: str
    model: FakeModel
    key: str = "layout"
    rows: int = 1


def make_loop(executor: ThreadPoolExecutor, send: Any, scored: list[str]) -> ScoreLoop:
    loop = ScoreLoop(Settings(), executor, send, time.monotonic, Observer())

    def score(items: list[FakeItem]) -> list[str]:  # the model thread: note the batch, "score" it
        scored.extend(item.name for item in items)
        return [f"outcome-{item.name}" for item in items]

    loop.score = score  # type: ignore[assignment]
    return loop


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel the score loop as the worker does at shutdown; it ends cancelled."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_next_batch_is_scored_while_the_last_ones_outcomes_are_sent() -> None:
    """Sending batch a's outcome blocks; b and c are scored meanwhile (two out at most: b, then c once
    a's room is freed), and outcomes leave in the order the batches closed."""
    sent: list[str] = []
    scored: list[str] = []
    release = asyncio.Event()

    async def send(outcome: str) -> None:
        if outcome == "outcome-a":
            await release.wait()
        sent.append(outcome)

    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = make_loop(executor, send, scored)
        for name in "abcd":
            loop.add(FakeItem(name, FakeModel()))  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        await until(lambda: len(scored) >= 1 + PIPELINE, 5)
        assert ["a", "b", "c"] == scored and [] == sent  # a's send is held: b and c went on
        release.set()
        await until(lambda: len(sent) >= 4, 5)
        await cancelled(task)
    assert ["outcome-a", "outcome-b", "outcome-c", "outcome-d"] == sent


async def test_a_send_that_fails_ends_run_with_its_error() -> None:
    """The worker watches run(): a failure must come out of it, as itself (not an exception group)."""

    async def send(outcome: str) -> None:
        raise RuntimeError(f"cannot send {outcome}")

    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = make_loop(executor, send, [])
        loop.add(FakeItem("a", FakeModel()))  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="cannot send outcome-a"):
            await asyncio.wait_for(loop.run(), 5)


async def test_a_batchs_run_time_leaves_out_its_wait_behind_the_batch_before() -> None:
    """`ran_s` (what the inference histogram observes) is the batch's own run: b, queued while a is
    held for 0.3 s, runs in no time; measured from when it went out it would be 0.3 s or more."""
    hold = threading.Event()
    ran: dict[str, float] = {}

    class Noting(Observer):
        def scored(self, batch: Batch[Any]) -> None:
            ran[batch.items[0].name] = batch.ran_s

    def score(items: list[FakeItem]) -> list[str]:
        if items[0].name == "a":
            hold.wait(5)
        return [f"outcome-{item.name}" for item in items]

    async def send(outcome: str) -> None:
        return None

    with ThreadPoolExecutor(max_workers=1) as executor:
        loop = ScoreLoop(Settings(), executor, send, time.monotonic, Noting())
        loop.score = score  # type: ignore[assignment]
        for name in "ab":
            loop.add(FakeItem(name, FakeModel()))  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.3)
        hold.set()
        await until(lambda: len(ran) >= 2, 5)
        await cancelled(task)
    assert ran["a"] >= 0.3 > ran["b"]
