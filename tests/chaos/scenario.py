"""One chaos scenario's world: its topics, group, workers, stream and samplers, and the accounting at the end.

A test asks the `chaos` fixture (tests/chaos/conftest.py) for a `Chaos`, starts workers and a
stream, applies its fault, lets the stream finish, stops the workers and calls `account`, which
reads the input, results and dead-letter topics back and hands them to the checker. The row goes
to the suite's table (`make chaos` prints it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checker import Row, account, commits_ahead
from tests.chaos.nodes import Nodes
from tests.chaos.traffic import CommitSampler, Output, Outputs, Stream, end_offsets, read_back
from tests.chaos.workers import Workers, held_by
from transport.admin import create_topics

AT_LEAST_ONCE, EXACTLY_ONCE = "at-least-once", "exactly-once"

PARTITIONS = 6
OUTPUT_PARTITIONS = 3
MAX_IN_FLIGHT = 500
COMMIT_INTERVAL_MS = 200
SESSION_TIMEOUT_MS = 6000


def guarantees(*, fast: Sequence[str] = ()) -> list[Any]:
    """Both guarantees as parameters; those in `fast` are in the fast tier (marker `chaos_fast`)."""
    return [
        pytest.param(guarantee, id=guarantee, marks=[pytest.mark.chaos_fast] if guarantee in fast else [])
        for guarantee in (AT_LEAST_ONCE, EXACTLY_ONCE)
    ]


@dataclass(frozen=True)
class Tier:
    """`fast` (what `make test` runs) or `full` (`make chaos`): counts and durations follow it."""

    name: str

    def pick(self, fast: Any, full: Any) -> Any:
        return full if self.name == "full" else fast


@dataclass
class Chaos:
    """What one scenario runs on: the cluster, fresh topics and group, and what it started."""

    nodes: Nodes
    tier: Tier
    tmp: Path
    scenario: str
    guarantee: str
    model_root: Path
    topics: dict[str, str]
    group: str
    record: Callable[[Row], None]
    supervisors: list[Workers] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    outputs: Outputs | None = None
    commits: CommitSampler | None = None
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # input id -> (partition, offset)
    read: dict[str, list[Output]] = field(default_factory=dict)  # what `account` read back
    partitions: int = PARTITIONS  # of the input topic

    @property
    def bootstrap(self) -> str:
        return self.nodes.bootstrap

    def settings(self, processes: int = 1, **extra: Any) -> dict[str, Any]:
        """The environment of a worker supervisor on this scenario's topics (JSON logs, short commit interval)."""
        base: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "input_topic": self.topics["input"],
            "results_topic": self.topics["results"],
            "dead_letter_topic": self.topics["dead"],
            "group_id": self.group,
            "control_topic": "",
            "model_root": self.model_root,
            "model_name": "mlp",
            "processes": processes,
            "max_in_flight": MAX_IN_FLIGHT,
            "commit_interval_ms": COMMIT_INTERVAL_MS,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "log_format": "json",
            "guarantee": self.guarantee,
        }
        return {**base, **extra}

    def start_workers(self, processes: int = 1, name: str | None = None, **extra: Any) -> Workers:
        """Start a supervisor of `processes` worker processes in its own process group."""
        name = name or f"supervisor-{len(self.supervisors) + 1}"
        workers = Workers.start(self.settings(processes, **extra), self.tmp / f"{name}.log", name)
        self.supervisors.append(workers)
        return workers

    def stream(self, count: int, rate: float, **options: Any) -> Stream:
        """A stream of `count` requests at `rate` per second to the input topic (not started)."""
        stream = Stream(self.bootstrap, self.topics["input"], count, rate, **options)
        self.streams.append(stream)
        return stream

    async def watch(self) -> None:
        """Start following the outputs and sampling the group's commits."""
        self.outputs = Outputs(self.bootstrap, self.topics["results"], self.topics["dead"])
        await self.outputs.start()
        self.commits = CommitSampler(self.bootstrap, self.group, self.topics["input"], self.partitions)
        self.commits.start()

    async def flowed(self, stream: Stream, timeout_s: float) -> set[str]:
        """Wait until the stream is sent and every id has an output; the ids still without one.

        What the follower has not seen by then is looked for again by a fresh `read_committed`
        reader, a downstream reader's view, while the workers still run: the follower's fetches
        can stall on a partition whose leader moved (seen once, after a broker kill, on the
        dead-letter topic), and that is the test's client, not the workers.
        """
        await stream.finished()
        assert self.outputs is not None, "watch() first"
        missing = await self.outputs.wait_for(stream.acked, timeout_s)
        if not missing:
            return missing
        fresh = {
            o.id
            for topic in (self.topics["results"], self.topics["dead"])
            for o in await read_back(self.bootstrap, topic)
        }
        if missing - fresh != missing:
            print(f"the outputs follower missed {len(missing & fresh)} ids that a fresh read_committed reader sees")
        return missing - fresh

    async def stop_workers(self) -> dict[str, int]:
        """SIGTERM every supervisor still running, to its process group; their exit codes by name."""
        running = [w for w in self.supervisors if w.process.poll() is None]
        codes = await asyncio.gather(*(w.stop() for w in running))
        return {w.name: code for w, code in zip(running, codes, strict=True)}

    async def committed(self) -> dict[int, int]:
        """The offsets the group has committed now, by partition (0 where nothing is)."""
        assert self.commits is not None, "watch() first"
        return await self.commits.latest()

    async def ends(self) -> dict[int, int]:
        """The input topic's end offsets now."""
        return await end_offsets(self.bootstrap, self.topics["input"], self.partitions)

    async def account(self, bound: int = 0, streams: Sequence[Stream] | None = None) -> Row:
        """Read everything back and account for every id the streams sent; the row joins the suite's table.

        The input is read back too: every acknowledged id must be there once (else the cluster, not
        the worker, lost or doubled a request, and the scenario proves nothing).
        """
        streams = self.streams if streams is None else streams
        if self.commits is not None:
            await self.commits.stop()
        if self.outputs is not None:
            await self.outputs.stop()
        inputs = await read_back(self.bootstrap, self.topics["input"])
        results = await read_back(self.bootstrap, self.topics["results"])
        dead = await read_back(self.bootstrap, self.topics["dead"])
        positions = {i.id: (i.partition, i.offset) for i in inputs}
        acked = set().union(*(s.acked for s in streams))
        assert len(inputs) == len(positions), "the input topic holds some request twice"
        assert acked <= positions.keys(), (
            f"acknowledged requests missing from the input: {len(acked - positions.keys())}"
        )
        first: dict[str, int] = {}
        for output in (*results, *dead):
            first[output.id] = min(output.timestamp, first.get(output.id, output.timestamp))
        ahead = commits_ahead(self.commits.samples if self.commits else [], positions, first)
        row = account(
            [i for i in positions if i.startswith("ok-")],
            [i for i in positions if i.startswith("bad-")],
            [r.id for r in results],
            [d.id for d in dead],
            bound=bound,
            scenario=self.scenario,
            guarantee=self.guarantee,
            commits_ahead=len(ahead),
        )
        self.record(row)
        self.positions = positions
        self.read = {"results": results, "dead": dead}
        return row

    async def close(self) -> None:
        """Stop whatever still runs (SIGKILL to supervisors' groups) and heal the cluster."""
        for stream in self.streams:
            await stream.stop()
        for sampler in (self.commits, self.outputs):
            if sampler is not None:
                await sampler.stop()
        for workers in self.supervisors:
            if workers.process.poll() is None:
                workers.kill()
        await self.nodes.heal(list(self.topics.values()))


async def make_topics(
    bootstrap: str,
    dead_configs: Mapping[str, str] | None = None,
    results_configs: Mapping[str, str] | None = None,
    partitions: int = PARTITIONS,
) -> dict[str, str]:
    """Fresh input (6 partitions unless told), results and dead-letter topics (3 each), three replicas."""
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    names = {"input": f"{prefix}-in", "results": f"{prefix}-out", "dead": f"{prefix}-in.DLT"}
    await create_topics(bootstrap, [names["input"]], partitions)
    await create_topics(bootstrap, [names["results"]], OUTPUT_PARTITIONS, configs=results_configs)
    await create_topics(bootstrap, [names["dead"]], OUTPUT_PARTITIONS, configs=dead_configs)
    return names


def uncommitted(committed: Mapping[int, int], ends: Mapping[int, int], partitions: set[int]) -> int:
    """Records of `partitions` between the committed offsets and the end offsets: all that may be scored again."""
    return sum(max(0, ends[p] - committed.get(p, 0)) for p in partitions)


def duplicates_outside(chaos: Chaos, allowed: Mapping[int, tuple[int, int]]) -> list[str]:
    """Ids with more than one result, or dead letter, whose input is not in `allowed` (partition -> [from, to))."""
    duplicated = {
        request_id
        for outputs in chaos.read.values()
        for request_id, count in Counter(o.id for o in outputs).items()
        if count > 1
    }
    outside = []
    for request_id in duplicated:
        if request_id not in chaos.positions:
            continue
        partition, offset = chaos.positions[request_id]
        low, high = allowed.get(partition, (0, 0))
        if not low <= offset < high:
            outside.append(request_id)
    return sorted(outside)


async def assigned(chaos: Chaos, timeout_s: float = 60.0) -> dict[int, set[int]]:
    """Wait until the live worker processes of every supervisor hold every input partition; who holds what."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        holders = {pid: held_by(workers.events(), pid) for workers in chaos.supervisors for pid in workers.children()}
        if set().union(*holders.values()) == set(range(PARTITIONS)):
            return holders
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"partitions not all assigned after {timeout_s:.0f}s: {holders}")
        await asyncio.sleep(0.2)
