"""The Kafka side of `dlq inspect` and `dlq replay`: read dead letters, send replays, nothing else.

Reading is a `read_committed` reader over the chosen offset ranges, up to the end offsets as of
the start (records a running worker adds meanwhile are left for the next run). Every decision
is made by `producer.dlq`; here a replay is planned in full before anything is sent (so a missing
target topic fails before the first record), then sent by an idempotent producer with acks=all,
or in one transaction, and waited for until every record is acknowledged or has failed.
`reader=` and `producer=` take fakes (or started clients) in place of the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from producer.dlq import DEFAULT_MAX_REPLAYS, DeadLetter, Filters, Outcome, Plan, Replay, decide, place, read_ranges
from producer.dlq_report import Counts, Sample
from schemas.errors import ConfigError
from schemas.records import Record
from schemas.topics import DEFAULT_INPUT_TOPIC, dead_letter_topic_of
from transport.connection import DEFAULT_BOOTSTRAP_SERVERS, Connection, start_client
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, record_size
from transport.reading import TopicReader, offset_ranges, read_range
from transport.seams import RangeReader, Transactional

DEFAULT_DEAD_LETTER_TOPIC = dead_letter_topic_of(DEFAULT_INPUT_TOPIC)
OnProgress = Callable[[int, int], None] | None  # (dead letters read, offsets to read)


@dataclass(frozen=True)
class Source:
    """Which dead letters to read and select, and how to reach them."""

    topic: str = DEFAULT_DEAD_LETTER_TOPIC
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    filters: Filters = field(default_factory=Filters)
    limit: int | None = None  # per partition
    from_beginning: bool = False  # with limit: the first ones, not the last
    connection: dict[str, Any] = field(default_factory=dict)  # the other fields of transport.Connection

    def kafka_options(self) -> dict[str, Any]:
        return Connection(bootstrap_servers=self.bootstrap_servers, **self.connection).kafka_options()


@dataclass(frozen=True)
class ReplayOptions:
    """Where and how `replay` sends."""

    to: str | None = None
    dry_run: bool = False
    max_replays: int = DEFAULT_MAX_REPLAYS
    transactional_id: str | None = None


# ---------------------------------------------------------------------------------------------
# Reading


@contextlib.asynccontextmanager
async def reading(source: Source, reader: RangeReader | None = None) -> AsyncIterator[RangeReader]:
    """`reader` as it is, or a started read_committed reader of `source`'s cluster, stopped after."""
    if reader is not None:
        yield reader
        return
    client = TopicReader(source.kafka_options(), isolation_level="read_committed", client_id="streamscore-dlq")
    await start_client(client, source.bootstrap_servers)
    try:
        yield client
    finally:
        await client.stop()


async def read_letters(
    reader: RangeReader, source: Source, on_letter: Callable[[DeadLetter], None], on_progress: OnProgress = None
) -> str:
    """Hand every dead letter of `source`'s ranges to `on_letter`; return what was read, in words.

    `on_progress(read, total)` follows each fetched batch (`total` counts offsets, so it is an
    upper bound: aborted or compacted records are not read).
    """
    available = await offset_ranges(reader, source.topic)
    if not available:
        raise ConfigError(
            f"the dead-letter topic {source.topic} does not exist on {source.bootstrap_servers}; "
            "name it with --topic (or STREAMSCORE_DEAD_LETTER_TOPIC, or STREAMSCORE_INPUT_TOPIC for <input>.DLT)"
        )
    ranges = read_ranges(available, source.filters, limit=source.limit, newest=not source.from_beginning)
    total, read = sum(end - first for first, end in ranges.values()), 0

    def on_records(records: Sequence[Record]) -> None:
        nonlocal read
        for record in records:
            on_letter(DeadLetter.of(record))
        read += len(records)
        if on_progress is not None:
            on_progress(read, total)

    await read_range(reader, source.topic, ranges, on_records)
    return describe_scope(source, len(available))


def describe_scope(source: Source, partitions: int) -> str:
    """What part of the topic was read: `all 3 partitions`, `the last 10 of each of 3 partitions`, ..."""
    where = f"partition {source.filters.partition}" if source.filters.partition is not None else None
    if source.filters.offsets is not None:
        first, last = source.filters.offsets
        where = f"{where}, offsets {first}-{'' if last is None else last}"
    if source.limit is None:
        return where or f"all {partitions} partitions"
    which = "first" if source.from_beginning else "last"
    return f"the {which} {source.limit} of {where or f'each of {partitions} partitions'}"


# ---------------------------------------------------------------------------------------------
# inspect


@dataclass(frozen=True)
class Inspection:
    counts: Counts
    shown: list[DeadLetter]
    scope: str


async def inspect(
    source: Source, show: int = 0, *, reader: RangeReader | None = None, on_progress: OnProgress = None
) -> Inspection:
    """Count the selected dead letters of `source`, and choose `show` of them to print."""
    counts, sample = Counts(), Sample(show)

    def on_letter(letter: DeadLetter) -> None:
        counts.read += 1
        if source.filters.matches(letter):
            counts.add(letter)
            sample.offer(letter)

    async with reading(source, reader) as client:
        scope = await read_letters(client, source, on_letter, on_progress)
    return Inspection(counts, sample.chosen(), scope)


# ---------------------------------------------------------------------------------------------
# replay


class ReplayProducer(Transactional, Protocol):
    """The part of `AIOKafkaProducer` a replay uses: sends, a batch for a record with neither
    key nor value (which `send` refuses), and transactions."""

    def create_batch(self) -> Any: ...
    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]: ...


async def plan_replay(
    source: Source, options: ReplayOptions, *, reader: RangeReader | None = None, on_progress: OnProgress = None
) -> Plan:
    """Decide every selected dead letter; check that the target topics exist (a ConfigError if not)."""
    plan = Plan()

    def on_letter(letter: DeadLetter) -> None:
        if source.filters.matches(letter):
            plan.add(decide(letter, to=options.to, max_replays=options.max_replays))

    async with reading(source, reader) as client:
        await read_letters(client, source, on_letter, on_progress)
        partitions = {topic: await client.partitions_of(topic) for topic in plan.targets}
    missing = sorted(topic for topic, found in partitions.items() if not found)
    if missing:
        raise ConfigError(
            f"topic {', '.join(missing)} does not exist on {source.bootstrap_servers}, so nothing was replayed; "
            "create it, or send elsewhere with --to"
        )
    plan.replays = place(plan.replays, partitions)
    return plan


async def replay(
    source: Source,
    options: ReplayOptions,
    *,
    reader: RangeReader | None = None,
    producer: ReplayProducer | None = None,
    on_progress: OnProgress = None,
) -> Outcome:
    """Plan the replay, then (unless dry) send it; return once every record is acknowledged or failed."""
    plan = await plan_replay(source, options, reader=reader, on_progress=on_progress)
    if options.dry_run or not plan.replays:
        return Outcome(plan)
    async with producing(source, options, plan.replays, producer) as client:
        if options.transactional_id is not None:
            return await send_in_transaction(client, plan)
        return Outcome(plan, tuple(await send_each(client, plan.replays)))


@contextlib.asynccontextmanager
async def producing(
    source: Source, options: ReplayOptions, replays: Sequence[Replay], producer: ReplayProducer | None
) -> AsyncIterator[ReplayProducer]:
    """`producer` as it is, or a started idempotent (or transactional) producer, stopped after."""
    if producer is not None:
        yield producer
        return
    largest = max(record_size(r.key, r.value, r.headers) for r in replays)
    client = AIOKafkaProducer(
        **source.kafka_options(),
        acks="all",
        enable_idempotence=True,
        transactional_id=options.transactional_id,
        max_request_size=max(DEFAULT_MAX_MESSAGE_BYTES, largest),  # the target topic's limit decides
        linger_ms=5,
        client_id="streamscore-dlq-replay",
    )
    await start_client(client, source.bootstrap_servers)
    try:
        yield client
    finally:
        await client.stop()


async def send_each(producer: ReplayProducer, replays: Sequence[Replay]) -> list[tuple[Replay, str]]:
    """Send every record, then wait for every acknowledgement; the records that failed, with why."""
    sent: list[tuple[Replay, asyncio.Future[Any]]] = []
    failed: list[tuple[Replay, str]] = []
    for replay in replays:
        try:
            sent.append((replay, await _send(producer, replay)))
        except KafkaError as error:
            failed.append((replay, repr(error)))
    acks = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
    failed += [(replay, repr(ack)) for (replay, _), ack in zip(sent, acks, strict=True) if isinstance(ack, Exception)]
    return sorted(failed, key=lambda item: (item[0].letter.partition, item[0].letter.offset))


async def _send(producer: ReplayProducer, replay: Replay) -> asyncio.Future[Any]:
    if replay.key is None and replay.value is None:  # a tombstone without a key: only a batch carries it
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None, headers=list(replay.headers))
        return await producer.send_batch(batch, replay.topic, partition=replay.partition or 0)
    return await producer.send(
        replay.topic, value=replay.value, key=replay.key, partition=replay.partition, headers=list(replay.headers)
    )


async def send_in_transaction(producer: ReplayProducer, plan: Plan) -> Outcome:
    """Send the plan's records in one transaction: committed if every one is acknowledged, else aborted."""
    await producer.begin_transaction()
    failed = await send_each(producer, plan.replays)
    if failed:
        why = f"{len(failed)} of {len(plan.replays)} records failed"
        try:
            await producer.abort_transaction()
        except Exception as error:  # fenced or fatal: the coordinator aborts it at its timeout
            why += f"; the abort itself failed ({error!r}), the broker aborts it at transaction.timeout.ms"
        return Outcome(plan, tuple(failed), aborted=why)
    try:
        await producer.commit_transaction()
    except KafkaError as error:
        return Outcome(plan, (), aborted=f"the commit failed: {error!r}")
    return Outcome(plan)
