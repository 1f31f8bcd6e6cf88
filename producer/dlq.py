"""Dead letters as the `dlq` commands see them: what failed, where it came from, how it goes back.

Pure: nothing here touches Kafka. `DeadLetter.of(record)` splits a record of the dead-letter
topic into the original record (key, value, the headers before the dead-letter ones) and the
headers the worker added (`kafka_dlt-*`, Spring's encodings, and `streamscore-dlt-*`).
`Filters` selects dead letters, `read_ranges` says which offsets to read, and `decide` turns one
dead letter into a `Replay` (the record to send back), a `Skip` (the dead letter does not hold
the whole original) or a `Refuse` (replayed too often already); a `Plan` gathers them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas import headers as h
from schemas.records import Record
from schemas.topics import retried_topic_of
from transport.reading import Ranges

Header = tuple[str, bytes]
DEFAULT_MAX_REPLAYS = 3
UNKNOWN = "(none)"  # a count's label when the dead letter does not say
OMISSIONS = {"value": h.DLT_VALUE_OMITTED, "headers": h.DLT_HEADERS_OMITTED, "key": h.DLT_KEY_OMITTED}


# ---------------------------------------------------------------------------------------------
# Reading a dead letter


def spring_number(raw: bytes | None, size: int) -> int | None:
    """A big-endian int (`size` 4) or long (`size` 8) as Spring writes them; None if absent or not that size."""
    if raw is None or len(raw) != size:
        return None
    return int(struct.unpack(">i" if size == 4 else ">q", raw)[0])


def iso_time(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time to the millisecond: `2026-12-02T14:03:11.123Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def hour_of(ms: int) -> str:
    """The UTC hour epoch milliseconds fall in: `2026-12-02T14:00Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:00Z")


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, split into the original record and the added headers."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # the dead letter's own (epoch ms), not the original's
    key: bytes | None
    value: bytes | None
    original_headers: tuple[Header, ...] = ()
    added_headers: tuple[Header, ...] = ()

    @classmethod
    def of(cls, record: Record) -> DeadLetter:
        """The dead letter a consumed record holds (every header from the first dead-letter one is added)."""
        headers = tuple(record.headers or ())
        own = tuple((k, v) for k, v in headers if not k.startswith(h.DLT_PREFIXES))
        added = tuple((k, v) for k, v in headers if k.startswith(h.DLT_PREFIXES))
        return cls(
            record.topic, record.partition, record.offset, record.timestamp, record.key, record.value, own, added
        )

    @property
    def position(self) -> str:
        """Where the dead letter sits: `topic[partition]@offset`."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def added(self, name: str) -> bytes | None:
        """The value of an added header (the last one of that name), or None."""
        found = None
        for key, value in self.added_headers:
            if key == name:
                found = value
        return found

    def text(self, name: str) -> str | None:
        """An added header as text (undecodable bytes replaced), or None."""
        raw = self.added(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    @property
    def stage(self) -> str | None:
        return self.text(h.DLT_STAGE)

    @property
    def error(self) -> str | None:
        """The error class: ours (`streamscore-dlt-error`), else the last part of Spring's fqcn."""
        fqcn = self.text(h.DLT_EXCEPTION_FQCN)
        return self.text(h.DLT_ERROR) or (fqcn.rsplit(".", 1)[-1] if fqcn else None)

    @property
    def model(self) -> tuple[str | None, str | None]:
        """The model name and version the record was meant for, when the dead letter says."""
        return self.text(h.DLT_MODEL), self.text(h.DLT_MODEL_VERSION)

    @property
    def original_topic(self) -> str | None:
        return self.text(h.DLT_ORIGINAL_TOPIC)

    @property
    def original_partition(self) -> int | None:
        return spring_number(self.added(h.DLT_ORIGINAL_PARTITION), 4)

    @property
    def original_offset(self) -> int | None:
        return spring_number(self.added(h.DLT_ORIGINAL_OFFSET), 8)

    @property
    def original_position(self) -> str:
        """Where the original record was read: `topic[partition]@offset` (`?` for what is unknown)."""
        parts = (self.original_topic, self.original_partition, self.original_offset)
        topic, partition, offset = ("?" if part is None else part for part in parts)
        return f"{topic}[{partition}]@{offset}"

    @property
    def omitted(self) -> tuple[str, ...]:
        """What of the original the dead letter could not hold: "value", "headers", "key"."""
        return tuple(part for part, name in OMISSIONS.items() if self.added(name) is not None)

    @property
    def tombstone(self) -> bool:
        """The original value was null (written as empty bytes, as a record needs a key or a value)."""
        return self.added(h.DLT_TOMBSTONE) is not None

    def retried_topic(self) -> str | None:
        """The input topic, when the original was read from one of its retry topics (its last attempt):
        the topic is named `<input>-retry-<delay ms>` and the record carries `retry_topic-attempts`."""
        if self.original_topic is None or all(k != h.RETRY_ATTEMPTS for k, _ in self.original_headers):
            return None
        return retried_topic_of(self.original_topic)

    def replay_count(self) -> int | None:
        """How often the original was replayed before: 0 without the header, None if it is not a count."""
        values = [v for k, v in self.original_headers if k.lower() == h.REPLAY_COUNT]
        if not values:
            return 0
        text = (values[-1] or b"").decode("ascii", errors="replace")
        return int(text) if text.isdigit() else None


# ---------------------------------------------------------------------------------------------
# Selecting


def parse_time(text: str) -> int:
    """Epoch milliseconds from `1764684191123` or an ISO time (`2026-12-02T14:00`, UTC unless it says)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO time (2026-12-02T14:00Z) nor epoch milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_offsets(text: str) -> tuple[int, int | None]:
    """An inclusive offset range: `A-B`, `A-` (from A on) or `A` (just A)."""
    first, dash, last = text.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        raise ValueError(f"{text!r} is not an offset range: write A-B, A- or A (offsets are whole numbers)")
    start = int(first)
    end = None if dash and not last else int(last or first)
    if end is not None and end < start:
        raise ValueError(f"{text!r} ends before it starts")
    return start, end


@dataclass(frozen=True)
class Filters:
    """Which dead letters a command looks at; every filter given must hold (a repeated flag: any value)."""

    stages: frozenset[str] = frozenset()
    errors: frozenset[str] = frozenset()  # class names, short (ValidationError) or fully qualified
    model: str | None = None
    model_version: str | None = None
    since_ms: int | None = None  # the dead letter's timestamp, inclusive
    until_ms: int | None = None  # exclusive
    partition: int | None = None  # of the dead-letter topic
    offsets: tuple[int, int | None] | None = None  # inclusive, in that partition

    def matches(self, letter: DeadLetter) -> bool:
        """Whether `letter` is selected."""
        return self._matches_failure(letter) and self._matches_place(letter)

    def _matches_failure(self, letter: DeadLetter) -> bool:
        model, version = letter.model
        return (
            (not self.stages or letter.stage in self.stages)
            and (not self.errors or bool({letter.error, letter.text(h.DLT_EXCEPTION_FQCN)} & self.errors))
            and (self.model is None or model == self.model)
            and (self.model_version is None or version == self.model_version)
        )

    def _matches_place(self, letter: DeadLetter) -> bool:
        first, last = self.offsets or (0, None)
        return (
            (self.since_ms is None or letter.timestamp >= self.since_ms)
            and (self.until_ms is None or letter.timestamp < self.until_ms)
            and (self.partition is None or letter.partition == self.partition)
            and first <= letter.offset
            and (last is None or letter.offset <= last)
        )


def read_ranges(available: Ranges, filters: Filters, *, limit: int | None = None, newest: bool = True) -> Ranges:
    """The offsets to read of each partition: the filters' partition and offsets, then at most
    `limit` of each partition, the newest (last) or the oldest (first)."""
    ranges: Ranges = {}
    for partition, (first, end) in sorted(available.items()):
        if filters.partition is not None and partition != filters.partition:
            continue
        if filters.offsets is not None:
            low, high = filters.offsets
            first, end = max(first, low), end if high is None else min(end, high + 1)
        if limit is not None:
            first, end = (max(first, end - limit), end) if newest else (first, min(end, first + limit))
        ranges[partition] = (first, max(first, end))
    return ranges


# ---------------------------------------------------------------------------------------------
# Replaying


@dataclass(frozen=True)
class Replay:
    """The record to send back: the original key, value and headers, plus the new replay count."""

    letter: DeadLetter
    topic: str
    partition: int | None  # the original's when going back to its topic; None: the partitioner's choice
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    count: int  # the streamscore-replay-count it carries


@dataclass(frozen=True)
class Skip:
    """A dead letter that does not hold the whole original (`reason`), so it is not sent."""

    letter: DeadLetter
    reason: str  # "value omitted", "headers omitted", "key omitted", "no original topic"


@dataclass(frozen=True)
class Refuse:
    """A dead letter whose original was replayed `max_replays` times already (or whose count is unreadable)."""

    letter: DeadLetter
    count: int | None


Decision = Replay | Skip | Refuse


def replayed_headers(original: Sequence[Header], count: int) -> tuple[Header, ...]:
    """The original headers in order, any replay count dropped, then `streamscore-replay-count: count`."""
    kept = tuple((k, v) for k, v in original if k.lower() != h.REPLAY_COUNT)
    return (*kept, (h.REPLAY_COUNT, str(count).encode()))


def decide(letter: DeadLetter, *, to: str | None = None, max_replays: int = DEFAULT_MAX_REPLAYS) -> Decision:
    """What a replay does with `letter`: send it (to `to`, else its original topic), skip it, or refuse it.

    Without its headers the count is unknown, so that skip comes first; then the cap (a record
    replayed `max_replays` times is refused even when incomplete: fetching it by hand would loop
    too); then what else is missing.
    """
    if "headers" in letter.omitted:
        return Skip(letter, "headers omitted")
    count = letter.replay_count()
    if count is None or count >= max_replays:
        return Refuse(letter, count)
    if letter.omitted:
        return Skip(letter, f"{letter.omitted[0]} omitted")
    retried = letter.retried_topic()
    topic = to or retried or letter.original_topic
    if not topic:
        return Skip(letter, "no original topic")
    partition = letter.original_partition if topic == letter.original_topic else None
    value = None if letter.tombstone else letter.value
    original = letter.original_headers
    if retried is not None:  # the worker's retry bookkeeping, not the request's: the replay starts afresh
        original = tuple((k, v) for k, v in original if k not in h.RETRY_HEADERS)
    headers = replayed_headers(original, count + 1)
    return Replay(letter, topic, partition, letter.key, value, headers, count + 1)


def place(replays: Iterable[Replay], partitions: dict[str, set[int]]) -> list[Replay]:
    """`replays` with a partition the target topic lacks (it was recreated smaller) left to the partitioner."""
    placed = []
    for replay in replays:
        if replay.partition is not None and replay.partition not in partitions.get(replay.topic, set()):
            replay = Replay(replay.letter, replay.topic, None, replay.key, replay.value, replay.headers, replay.count)
        placed.append(replay)
    return placed


@dataclass
class Plan:
    """The decisions of a replay, in dead-letter order."""

    replays: list[Replay] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    refused: list[Refuse] = field(default_factory=list)

    def add(self, decision: Decision) -> None:
        if isinstance(decision, Replay):
            self.replays.append(decision)
        elif isinstance(decision, Skip):
            self.skipped.append(decision)
        else:
            self.refused.append(decision)

    @property
    def targets(self) -> list[str]:
        """The topics records are sent to, sorted."""
        return sorted({replay.topic for replay in self.replays})


@dataclass(frozen=True)
class Outcome:
    """What a replay came to: its plan, the records not acknowledged (with the error), and whether a
    transaction was aborted (then nothing was replayed: read_committed readers see none of it)."""

    plan: Plan
    failed: tuple[tuple[Replay, str], ...] = ()
    aborted: str | None = None  # why the transaction was aborted

    @property
    def replayed(self) -> list[Replay]:
        """The records acknowledged (and, in a transaction, committed)."""
        if self.aborted is not None:
            return []
        failed = {replay.letter.position for replay, _ in self.failed}
        return [replay for replay in self.plan.replays if replay.letter.position not in failed]

    def by_original_topic(self) -> dict[str, tuple[int, int, int]]:
        """(replayed, skipped, refused) by the original topic of the dead letters, sorted by topic."""
        counts: dict[str, list[int]] = {}
        columns: tuple[Sequence[Decision], ...] = (self.replayed, self.plan.skipped, self.plan.refused)
        for column, decisions in enumerate(columns):
            for decision in decisions:
                counts.setdefault(decision.letter.original_topic or UNKNOWN, [0, 0, 0])[column] += 1
        return {topic: (row[0], row[1], row[2]) for topic, row in sorted(counts.items())}
