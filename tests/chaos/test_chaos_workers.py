"""Chaos on the workers, on a 3-node cluster: processes killed, stopped, frozen, added and removed under load.

Every scenario runs `streamscore worker` supervisors as subprocesses against the cluster, streams
one-row requests for the demo MLP with 1 % poison (not JSON), applies its fault, lets the stream
finish, and accounts for every id with the checker (tests/chaos/checker.py): never a request
missing or invented, never a good one dead-lettered or a poison one scored, never an offset
committed before the outputs below it; duplicates only where the guarantee allows them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.chaos.scenario import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    SESSION_TIMEOUT_MS,
    assigned,
    duplicates_outside,
    guarantees,
    uncommitted,
)
from tests.chaos.workers import count, ever_held_by

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

FLOW_TIMEOUT_S = 180.0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", guarantees())
@pytest.mark.parametrize(
    "point",
    [
        pytest.param(0.2, id="at-20"),
        pytest.param(0.5, id="at-50", marks=pytest.mark.chaos_fast),
        pytest.param(0.8, id="at-80"),
    ],
)
async def test_sigkill_one_of_three_worker_processes(chaos: Any, guarantee: str, point: float) -> None:
    """Step by step:
    1. One supervisor runs three worker processes on six partitions; a stream of requests starts.
    2. At `point` of the stream (acknowledged by the broker), one worker process gets SIGKILL; the
       supervisor starts another, and the group rebalances.
    3. The stream finishes; the workers score it to the end and stop on SIGTERM.
    Nothing is missing or invented. Exactly-once: nothing comes twice. At-least-once: only what the
    killed process may have scored without committing comes twice: records of the partitions it held,
    at or past the offsets committed before the kill and before the end offsets read just after it;
    their number is the bound (at most its in-flight records, plus those acknowledged since its last commit).
    """
    c = await chaos(f"1 sigkill {point:.0%}", guarantee)
    count_, rate = c.tier.pick((4000, 500), (20_000, 800))
    await c.watch()
    workers = c.start_workers(processes=3)
    pids = await workers.ready(3)
    holders = await assigned(c)
    stream = c.stream(count_, rate)
    stream.start()

    await stream.reached(point)
    killed = next(pid for pid in pids if holders.get(pid))
    before = await c.committed()
    os.kill(killed, signal.SIGKILL)
    after = await c.ends()
    held = holders[killed]

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    bound = 0 if guarantee == EXACTLY_ONCE else uncommitted(before, after, held)
    row = await c.account(bound)

    assert "ok" == row.verdict, row.explain()
    assert [] == duplicates_outside(c, {p: (before[p], after[p]) for p in held})
    assert set() == unscored, f"{len(unscored)} requests without an output while the workers ran"
    assert {workers.name: 0} == codes
    assert 1 == count(workers.events(), "worker_process_died")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", guarantees(fast=(AT_LEAST_ONCE,)))
async def test_rolling_sigterm_restart_of_every_worker(chaos: Any, guarantee: str) -> None:
    """Step by step:
    1. Three supervisors of one worker process each (each its own process group) share six
       partitions; a stream of requests starts.
    2. In turn, each supervisor's process group gets SIGTERM (as systemd and Kubernetes send it):
       its worker drains, commits and leaves; a new supervisor takes its place and the next one
       goes once every partition is held again.
    3. The stream finishes; the last three stop on SIGTERM.
    Nothing is missing, invented, or (a graceful stop commits what it finished) duplicated, in
    either guarantee; every supervisor exits 0.
    """
    c = await chaos("2 rolling sigterm", guarantee)
    count_, rate = c.tier.pick((4000, 300), (15_000, 500))
    await c.watch()
    first = [c.start_workers(name=f"worker-{i}") for i in range(1, 4)]
    for workers in first:
        await workers.ready(1)
    await assigned(c)
    stream = c.stream(count_, rate)
    stream.start()

    codes = {}
    for i, workers in enumerate(first, start=1):
        await stream.reached(0.2 * i)
        codes[workers.name] = await workers.stop()
        await c.start_workers(name=f"worker-{i}-again").ready(1)
        await assigned(c)

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes |= await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert dict.fromkeys(codes, 0) == codes


@pytest.mark.timeout(600)
async def test_sigstop_a_worker_mid_transaction_then_sigcont(chaos: Any) -> None:
    """Step by step (exactly-once):
    1. One supervisor runs two worker processes on six partitions; a stream starts, so that each
       has a transaction open at every moment.
    2. At 30 % of the stream one worker process gets SIGSTOP and stays frozen for twice the session
       timeout: the broker aborts its open transaction (transaction timeout below the session
       timeout), the group gives its partitions to the other process, whose producers fence its own.
    3. SIGCONT: the frozen process wakes with a transaction that can no longer commit.
    4. The stream finishes; the workers stop on SIGTERM.
    Its transaction never commits: the records of the partitions it held appear exactly once, as
    every other record; nothing is missing.
    """
    c = await chaos("5 sigstop 2x session", EXACTLY_ONCE)
    count_, rate = c.tier.pick((4000, 200), (10_000, 300))
    await c.watch()
    workers = c.start_workers(processes=2)
    pids = await workers.ready(2)
    holders = await assigned(c)
    stream = c.stream(count_, rate)
    stream.start()

    await stream.reached(0.3)
    frozen = next(pid for pid in pids if holders.get(pid))
    os.kill(frozen, signal.SIGSTOP)
    try:
        await asyncio.sleep(2 * SESSION_TIMEOUT_MS / 1000)
    finally:
        os.kill(frozen, signal.SIGCONT)

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert [] == duplicates_outside(c, {})
    assert set() == unscored
    assert {workers.name: 0} == codes
    assert ever_held_by(workers.events(), pid=next(p for p in pids if p != frozen)) & holders[frozen], (
        "the other process never took the frozen one's partitions"
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", guarantees())
async def test_rebalance_storm(chaos: Any, guarantee: str) -> None:
    """Step by step:
    1. One worker process (a supervisor of one) serves six partitions; a stream starts.
    2. Every few seconds the number of worker processes changes, 1 -> 4 -> 2 -> 3: supervisors
       start, or get SIGTERM to their process group, several at once; each change is a rebalance
       under load.
    3. The stream finishes; the remaining three stop on SIGTERM.
    Nothing is missing or invented; as no process dies (every one leaves by SIGTERM, committing
    on revocation), nothing is duplicated in either guarantee; every supervisor exits 0.
    """
    c = await chaos("6 rebalance storm", guarantee)
    count_, rate = c.tier.pick((5000, 300), (15_000, 400))
    interval_s = c.tier.pick(3.0, 6.0)
    await c.watch()
    live = [c.start_workers(name="worker-1")]
    await live[0].ready(1)
    await assigned(c)
    stream = c.stream(count_, rate)
    stream.start()

    codes: dict[str, int] = {}
    for target in (4, 2, 3):
        await asyncio.sleep(interval_s)
        while len(live) < target:
            live.append(c.start_workers(name=f"worker-{len(c.supervisors) + 1}"))
        leaving, live = live[: len(live) - target], live[len(live) - target :]
        stopped = await asyncio.gather(*(w.stop() for w in leaving))
        codes |= {w.name: code for w, code in zip(leaving, stopped, strict=True)}
        await asyncio.gather(*(w.ready(1) for w in live))

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes |= await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert dict.fromkeys(codes, 0) == codes
    assert 3 == len(live) and 5 == len(c.supervisors)
