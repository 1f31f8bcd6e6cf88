"""The chaos suite's checker: where every input id ended, decided from what was sent and read back (pure).

A scenario hands `account` the ids it sent (good ones, that must be scored, and poison ones, that
must be dead-lettered) and the ids it read back with `read_committed` from the results topic and
the dead-letter topic, one per record read. `account` sorts every id into what happened to it:

    missing              sent, with neither a result nor a dead letter
    duplicated           more than one result, or more than one dead letter (ids; `extra` counts the copies)
    phantom              read back, never sent
    both                 a result and a dead letter
    good_dead_lettered   a good id dead-lettered
    poison_scored        a poison id scored

and returns a `Row` of the suite's table. `commits_ahead` checks the other half of the promise:
no input offset is committed before the output of every record below it was acknowledged.
Nothing here touches a broker, so the unit tests feed it small tables (tests/chaos/test_checker.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

EXAMPLES = 5  # ids kept per problem, for failure messages


@dataclass(frozen=True)
class Row:
    """One scenario's accounting: counts per problem, the duplicates allowed, and a few ids of each problem."""

    scenario: str
    guarantee: str
    sent: int
    missing: int = 0
    duplicated: int = 0
    extra: int = 0  # copies beyond the first, over every duplicated id
    bound: int = 0  # copies beyond the first the scenario allows (0 in exactly-once)
    phantom: int = 0
    both: int = 0
    good_dead_lettered: int = 0
    poison_scored: int = 0
    commits_ahead: int = 0  # commit samples past a record whose output was not yet written
    examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """What went wrong, by name; empty when every id ended where it must."""
        counts = {
            "missing": self.missing,
            "phantom": self.phantom,
            "both": self.both,
            "good_dead_lettered": self.good_dead_lettered,
            "poison_scored": self.poison_scored,
            "commits_ahead": self.commits_ahead,
        }
        found = [f"{name}={count}" for name, count in counts.items() if count]
        if self.extra > self.bound:
            found.append(f"duplicates {self.extra}>{self.bound}")
        return found

    @property
    def verdict(self) -> str:
        """`ok`, or the problems found."""
        return "ok" if not self.problems else "FAIL " + ", ".join(self.problems)

    def explain(self) -> str:
        """The verdict with a few ids of each problem (for an assertion message)."""
        shown = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in self.examples.items() if ids)
        return f"{self.scenario} [{self.guarantee}]: {self.verdict}" + (f" ({shown})" if shown else "")


def account(
    good: Iterable[str],
    poison: Iterable[str],
    results: Iterable[str],
    dead_letters: Iterable[str],
    *,
    bound: int = 0,
    scenario: str = "",
    guarantee: str = "",
    commits_ahead: int = 0,
) -> Row:
    """Account for every id sent: `results` and `dead_letters` hold one id per record read back."""
    good_ids, poison_ids = set(good), set(poison)
    sent = good_ids | poison_ids
    scored, dead = Counter(results), Counter(dead_letters)
    duplicated = sorted(i for i in scored.keys() | dead.keys() if scored[i] > 1 or dead[i] > 1)
    problems = {
        "missing": sorted(sent - scored.keys() - dead.keys()),
        "duplicated": duplicated,
        "phantom": sorted((scored.keys() | dead.keys()) - sent),
        "both": sorted(scored.keys() & dead.keys()),
        "good_dead_lettered": sorted(good_ids & dead.keys()),
        "poison_scored": sorted(poison_ids & scored.keys()),
    }
    extra = sum(max(0, scored[i] - 1) + max(0, dead[i] - 1) for i in duplicated)
    return Row(
        scenario=scenario,
        guarantee=guarantee,
        sent=len(sent),
        missing=len(problems["missing"]),
        duplicated=len(duplicated),
        extra=extra,
        bound=bound,
        phantom=len(problems["phantom"]),
        both=len(problems["both"]),
        good_dead_lettered=len(problems["good_dead_lettered"]),
        poison_scored=len(problems["poison_scored"]),
        commits_ahead=commits_ahead,
        examples={name: tuple(ids[:EXAMPLES]) for name, ids in problems.items() if ids},
    )


@dataclass(frozen=True)
class CommitSample:
    """The offset a group had committed on one partition, read at `at_ms` (wall clock, after the read returned)."""

    at_ms: int
    partition: int
    offset: int


def commits_ahead(
    samples: Iterable[CommitSample],
    positions: Mapping[str, tuple[int, int]],
    first_output_ms: Mapping[str, int],
) -> list[CommitSample]:
    """The samples that show an offset committed past a record whose output did not exist yet.

    `positions`: each input id's (partition, offset); `first_output_ms`: the create time of each
    id's first result or dead letter. A commit read at `at_ms` covering offset o means the output
    of the record at o was acknowledged before `at_ms`, so it was created before `at_ms` too; an
    output created later (or never) shows a commit ahead of the outputs.
    """
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for request_id, (partition, offset) in positions.items():
        written = first_output_ms.get(request_id)
        by_partition.setdefault(partition, []).append((offset, written if written is not None else -1))
    for records in by_partition.values():
        records.sort()
    return [sample for sample in samples if not _covered(sample, by_partition.get(sample.partition, []))]


def _covered(sample: CommitSample, records: list[tuple[int, int]]) -> bool:
    """Whether every record below the sample's offset had its output created by the sample's time."""
    for offset, written in records:
        if offset >= sample.offset:
            return True
        if written < 0 or written > sample.at_ms:
            return False
    return True


COLUMNS = (
    ("scenario", "scenario"),
    ("guarantee", "guarantee"),
    ("sent", "sent"),
    ("missing", "missing"),
    ("duplicated", "dup ids"),
    ("extra", "dup copies"),
    ("bound", "bound"),
    ("phantom", "phantom"),
    ("both", "both topics"),
    ("good_dead_lettered", "good->DLT"),
    ("poison_scored", "poison->scored"),
    ("commits_ahead", "commits ahead"),
    ("verdict", "verdict"),
)


def render_table(rows: Iterable[Row], outcomes: Mapping[tuple[str, str], str] | None = None) -> str:
    """The rows as a text table; `outcomes` adds each test's own result by (scenario, guarantee)."""
    header = [title for _, title in COLUMNS] + (["test"] if outcomes is not None else [])
    lines = [header]
    for row in rows:
        cells = [str(getattr(row, name)) for name, _ in COLUMNS]
        if outcomes is not None:
            cells.append(outcomes.get((row.scenario, row.guarantee), "?"))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in rendered)
