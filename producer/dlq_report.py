"""What `dlq inspect` and `dlq replay` print: counts as small tables, dead letters decoded, summaries.

Pure: every function takes dead letters or decisions (`producer.dlq`) and returns text or
JSON-ready objects. Bytes are shown as text when they are UTF-8 (JSON values as they are),
else as their length and a hex prefix; Spring's binary headers are decoded (partition, offset,
timestamp as ISO time) and a stack trace is shortened to the lines that say the most.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from producer.dlq import UNKNOWN, DeadLetter, Outcome, Refuse, Skip, hour_of, iso_time, spring_number
from schemas import headers as h

HEX_PREFIX_BYTES = 32
TEXT_CHARS = 400
STACK_LINES = 3
DETAILS_SHOWN = 10  # skipped or refused dead letters named one by one in a summary

# ---------------------------------------------------------------------------------------------
# Counting and choosing


@dataclass
class Counts:
    """Dead letters read and selected, and the selected ones by stage, error, model version and hour."""

    read: int = 0
    selected: int = 0
    stages: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    models: Counter[tuple[str, str]] = field(default_factory=Counter)
    hours: Counter[str] = field(default_factory=Counter)

    def add(self, letter: DeadLetter) -> None:
        """Count a selected dead letter."""
        model, version = letter.model
        self.selected += 1
        self.stages[letter.stage or UNKNOWN] += 1
        self.errors[letter.error or UNKNOWN] += 1
        self.models[(model or UNKNOWN, version or UNKNOWN)] += 1
        self.hours[hour_of(letter.timestamp)] += 1


class Sample:
    """Up to `size` dead letters to show: the first of each (stage, error) first, then the first others.

    "First" is the smallest (partition, offset), so the choice does not depend on the order in
    which partitions are fetched; memory holds one dead letter per kind and `size` others.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._first_of_kind: dict[tuple[str | None, str | None], DeadLetter] = {}
        self._earliest: list[tuple[int, int, DeadLetter]] = []  # a max-heap by (partition, offset), negated

    def offer(self, letter: DeadLetter) -> None:
        if self.size <= 0:
            return
        kind = (letter.stage, letter.error)
        held = self._first_of_kind.get(kind)
        if held is None or (letter.partition, letter.offset) < (held.partition, held.offset):
            self._first_of_kind[kind] = letter
        heapq.heappush(self._earliest, (-letter.partition, -letter.offset, letter))
        if len(self._earliest) > self.size:
            heapq.heappop(self._earliest)

    def chosen(self) -> list[DeadLetter]:
        """The dead letters to show, in (partition, offset) order."""
        by_place = sorted(self._first_of_kind.values(), key=_place)[: self.size]
        picked = {_place(letter) for letter in by_place}
        for letter in sorted((entry[2] for entry in self._earliest), key=_place):
            if len(by_place) < self.size and _place(letter) not in picked:
                by_place.append(letter)
        return sorted(by_place, key=_place)


def _place(letter: DeadLetter) -> tuple[int, int]:
    return letter.partition, letter.offset


# ---------------------------------------------------------------------------------------------
# Bytes and headers, readably


def show_bytes(raw: bytes | None) -> str:
    """Text if `raw` is printable UTF-8 (quoted), else its length and a hex prefix; `null` for None."""
    if raw is None:
        return "null"
    text = _printable(raw)
    return _quoted(text) if text is not None else f"{len(raw)} bytes, {_hex(raw)}"


def show_value(raw: bytes | None) -> str:
    """A record value: JSON as it is, other text quoted, anything else as length and hex prefix."""
    if raw is None:
        return "null"
    if not raw:
        return "empty (0 bytes)"
    text = _printable(raw)
    if text is None:
        return f"{len(raw)} bytes, not UTF-8 text: {_hex(raw)}"
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"{len(raw)} bytes of text, not JSON: {_quoted(text)}"
    return _cut(text)


def _hex(raw: bytes) -> str:
    more = "..." if len(raw) > HEX_PREFIX_BYTES else ""
    return f"hex {raw[:HEX_PREFIX_BYTES].hex()}{more}"


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(ch.isprintable() or ch in "\n\t" for ch in text) else None


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else f"{text[:TEXT_CHARS]}... ({len(text) - TEXT_CHARS} more characters)"


def _quoted(text: str) -> str:
    return orjson.dumps(_cut(text)).decode()


def shorten_stacktrace(text: str, lines: int = STACK_LINES) -> str:
    """The lines of a stack trace that say the most: Python's last (the error), Java's first."""
    all_lines = [line for line in text.splitlines() if line.strip()]
    if len(all_lines) <= lines:
        return " | ".join(line.strip() for line in all_lines)
    python = all_lines[0].startswith("Traceback")
    kept = all_lines[-lines:] if python else all_lines[:lines]
    note = f"({len(all_lines) - lines} lines left out)"
    parts = [note, *kept] if python else [*kept, note]
    return " | ".join(part.strip() for part in parts)


_LONGS = (h.DLT_ORIGINAL_OFFSET, h.DLT_ORIGINAL_TIMESTAMP)


def show_added(name: str, raw: bytes | None) -> str:
    """A dead-letter header's value: Spring's ints and longs decoded, times in ISO, stack traces short."""
    if name in (h.DLT_ORIGINAL_PARTITION, *_LONGS):
        number = spring_number(raw, 4 if name == h.DLT_ORIGINAL_PARTITION else 8)
        if number is None:
            return f"unreadable ({show_bytes(raw)})"
        return f"{iso_time(number)} ({number})" if name == h.DLT_ORIGINAL_TIMESTAMP else str(number)
    if name == h.DLT_EXCEPTION_STACKTRACE and raw is not None:
        return shorten_stacktrace(raw.decode("utf-8", errors="replace"))
    return show_bytes(raw)


def render_letter(letter: DeadLetter) -> str:
    """A dead letter decoded, a few lines: where, key, value, the original headers, the added ones."""
    lines = [
        f"{letter.position}  {iso_time(letter.timestamp)}",
        f"  key    {show_bytes(letter.key)}",
        f"  value  {show_value(letter.value)}",
        f"  original headers ({len(letter.original_headers)})",
        *(f"    {name}: {show_bytes(raw)}" for name, raw in letter.original_headers),
        f"  dead-letter headers ({len(letter.added_headers)})",
        *(f"    {name}: {show_added(name, raw)}" for name, raw in letter.added_headers),
    ]
    return "\n".join(lines)


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as a JSON-ready object (the same readable values as `render_letter`)."""
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": iso_time(letter.timestamp),
        "key": show_bytes(letter.key),
        "value": show_value(letter.value),
        "headers": [[name, show_bytes(raw)] for name, raw in letter.original_headers],
        "dead_letter_headers": {name: show_added(name, raw) for name, raw in letter.added_headers},
    }


# ---------------------------------------------------------------------------------------------
# inspect


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Text columns left-aligned, int columns right-aligned (a version "2" is text), under a header line."""
    rows = [list(row) for row in rows]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(columns))]
    cells = [list(columns), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _by_count(counter: Counter[Any]) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))


def render_counts(counts: Counts, topic: str, scope: str) -> str:
    """The tables of `dlq inspect`: by stage, by error class, by model version, by hour."""
    head = f"{topic}: {counts.read} dead letters read ({scope}), {counts.selected} selected"
    if not counts.selected:
        return head
    sections = [
        head,
        table(("stage", "count"), _by_count(counts.stages)),
        table(("error", "count"), _by_count(counts.errors)),
        table(("model", "version", "count"), [(m, v, n) for (m, v), n in _by_count(counts.models)]),
        table(("hour (UTC)", "count"), sorted(counts.hours.items())),
    ]
    return "\n\n".join(sections)


def inspect_json(counts: Counts, topic: str, shown: Sequence[DeadLetter]) -> str:
    """The counts (and the dead letters shown) as one JSON object."""
    report = {
        "topic": topic,
        "read": counts.read,
        "selected": counts.selected,
        "by_stage": dict(_by_count(counts.stages)),
        "by_error": dict(_by_count(counts.errors)),
        "by_model_version": [{"model": m, "version": v, "count": n} for (m, v), n in _by_count(counts.models)],
        "by_hour": dict(sorted(counts.hours.items())),
        "shown": [letter_json(letter) for letter in shown],
    }
    return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()


# ---------------------------------------------------------------------------------------------
# replay


def render_outcome(outcome: Outcome, *, dry_run: bool, max_replays: int) -> str:
    """What a replay did (or, dry, would do): totals, a table by original topic, each skip and refusal."""
    plan, verb = outcome.plan, "would replay" if dry_run else "replayed"
    replayed = plan.replays if dry_run else outcome.replayed
    lines = [
        f"{verb} {len(replayed)}, skipped (not all in the dead letter) {len(plan.skipped)}, "
        f"refused (replayed {_times(max_replays)} already) {len(plan.refused)}"
    ]
    rows = [(topic, *counts) for topic, counts in _tabulated(outcome, dry_run).items()]
    if rows:
        lines += ["", table(("original topic", verb, "skipped", "refused"), rows)]
    moved = {(r.letter.original_topic or UNKNOWN, r.topic) for r in replayed if r.topic != r.letter.original_topic}
    lines += [f"{source} -> {target} (--to)" for source, target in sorted(moved)]
    lines += _details("skipped", plan.skipped, describe_skip)
    lines += _details("refused", plan.refused, lambda refusal: describe_refusal(refusal, max_replays))
    return "\n".join(lines)


def _tabulated(outcome: Outcome, dry_run: bool) -> dict[str, tuple[int, int, int]]:
    return Outcome(outcome.plan).by_original_topic() if dry_run else outcome.by_original_topic()


def describe_failures(outcome: Outcome, transactional_id: str | None) -> str:
    """The error line of a replay whose records were not all acknowledged (or whose transaction aborted)."""
    failed, total = outcome.failed, len(outcome.plan.replays)
    named = "; ".join(f"{r.letter.position} -> {r.topic}: {error}" for r, error in failed[:DETAILS_SHOWN])
    more = f"; ... and {len(failed) - DETAILS_SHOWN} more" if len(failed) > DETAILS_SHOWN else ""
    if outcome.aborted is not None:
        return (
            f"transaction {transactional_id} aborted ({outcome.aborted}): nothing was replayed, "
            f"read_committed readers see none of the {total} records. {named}{more}".rstrip(". ")
        )
    return (
        f"{len(failed)} of {total} records were not acknowledged and may not have been replayed: "
        f"{named}{more}. The other {total - len(failed)} were. Retry one with --partition P --offsets O, "
        "or use --guarantee exactly-once for all or nothing"
    )


def _details(label: str, items: Sequence[Any], describe: Any) -> list[str]:
    if not items:
        return []
    shown = [f"  {describe(item)}" for item in items[:DETAILS_SHOWN]]
    more = [f"  ... and {len(items) - DETAILS_SHOWN} more"] if len(items) > DETAILS_SHOWN else []
    return ["", f"{label}:", *shown, *more]


def describe_skip(skip: Skip) -> str:
    """Why a dead letter was not sent, and where its original can still be read."""
    letter = skip.letter
    if skip.reason == "no original topic":
        return f"{letter.position}: no {h.DLT_ORIGINAL_TOPIC} header; name a topic with --to"
    if letter.original_topic is None or letter.original_partition is None or letter.original_offset is None:
        return f"{letter.position}: {skip.reason}, and where the original was is not recorded"
    return (
        f"{letter.position}: {skip.reason}; the original is at {letter.original_position} while retention "
        f"keeps it: kafka-console-consumer.sh --topic {letter.original_topic} --partition "
        f"{letter.original_partition} --offset {letter.original_offset} --max-messages 1"
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def describe_refusal(refusal: Refuse, max_replays: int) -> str:
    """Why a dead letter was refused."""
    letter = refusal.letter
    if refusal.count is None:
        return f"{letter.position}: its {h.REPLAY_COUNT} header is not a count; fix the cause, then produce it anew"
    return (
        f"{letter.position}: replayed {_times(refusal.count)} already (--max-replays {max_replays}); "
        "fix the cause, or raise --max-replays"
    )
