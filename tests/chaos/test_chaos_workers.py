"""Chaos on the workers, on a 3-node cluster: processes killed, stopped, frozen, added and removed under load.

Every scenario runs `streamscore worker` supervisors as subprocesses against the cluster, streams
one-row requests for the demo MLP with 1 % poison (not JSON), applies its fault, lets the stream
finish, and accounts for every id with the checker (tests/chaos/checker.py): never a request
missing or invented, never a good one dead-lettered or a poison one scored, never an offset
committed before the outputs below it; duplicates only where the guarantee allows them.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tests.chaos.scenario import (
    EXACTLY_ONCE,
    assigned,
    duplicates_outside,
    guarantees,
    uncommitted,
)
from tests.chaos.workers import count

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
