"""Chaos from the model: one record whose inference would outlast max.poll.interval.ms, and a
model ten times slower than its input for minutes, on the 3-node cluster.

The model is `demo.models.make_slow_model` (x FP32 [N, 1] -> y = x): a run spins `max(x)` times
(about 4 µs each here), so a request's value sets how long its batch takes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.scenario import AT_LEAST_ONCE, assigned, guarantees
from tests.chaos.traffic import spin
from tests.chaos.workers import RssSampler, count

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

FLOW_TIMEOUT_S = 240.0
#: aiokafka's default max.poll.interval.ms (the worker keeps it): 5 minutes.
MAX_POLL_INTERVAL_S = 300.0
SPIN_S = 4e-6  # one turn of the slow model's loop, measured on the 2-core CI machine
INFERENCE_TIMEOUT_S = 4.0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("guarantee", guarantees())
async def test_one_record_slower_than_max_poll_interval(chaos: Any, guarantee: str, slow_root: Path) -> None:
    """Step by step:
    1. One supervisor runs two worker processes of the slow model with an inference timeout of
       4 s; a stream of fast requests (and 1 % poison) starts.
    2. Mid-stream comes one request whose run would last about an hour, far past
       max.poll.interval.ms (5 min).
    3. The stream finishes; the workers stop on SIGTERM.
    The watchdog stops its run at the timeout and it is dead-lettered (stage infer), once; every
    other request flows; the group never rebalances (each process assigned once, nothing revoked
    before the stop): no endless rebalance loop around the slow record.
    """
    c = await chaos("7 slow record", guarantee, model_root=slow_root)
    count_, rate = c.tier.pick((1500, 150), (4000, 200))
    await c.watch()
    workers = c.start_workers(processes=2, model_name="slow", inference_timeout_s=INFERENCE_TIMEOUT_S)
    await workers.ready(2)
    await assigned(c)
    settled = len(workers.events())
    slow_turns = 10 * MAX_POLL_INTERVAL_S / SPIN_S
    stream = c.stream(
        count_, rate, value_of=spin(1), poison_at=frozenset({count_ // 2}), poison_value_of=spin(slow_turns)
    )
    stream.start()

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    events = workers.events()[settled:]
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert f"bad-{count_ // 2}" in {d.id for d in c.read["dead"]}
    assert 0 == count(events, "partitions_revoked"), "the group rebalanced"
    assert 0 == count(events, "worker_process_died")
    assert {workers.name: 0} == codes


@pytest.mark.timeout(900)
async def test_model_ten_times_slower_than_its_input(chaos: Any, slow_root: Path) -> None:
    """Step by step (at-least-once):
    1. One worker process of the slow model, one record per batch, at most 100 records in flight;
       each request takes about 200 ms to score, and the stream sends 50 a second: ten times what
       the model can do, for 15 s (the fast tier: 6 s), then the backlog drains (about ten times as long).
    2. Its resident memory is sampled all along; the worker logs its in-flight count and whether it
       is paused every 10 s.
    3. Once everything is scored the worker stops on SIGTERM.
    Memory stays bounded by the in-flight limits (in flight never above 100; the resident set
    grows less than 50 MB past its size before the stream); the worker pauses its
    partitions and resumes them (it was paused, and it fetched everything); the group never
    rebalances; the checker finds every id once.
    """
    c = await chaos("10 model 10x slower", AT_LEAST_ONCE, model_root=slow_root)
    seconds, rate = c.tier.pick(6, 15), 50
    await c.watch()
    limit = 100
    workers = c.start_workers(processes=1, model_name="slow", max_batch_rows=1, max_in_flight=limit)
    await workers.ready(1)
    await assigned(c)
    settled = len(workers.events())
    memory = RssSampler(workers, interval_s=0.5)
    memory.start()
    stream = c.stream(seconds * rate, rate, value_of=spin(10 / rate / SPIN_S))
    started = time.monotonic()
    stream.start()

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S + 20 * seconds)
    drained_s = time.monotonic() - started
    await memory.stop()
    events = workers.events()[settled:]
    progress = [e for e in events if "worker_progress" == e.get("event")]
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert drained_s > 5 * seconds, f"the model was not much slower than its input: {drained_s:.0f}s"
    assert all(p["in_flight"] <= limit for p in progress), [p["in_flight"] for p in progress]
    assert any(p["paused"] for p in progress), "never paused"
    assert memory.peak() - memory.samples[0][2] < 50, f"{memory.samples[0][2]:.0f} MB -> {memory.peak():.0f} MB"
    assert 0 == count(events, "partitions_revoked"), "the group rebalanced"
    assert {workers.name: 0} == codes
