"""Share groups (`consumption=share`, KIP-932) on the 3-node cluster: more workers than partitions, and a kill.

The workers are `streamscore worker` supervisors as in the other chaos scenarios; the accounting is
the same checker's: every id sent ends in a result or a dead letter, none invented, a poison record
dead-lettered once and a good one never. A share group has no ordering and no offsets: a record is
acknowledged on its own, once its outcome is written, so the duplicates a kill may cause are the
records the killed process held, which the broker delivers again (their delivery count above one).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas import headers as h
from tests.chaos.scenario import AT_LEAST_ONCE, Chaos
from tests.chaos.traffic import Stream, spin
from tests.chaos.workers import Workers, worker_pid
from tests.harness import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

FLOW_TIMEOUT_S = 180.0
SHORT_LOCK_MS = 3000  # the group's acquisition lock in the kill scenario (the local broker allows 1 s and up)
MAX_RECORDS = 16
SHARE_STATE_TOPIC = "__share_group_state"
SMALL_BATCH_BYTES = 1024  # the kill scenario's producer batches: about 8 one-row requests each (the README's advice)
HELD_BY_ONE = 4 * MAX_RECORDS  # one poll: MAX_RECORDS, and the whole producer batches the client acquires beyond it
HELD_BY_THREE = 3 * HELD_BY_ONE
SLOW_TURNS = 2500  # the slow model's turns for about 10 ms a record (4 us a turn on the 2-core CI machine)


async def share_world(chaos: Any, scenario: str, model_root: Path | None = None) -> Chaos:
    c: Chaos = await chaos(scenario, AT_LEAST_ONCE, partitions=2, model_root=model_root)
    await c.watch()
    return c


async def share_run(c: Chaos, processes: int, stream: Stream, **settings: Any) -> tuple[Workers, list[int], Stream]:
    """Start `processes` share workers (MAX_RECORDS a poll, `settings` beside), wait until each has
    started, then start `stream`: the workers, their pids, the stream."""
    workers = c.start_workers(processes, consumption="share", share_max_records=MAX_RECORDS, **settings)
    pids = await workers.ready(processes)
    stream.start()
    return workers, pids, stream


def scored_by(workers: Workers) -> dict[int, int]:
    """Results and dead letters each worker process wrote, from its `worker_stopped` event."""
    return {
        worker_pid(e) or 0: int(e.get("results", 0)) + int(e.get("dead_letters", 0))
        for e in workers.events("worker_stopped")
    }


async def delivery_counts(c: Chaos) -> dict[str, list[int]]:
    """For every output (result or dead letter): the id it answers, and the delivery count it carries."""
    counts: dict[str, list[int]] = {}
    for topic in (c.topics["results"], c.topics["dead"]):
        for record in await read_topic(c.bootstrap, topic):
            raw = dict(record.headers).get(h.DELIVERY_COUNT)
            assert raw is not None, f"an output of {topic} without {h.DELIVERY_COUNT}: {record.headers}"
            counts.setdefault((record.key or b"").decode(), []).append(int(raw))
    return counts


@pytest.mark.chaos_fast
@pytest.mark.timeout(600)
async def test_six_share_workers_on_two_partitions_all_score(chaos: Any) -> None:
    """Step by step:
    1. One supervisor runs six worker processes in one share group on a 2-partition topic
       (a consumer group would leave four of them idle).
    2. A stream of one-row requests with 1 % poison flows; the workers score it to the end and stop on SIGTERM.
    Every process scored records; every id has exactly one output (no fault, so no duplicate); each
    poison record is dead-lettered once, its delivery count (1) on it.
    """
    c = await share_world(chaos, "share: 6 processes, 2 partitions")
    count_, rate = c.tier.pick((3000, 400), (20_000, 800))
    workers, _, stream = await share_run(c, 6, c.stream(count_, rate))

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account()
    scored = scored_by(workers)
    print(f"records scored by each of the six share workers: {sorted(scored.values(), reverse=True)}")

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert {workers.name: 0} == codes
    assert 6 == len(scored) and all(n > 0 for n in scored.values()), scored
    counts = await delivery_counts(c)
    assert {1} == {n for outputs in counts.values() for n in outputs}
    assert set(stream.poison) == {i for i in counts if i.startswith("bad-")}


@pytest.mark.chaos_fast
@pytest.mark.timeout(600)
async def test_sigkill_a_share_worker_mid_stream(chaos: Any, slow_root: Path) -> None:
    """Step by step:
    1. The group's acquisition lock is set to 3 s; one supervisor runs three share workers on 2 partitions,
       with a model of about 10 ms a run, one record a run (`max_batch_rows=1`: the slow model's run
       costs the same for a batch of 16, and batched the three kept up with the stream and were often
       idle), fed faster than the three can score, so that each holds records acquired and not yet
       settled at any moment. The stream is produced in small batches, as the README advises for a slow
       model: the client acquires whole producer batches, so a poll holds MAX_RECORDS and less than one
       batch beyond (bigger batches made polls of 74 records here).
    2. Once 30 % of the stream has its outputs (the share group hands out partitions a few seconds
       after members join), one worker process gets SIGKILL as soon as it logs a poison record's dead
       letter (the supervisor starts another). A poison record is dead-lettered as its poll is taken,
       before the poll's good records are scored (10 ms each, one at a time), so the process holds
       records when it dies: killed at a random moment it may be between two polls, holding none
       (seen once in CI).
    3. The stream finishes; the workers score it to the end and stop on SIGTERM.
    Nothing is missing or invented; the records the killed process held come again once its lock
    expires (delivery count 2 or more); every duplicate is one of them, and there are at most as many as
    it can hold (its last poll: MAX_RECORDS, plus the producer batches the client acquires beyond it).
    """
    c = await share_world(chaos, "share: sigkill 1 of 3", model_root=slow_root)
    await set_share_group(c.bootstrap, c.group, {"share.record.lock.duration.ms": str(SHORT_LOCK_MS)})
    count_, rate = c.tier.pick((3000, 1000), (10_000, 1000))
    slow = c.stream(count_, rate, value_of=spin(SLOW_TURNS), max_batch_bytes=SMALL_BATCH_BYTES)
    workers, pids, stream = await share_run(c, 3, slow, model_name="slow", max_batch_rows=1)

    assert c.outputs is not None
    await c.outputs.wait_for_count(count_ * 3 // 10, FLOW_TIMEOUT_S)  # assigned (a few seconds) and busy
    await workers.next_event("record_dead_lettered", pids[0])  # mid-poll
    os.kill(pids[0], signal.SIGKILL)
    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=HELD_BY_ONE)

    counts = await delivery_counts(c)
    redelivered = {i for i, outputs in counts.items() if max(outputs) > 1}
    duplicated = {i for i, n in Counter({i: len(o) for i, o in counts.items()}).items() if n > 1}
    print(f"redelivered after the kill: {len(redelivered)}; duplicated: {len(duplicated)}")
    assert 0 == row.missing and 0 == row.phantom and 0 == row.good_dead_lettered, row.explain()
    assert set() == unscored
    assert {workers.name: 0} == codes
    assert redelivered, "the killed process held no record: nothing was delivered again"
    assert duplicated <= redelivered
    assert len(duplicated) <= HELD_BY_ONE


async def set_share_group(bootstrap: str, group: str, configs: dict[str, str]) -> None:
    """Set a share group's configuration (as `kafka-configs.sh --entity-type groups` does)."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.incremental_alter_configs([ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)])
    for future in futures.values():
        await asyncio.to_thread(future.result, 10)


@pytest.mark.timeout(600)
async def test_share_coordinator_broker_killed_mid_stream(chaos: Any) -> None:
    """Step by step:
    1. Three share workers on a 2-partition topic; a stream of requests starts.
    2. Halfway, the broker leading the share-group state topic (where acknowledgements are kept) and
       the group's coordinator is killed; 20 s later it is restarted.
    3. The stream finishes; the workers score it to the end and stop on SIGTERM.
    Nothing is missing or invented, no good record is dead-lettered, and the duplicates are at most
    what the three workers held (a poll each, plus the producer batches the broker adds to one):
    the records acquired or acknowledged on the partitions the killed broker led are delivered
    again by the new leader, with the delivery count it last persisted (so possibly 1 again:
    KIP-932 writes the share-partition state on acknowledgement, not on every acquisition).
    """
    c = await share_world(chaos, "share: coordinator killed 20 s")
    count_, rate = c.tier.pick((3000, 300), (20_000, 800))
    workers, _, stream = await share_run(c, 3, c.stream(count_, rate))

    await stream.reached(0.5)
    victim = await c.nodes.leader_of(SHARE_STATE_TOPIC)
    await c.nodes.kill(victim)
    await asyncio.sleep(20)
    await c.nodes.restart(victim)
    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=HELD_BY_THREE)

    print(f"after the kill: {row.duplicated} duplicated (bound {HELD_BY_THREE})")
    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert {workers.name: 0} == codes
