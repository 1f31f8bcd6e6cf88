"""Chaos on the cluster, with workers running: brokers killed and restarted, the transaction
coordinator's leader down for a minute, the results or the dead-letter topic unwritable.

As in tests/chaos/test_chaos_workers.py, `streamscore worker` supervisors score a stream of
one-row requests with 1 % poison, and the checker accounts for every id at the end. Here no worker
process is touched: the workers must ride out what the cluster does without a restart of theirs
(unless a scenario says otherwise), commit nothing ahead of its outputs, and dead-letter nothing
for the broker's failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.chaos.nodes import OFFSETS_TOPIC, TRANSACTIONS_TOPIC
from tests.chaos.scenario import AT_LEAST_ONCE, EXACTLY_ONCE, guarantees
from tests.chaos.workers import count

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

FLOW_TIMEOUT_S = 240.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", guarantees(fast=(EXACTLY_ONCE,)))
async def test_kill_each_broker_in_turn_and_restart_it(chaos: Any, guarantee: str) -> None:
    """Step by step:
    1. One supervisor runs two worker processes; a stream of requests starts.
    2. In turn, each node of the cluster gets SIGKILL, stays down a few seconds under load, and is
       started again; the next goes once every replica is back in sync. (The fast tier kills one:
       the leader of the group coordinator's partition, where a kill moves the most.)
    3. The stream finishes; the workers stop on SIGTERM.
    Nothing is missing, invented or duplicated (no worker process died, so nothing is read twice);
    the workers rode it out: the same processes from start to end, none restarted.
    """
    c = await chaos("3 kill+restart brokers", guarantee)
    count_, rate = c.tier.pick((6000, 300), (24_000, 300))
    down_s = c.tier.pick(5.0, 10.0)
    await c.watch()
    workers = c.start_workers(processes=2)
    pids = await workers.ready(2)
    stream = c.stream(count_, rate)
    stream.start()
    await stream.reached(0.1)

    victims = c.tier.pick([await c.nodes.leader_of(OFFSETS_TOPIC)], c.nodes.ids)
    for node_id in victims:
        await c.nodes.kill(node_id)
        await asyncio.sleep(down_s)
        await c.nodes.restart(node_id)
        await c.nodes.heal(list(c.topics.values()))

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    alive = workers.children()
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert sorted(pids) == sorted(alive), "a worker process was replaced"
    assert 0 == count(workers.events(), "worker_process_died")
    assert {workers.name: 0} == codes


@pytest.mark.timeout(900)
async def test_transaction_coordinator_leader_down_for_a_minute(chaos: Any) -> None:
    """Step by step (exactly-once):
    1. One supervisor runs two worker processes; a stream starts.
    2. The node leading `__transaction_state` (the one partition, so the coordinator of every
       transactional id of the workers) gets SIGKILL at 20 % of the stream, and stays down a
       minute (the fast tier: 15 s) while the stream goes on; then it is started again.
    3. The stream finishes; the workers stop on SIGTERM.
    Another node takes the coordinator over: nothing is missing, invented or duplicated.
    """
    c = await chaos("4 txn coordinator down", EXACTLY_ONCE)
    count_, rate = c.tier.pick((5000, 150), (24_000, 200))
    down_s = c.tier.pick(15.0, 60.0)
    await c.watch()
    workers = c.start_workers(processes=2)
    await workers.ready(2)
    stream = c.stream(count_, rate)
    stream.start()
    await stream.reached(0.2)

    coordinator = await c.nodes.leader_of(TRANSACTIONS_TOPIC)
    await c.nodes.kill(coordinator)
    await asyncio.sleep(down_s)
    moved_to = await c.nodes.leader_of(TRANSACTIONS_TOPIC)
    await c.nodes.restart(coordinator)

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert coordinator != moved_to
    assert {workers.name: 0} == codes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", guarantees(fast=(AT_LEAST_ONCE,)))
async def test_results_topic_unwritable_two_of_three_brokers_down(chaos: Any, guarantee: str) -> None:
    """Step by step:
    1. One supervisor runs two worker processes; a stream starts.
    2. At 40 % of the stream two of the three nodes get SIGKILL, both but the group coordinator's
       (so the workers' commits reach a live coordinator), and the stream holds (its own writes
       as impossible): no topic can take a write with fewer than two replicas in sync, so
       every result the workers have in flight is refused, and stays refused for a while.
    3. The two nodes come back; the stream goes on and finishes; the workers stop on SIGTERM.
    No input offset was committed ahead of its output (the commits sampled all along, the checker's
    `commits ahead`); once the brokers are back everything flows: nothing is missing, invented or
    duplicated, and nothing but the poison was dead-lettered (a record is never dead-lettered for
    the broker's failure).
    """
    c = await chaos("8 results unwritable", guarantee)
    count_, rate = c.tier.pick((3000, 300), (10_000, 300))
    down_s = c.tier.pick(15.0, 45.0)
    await c.watch()
    workers = c.start_workers(processes=2)
    await workers.ready(2)
    stream = c.stream(count_, rate)
    stream.start()

    await stream.reached(0.4)
    stream.hold()
    coordinator = await c.nodes.leader_of(OFFSETS_TOPIC)
    victims = [n for n in c.nodes.ids if n != coordinator]
    for node_id in victims:
        await c.nodes.kill(node_id)
    await asyncio.sleep(down_s)
    for node_id in victims:
        await c.nodes.restart(node_id)
    stream.release()

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert sorted(stream.poison) == sorted({d.id for d in c.read["dead"]})
    assert {workers.name: 0} == codes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", guarantees())
async def test_dead_letter_topic_unwritable_while_poison_arrives(chaos: Any, guarantee: str) -> None:
    """Step by step:
    1. The dead-letter topic needs all three replicas in sync (`min.insync.replicas=3`), the input
       and results topics two. One supervisor runs two worker processes; a stream with 1 % poison
       starts.
    2. At 30 % of the stream one node gets SIGKILL: results can still be written, dead letters
       cannot. The stream goes on, poison included, while the node stays down.
    3. The node comes back; the stream finishes; the workers stop on SIGTERM.
    The poison that arrived meanwhile was not skipped: no offset was committed past it before its
    dead letter was written (`commits ahead`), and each poison record landed in the dead-letter
    topic exactly once when it became writable; nothing is missing or duplicated.
    """
    c = await chaos("9 DLT unwritable", guarantee, dead_configs={"min.insync.replicas": "3"})
    count_, rate = c.tier.pick((3000, 200), (9000, 300))
    down_s = c.tier.pick(15.0, 30.0)
    await c.watch()
    workers = c.start_workers(processes=2)
    await workers.ready(2)
    stream = c.stream(count_, rate)
    stream.start()

    await stream.reached(0.3)
    coordinator = await c.nodes.leader_of(OFFSETS_TOPIC)
    victim = next(n for n in c.nodes.ids if n != coordinator)
    await c.nodes.kill(victim)
    sent_before = set(stream.poison)
    await asyncio.sleep(down_s)
    poison_meanwhile = set(stream.poison) - sent_before
    refused = refusals(workers.events(), c.topics["dead"])
    await c.nodes.restart(victim)

    unscored = await c.flowed(stream, FLOW_TIMEOUT_S)
    codes = await c.stop_workers()
    row = await c.account(bound=0)

    assert "ok" == row.verdict, row.explain()
    assert set() == unscored
    assert poison_meanwhile, "no poison arrived while the dead-letter topic was unwritable"
    assert refused > 0, "the dead-letter topic never refused a write (NotEnoughReplicas)"
    assert {workers.name: 0} == codes


def refusals(events: list[dict[str, Any]], topic: str) -> int:
    """How many writes to `topic` the broker refused for want of in-sync replicas (aiokafka retries
    these itself and logs each; the worker's own `send_failing` only follows once they time out)."""
    return sum(
        1
        for e in events
        if f"topic='{topic}'" in str(e.get("event", "")) and "NotEnoughReplicas" in str(e.get("event", ""))
    )
