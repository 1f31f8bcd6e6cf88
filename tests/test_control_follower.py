"""Following the control topic: the latest state of each model at start, then every change, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

import worker.control
from schemas.control import DesiredState, encode_state
from tests.fakes import FakeCluster, FakeReader
from tests.harness import until
from worker.control import ControlFollower

TOPIC = "control"


class Applied:
    """A fake `apply`: keeps every state it is given (as model@current), and raises for model `failing`."""

    def __init__(self, failing: str | None = None) -> None:
        self.failing = failing
        self.states: list[str] = []

    async def __call__(self, state: DesiredState) -> None:
        self.states.append(f"{state.model}@{state.current}")
        if state.model == self.failing:
            raise RuntimeError(f"cannot apply {state.model}")


def publish(cluster: FakeCluster, model: str, current: str) -> None:
    """Write a desired state to the control topic, keyed by its model."""
    cluster.append(TOPIC, encode_state(DesiredState(model, current=current)), key=model.encode())


def follower_over(cluster: FakeCluster, applied: Applied) -> ControlFollower:
    return ControlFollower(FakeReader(cluster), TOPIC, applied, retry_s=0.01)


@contextlib.asynccontextmanager
async def following(follower: ControlFollower) -> AsyncIterator[None]:
    """Run `follower.follow()` as a task for the duration of the block (a crash of it fails the test)."""
    task = asyncio.create_task(follower.follow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_missing_topic_is_looked_for_again_until_it_exists() -> None:
    """Step by step: no topic, start() returns unassigned without applying; follow() looks again every
    retry_s; the topic is created with a state; the follower catches up and applies it."""
    cluster, applied = FakeCluster(), Applied()
    follower = follower_over(cluster, applied)

    await follower.start()

    assert (False, []) == (follower.assigned, applied.states)
    async with following(follower):
        await asyncio.sleep(0.05)  # several retries, nothing to read yet
        assert [] == applied.states
        publish(cluster, "mlp", "2")
        await until(lambda: bool(applied.states))
        assert (True, ["mlp@2"]) == (follower.assigned, applied.states)


async def test_catch_up_applies_the_latest_state_of_each_model_before_start_returns() -> None:
    """Five states of two models: start() applies the last of each, in the order the models first appear."""
    cluster, applied = FakeCluster(), Applied()
    for model, current in [("b", "1"), ("a", "1"), ("b", "2"), ("a", "2"), ("b", "3")]:
        publish(cluster, model, current)

    await follower_over(cluster, applied).start()

    assert ["b@3", "a@2"] == applied.states


async def test_catch_up_on_an_empty_topic_applies_nothing_and_follows() -> None:
    """An existing but empty control topic: assigned, nothing applied, the first state is followed."""
    cluster, applied = FakeCluster(), Applied()
    cluster.create(TOPIC)
    follower = follower_over(cluster, applied)

    await follower.start()

    assert (True, []) == (follower.assigned, applied.states)
    async with following(follower):
        publish(cluster, "mlp", "1")
        await until(lambda: bool(applied.states))
    assert ["mlp@1"] == applied.states


async def test_follow_applies_new_states_in_order() -> None:
    """After a catch-up of one state, each state written later is applied once, in the order written."""
    cluster, applied = FakeCluster(), Applied()
    publish(cluster, "mlp", "1")
    follower = follower_over(cluster, applied)
    await follower.start()

    async with following(follower):
        for model, current in [("mlp", "2"), ("other", "1"), ("mlp", "3")]:
            publish(cluster, model, current)
        await until(lambda: len(applied.states) >= 4)
        publish(cluster, "mlp", "4")
        await until(lambda: len(applied.states) >= 5)

    assert ["mlp@1", "mlp@2", "other@1", "mlp@3", "mlp@4"] == applied.states


async def read(cluster: FakeCluster, applied: Applied, when: str, write: Callable[[], None], count: int) -> None:
    """Write records before start() (`catch-up`) or while following (`follow`); wait for `count` applies."""
    follower = follower_over(cluster, applied)
    cluster.create(TOPIC)
    if when == "catch-up":
        write()
    await follower.start()
    async with following(follower):
        if when == "follow":
            write()
        await until(lambda: len(applied.states) >= count)


@pytest.mark.parametrize("when", ["catch-up", "follow"])
async def test_unreadable_records_and_tombstones_are_skipped(when: str) -> None:
    """A record that is not a state and a null value are skipped; the states around them are applied."""
    cluster, applied = FakeCluster(), Applied()

    def write() -> None:
        publish(cluster, "a", "1")
        cluster.append(TOPIC, b"not json", key=b"b")
        cluster.append(TOPIC, None, key=b"c")
        publish(cluster, "d", "1")

    await read(cluster, applied, when, write, count=2)

    assert ["a@1", "d@1"] == applied.states


@pytest.mark.parametrize("when", ["catch-up", "follow"])
async def test_a_state_that_cannot_be_applied_does_not_stop_the_next(when: str) -> None:
    """apply raises for model `bad`: the states after it are applied all the same."""
    cluster, applied = FakeCluster(), Applied(failing="bad")

    def write() -> None:
        for model in ("a", "bad", "c"):
            publish(cluster, model, "1")

    await read(cluster, applied, when, write, count=3)

    assert ["a@1", "bad@1", "c@1"] == applied.states


async def test_a_missing_topic_is_said_once_then_rarely(monkeypatch: pytest.MonkeyPatch) -> None:
    """Looked for every retry_s, a missing control topic is logged the first time, then again only after
    MISSING_TOPIC_LOG_S (not every 5 s forever)."""
    said: list[str] = []
    monkeypatch.setattr(worker.control.log, "warning", lambda event, **_: said.append(event))
    now = [0.0]
    follower = ControlFollower(FakeReader(FakeCluster()), TOPIC, Applied(), retry_s=0.001, clock=lambda: now[0])

    await follower.start()
    async with following(follower):
        await asyncio.sleep(0.05)  # many retries within the same minute
        said_first = list(said)
        now[0] += worker.control.MISSING_TOPIC_LOG_S
        await until(lambda: len(said) > len(said_first))

    assert ["control_topic_missing"] == said_first
    assert ["control_topic_missing"] * 2 == said
