"""The chaos suite's traffic: a stream of requests at a steady rate, its outputs followed, commits sampled.

`Stream` produces good one-row requests for the demo MLP and, every so often, a poison record
(not JSON) that must be dead-lettered; every record is keyed by its id. `Outputs` follows the
results and dead-letter topics with `read_committed` while a scenario runs; `read_back` reads one
of them to its end once the workers have stopped. `CommitSampler` reads the group's committed
offsets twice a second, for the checker's `commits_ahead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError

from schemas.codec import encode_request
from tests.chaos.checker import CommitSample
from transport.reading import TopicReader, read_to_end

POISON_VALUE = b"not json"
TICK_S = 0.02
FEATURES = 8


@dataclass(frozen=True)
class Output:
    """One record read back from the results or the dead-letter topic."""

    id: str
    partition: int
    offset: int
    timestamp: int  # create time (ms): when the worker sent it


@dataclass
class Stream:
    """`count` requests to `topic` at `rate` per second; every `poison_every`-th is poison (not JSON).

    Records at the indexes `poison_at` are poison too, with the value `poison_value_of` gives (a
    request the model cannot score in time, ...). Good ids are `ok-<i>`, poison ids `bad-<i>`.
    `hold()` stops the stream until `release()`.
    An id counts as sent once the broker acknowledged it (`acked`).
    """

    bootstrap: str
    topic: str
    count: int
    rate: float
    poison_every: int = 100
    seed: int = 0
    value_of: Callable[[int, str], bytes] | None = None  # a custom good value (slow records, ...)
    poison_at: frozenset[int] = frozenset()
    poison_value_of: Callable[[int, str], bytes] | None = None
    max_batch_bytes: int = 16384  # the producer's batch size (aiokafka's default); small: few records a batch
    acked: set[str] = field(default_factory=set)
    _open: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._open.set()
        self._rows = np.random.default_rng(self.seed).random((self.count, FEATURES), dtype=np.float32)

    def id_of(self, index: int) -> str:
        """The id of record `index`."""
        return f"bad-{index}" if self.is_poison(index) else f"ok-{index}"

    def is_poison(self, index: int) -> bool:
        return index in self.poison_at or (self.poison_every > 0 and index % self.poison_every == self.poison_every - 1)

    @property
    def good(self) -> list[str]:
        """The good ids the broker acknowledged."""
        return sorted(i for i in self.acked if i.startswith("ok-"))

    @property
    def poison(self) -> list[str]:
        """The poison ids the broker acknowledged."""
        return sorted(i for i in self.acked if i.startswith("bad-"))

    @property
    def produced(self) -> int:
        return len(self.acked)

    def value(self, index: int) -> bytes:
        """The record value of `index`: poison, a custom value, or a one-row request."""
        request_id = self.id_of(index)
        if index in self.poison_at and self.poison_value_of is not None:
            return self.poison_value_of(index, request_id)
        if self.is_poison(index):
            return POISON_VALUE
        if self.value_of is not None:
            return self.value_of(index, request_id)
        return encode_request({"x": self._rows[index : index + 1]}, id=request_id)

    def start(self) -> asyncio.Task[None]:
        """Begin producing in the background."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="stream")
        return self._task

    def hold(self) -> None:
        """Produce nothing until `release()`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def run(self) -> None:
        """Produce every record at the rate (later if held or if the broker is slow), wait for every ack."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=self.max_batch_bytes,
        )
        await producer.start()
        try:
            pending: list[asyncio.Future[Any]] = []
            sent, started = 0, time.monotonic()
            while sent < self.count:
                if not self._open.is_set():
                    held = time.monotonic()
                    await self._open.wait()
                    started += time.monotonic() - held
                due = min(self.count, int((time.monotonic() - started) * self.rate) + 1)
                for index in range(sent, due):
                    pending.append(await self._send(producer, index))
                sent = max(sent, due)
                await asyncio.sleep(TICK_S)
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, index: int) -> asyncio.Future[Any]:
        request_id = self.id_of(index)
        while True:
            try:
                future = await producer.send(self.topic, value=self.value(index), key=request_id.encode())
            except KafkaTimeoutError:  # no metadata in time: nothing was sent, try again
                await asyncio.sleep(0.5)
                continue
            future.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self.acked.add(request_id))
            return future  # type: ignore[no-any-return]

    async def reached(self, fraction: float, timeout_s: float = 300.0) -> None:
        """Return once `fraction` of the stream is acknowledged."""
        async with asyncio.timeout(timeout_s):
            while self.produced < fraction * self.count:
                await asyncio.sleep(0.05)

    async def finished(self, timeout_s: float = 600.0) -> None:
        """Return once every record is acknowledged (raises what the producer raised)."""
        assert self._task is not None, "start() the stream first"
        await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    async def stop(self) -> None:
        """Cancel the stream if it still runs."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Outputs:
    """Follows the results and dead-letter topics (`read_committed`) from their beginning: who has an output."""

    def __init__(self, bootstrap: str, results: str, dead: str) -> None:
        self.bootstrap, self.results_topic, self.dead_topic = bootstrap, results, dead
        self.results: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    @property
    def seen(self) -> set[str]:
        """Every id with a result or a dead letter so far."""
        return set(self.results) | set(self.dead)

    async def start(self) -> None:
        consumer = TopicReader({"bootstrap_servers": self.bootstrap}, isolation_level="read_committed")
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self.results_topic, self.dead_topic)
            for p in sorted(await consumer.partitions_of(topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._task = asyncio.get_running_loop().create_task(self._follow(consumer), name="outputs")

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    counts = self.results if tp.topic == self.results_topic else self.dead
                    counts.update(r.key.decode() for r in records if r.key is not None)
        finally:
            await consumer.stop()

    async def wait_for(self, ids: Iterable[str], timeout_s: float) -> set[str]:
        """Wait until every id in `ids` has an output (at most `timeout_s`); the ids still without one."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while (missing := wanted - self.seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return missing

    async def wait_for_count(self, count: int, timeout_s: float) -> None:
        """Wait until at least `count` ids have an output."""
        async with asyncio.timeout(timeout_s):
            while len(self.seen) < count:
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def read_back(bootstrap: str, topic: str) -> list[Output]:
    """Every record of `topic` up to its end, read with `read_committed` (what a downstream reader sees)."""
    found: list[Output] = []

    def keep(records: Iterable[Any]) -> None:
        found.extend(Output(r.key.decode() if r.key else "", r.partition, r.offset, r.timestamp) for r in records)

    reader = TopicReader({"bootstrap_servers": bootstrap}, isolation_level="read_committed")
    await reader.start()
    try:
        assert "end" == await read_to_end(reader, topic, keep)
    finally:
        await reader.stop()
    return found


class CommitSampler:
    """Reads the offsets a group committed on a topic every `interval_s` (a read that fails is skipped)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, interval_s: float = 0.5) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.partitions, self.interval_s = partitions, interval_s
        self.samples: list[CommitSample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commit-sampler")

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False, request_timeout_ms=5000
        )
        await consumer.start()
        try:
            while True:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    async with asyncio.timeout(5):
                        await self._sample(consumer)
                await asyncio.sleep(self.interval_s)
        finally:
            await consumer.stop()

    async def _sample(self, consumer: AIOKafkaConsumer) -> None:
        for partition in range(self.partitions):
            offset = await consumer.committed(TopicPartition(self.topic, partition))
            if offset is not None:
                self.samples.append(CommitSample(int(time.time() * 1000), partition, offset))

    async def latest(self) -> dict[int, int]:
        """The offsets committed now (0 where nothing is), read fresh."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        await consumer.start()
        try:
            found = {p: await consumer.committed(TopicPartition(self.topic, p)) for p in range(self.partitions)}
        finally:
            await consumer.stop()
        return {p: offset or 0 for p, offset in found.items()}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The end offset of every partition of `topic`, read now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def spin(turns: float) -> Callable[[int, str], bytes]:
    """A value builder: a one-row request for the slow model (demo.models.make_slow_model) spinning `turns` times."""
    return lambda _index, request_id: encode_request({"x": np.array([[turns]], dtype=np.float32)}, id=request_id)
