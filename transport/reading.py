"""Reading a topic from its beginning to its end offsets (compacted state, shadow results, control),
or chosen offset ranges of its partitions (dead letters)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.protocol.metadata import MetadataRequest

from schemas.records import Record
from transport.seams import RangeReader, Reader

Ending = Literal["end", "idle", "missing"]
Ranges = dict[int, tuple[int, int]]  # partition -> (first offset, end offset), the end excluded


class TopicReader(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka has no type hints
    """An aiokafka consumer outside any group, for reading whole topics (satisfies `Reader`)."""

    def __init__(self, options: dict[str, Any], **extra: Any) -> None:
        super().__init__(**options, group_id=None, enable_auto_commit=False, **extra)

    async def partitions_of(self, topic: str) -> set[int]:
        """The partitions of `topic` as the cluster has them now; empty when it does not exist.

        Raises TopicAuthorizationFailedError when this principal may not describe it.

        Any topic, not only those assigned: a replay asks about its target topics after assigning
        the dead-letter topic, when the client's own metadata tracks only that one.
        """
        # The one private call: aiokafka has no public way to read the metadata of a topic that is
        # neither subscribed nor assigned (topics() fetches the same metadata, keeps only the names).
        cluster = await self._client.fetch_all_metadata()
        partitions = set(cluster.partitions_for_topic(topic) or ())
        if not partitions and await self._unauthorized(topic):  # hidden, not missing
            raise TopicAuthorizationFailedError(topic)
        return partitions

    async def _unauthorized(self, topic: str) -> bool:
        """Whether the broker hides `topic` from this principal: a metadata request for all topics
        leaves out the ones it may not describe, a request for this one says so (and creates nothing)."""
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        response = await self._client.send(self._client.get_random_node(), request)
        return any(entry[0] == TopicAuthorizationFailedError.errno for entry in response.topics)


async def read_to_end(
    reader: Reader,
    topic: str,
    on_records: Callable[[Sequence[Record]], None],
    *,
    idle_s: float | None = None,
    snapshot: bool = True,
) -> Ending:
    """Assign every partition of `topic` and read it from the beginning to its end offsets as of now.

    Each fetched batch goes to `on_records`: with `snapshot`, only the records before the end
    offsets; without, every record fetched (a follower that keeps fetching from where this stops
    must not skip the records that arrived meanwhile). Returns "end" once read to the end,
    "missing" if the topic does not exist, "idle" if `idle_s` seconds pass without a record.
    """
    partitions = [TopicPartition(topic, p) for p in sorted(await reader.partitions_of(topic))]
    if not partitions:
        return "missing"
    reader.assign(partitions)
    await reader.seek_to_beginning(*partitions)
    ends = dict(await reader.end_offsets(partitions))
    return await _fetch_to(reader, ends, on_records, idle_s, cut=snapshot)


async def behind(reader: Reader, ends: dict[TopicPartition, int]) -> bool:
    """True while the reader's position is short of `ends` on some partition."""
    for tp, end in ends.items():
        if await reader.position(tp) < end:
            return True
    return False


async def offset_ranges(reader: RangeReader, topic: str) -> Ranges:
    """Each partition's (beginning, end) offsets as of now; empty when `topic` does not exist.

    With `isolation_level="read_committed"` the end is the last stable offset: no open
    transaction's records are inside a range.
    """
    partitions = [TopicPartition(topic, p) for p in sorted(await reader.partitions_of(topic))]
    if not partitions:
        return {}
    begins = await reader.beginning_offsets(partitions)
    ends = await reader.end_offsets(partitions)
    return {tp.partition: (begins[tp], ends[tp]) for tp in partitions}


async def read_range(
    reader: RangeReader,
    topic: str,
    ranges: Ranges,
    on_records: Callable[[Sequence[Record]], None],
    *,
    idle_s: float | None = None,
) -> Ending:
    """Read offsets `[first, end)` of each partition in `ranges`; each fetched batch goes to `on_records`.

    A partition is paused once read to its end. Returns "end" once every range is read, "idle"
    if `idle_s` seconds pass without a record (offsets a reader may not see, such as those of
    aborted transactions or compacted away, are skipped by the fetch, so "end" is the rule).
    """
    wanted = {TopicPartition(topic, p): (first, end) for p, (first, end) in ranges.items() if first < end}
    if not wanted:
        return "end"
    reader.assign(list(wanted))
    for tp, (first, _) in wanted.items():
        reader.seek(tp, first)
    ends = {tp: end for tp, (_, end) in wanted.items()}
    return await _fetch_to(reader, ends, on_records, idle_s, cut=True, pause=reader.pause)


async def _fetch_to(
    reader: Reader,
    ends: dict[TopicPartition, int],
    on_records: Callable[[Sequence[Record]], None],
    idle_s: float | None,
    *,
    cut: bool,
    pause: Callable[[TopicPartition], None] | None = None,
) -> Ending:
    """Fetch until the reader's positions reach `ends` ("end"), or `idle_s` passes without a record
    ("idle"). `cut`: records at or past a partition's end are left out; `pause`: a partition read
    to its end is paused."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while await behind(reader, ends):
        if idle_s is not None and loop.time() - last >= idle_s:
            return "idle"
        fetched = await reader.getmany(timeout_ms=200)
        for tp, records in fetched.items():
            on_records([r for r in records if r.offset < ends[tp]] if cut else records)
            if pause is not None and await reader.position(tp) >= ends[tp]:
                pause(tp)
        if fetched:
            last = loop.time()
    return "end"
