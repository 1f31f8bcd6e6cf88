"""The pure parts of `streamscore score`: a job's identity, what a (re)run still publishes, the verdict.

The resume rule. A job is the input file's bytes plus what shapes its requests (rows per request,
model, model version, input name, datatype). Its request ids are `<file stem>-<job hash>-<first
row>`, the job hash being the first 10 hex digits of a sha256 over the file's content and those
settings. The same file scored the same way, even after a copy or a `touch`, gets the same ids; a
changed byte or setting gets new ones, so an answer to another job is never taken for this one.

On start `score` reads the results and dead-letter topics from their beginning to their current
end; a request whose id already has a result or a dead letter is not published again. What the
rule cannot see: a request published by the interrupted run but not yet answered (still in the
input topic's backlog) is published again, and the later of its two answers is dropped as a
duplicate; answers the topics no longer hold (past their retention) are asked for again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from producer.files import DEFAULT_CHUNK_ROWS

JOB_HASH_DIGITS = 10
_READ_BYTES = 1 << 20

Numbers = np.ndarray[Any, np.dtype[np.intp]]


@dataclass(frozen=True)
class JobShape:
    """What, besides the file's bytes, decides the requests a job sends."""

    rows_per_request: int = 1
    model: str | None = None
    model_version: str | None = None
    input_name: str = "x"
    datatype: str = "FP32"

    def describe(self) -> bytes:
        return orjson.dumps([self.rows_per_request, self.model, self.model_version, self.input_name, self.datatype])


def job_prefix(path: Path, shape: JobShape) -> str:
    """The id prefix of scoring `path` as `shape` says: `<stem>-<hash of content and shape>`."""
    digest = hashlib.sha256(shape.describe() + b"\n")
    with path.open("rb") as handle:
        while block := handle.read(_READ_BYTES):
            digest.update(block)
    return f"{path.stem}-{digest.hexdigest()[:JOB_HASH_DIGITS]}"


def chunk_rows_for(rows_per_request: int, target: int = DEFAULT_CHUNK_ROWS) -> int:
    """Rows read at a time: a multiple of rows_per_request near `target`, so no chunk splits a request."""
    return rows_per_request * max(1, target // rows_per_request)


@dataclass(frozen=True)
class ChunkPlan:
    """What to publish of one chunk: the request numbers (of the whole file) and the chunk's rows they hold."""

    numbers: Numbers
    rows: Numbers  # row positions within the chunk, in order

    @property
    def empty(self) -> bool:
        return not self.numbers.size


def plan_chunk(answered: np.ndarray[Any, Any], first_row: int, chunk_len: int, rows_per_request: int) -> ChunkPlan:
    """The requests of a chunk (starting at file row `first_row`) that have no answer yet.

    `answered[n]` is true when request n already has a result or a dead letter. `first_row` is a
    multiple of `rows_per_request`; only the file's last request may hold fewer rows, so the
    chosen rows, sent `rows_per_request` at a time, split into exactly the chosen requests.
    """
    first = first_row // rows_per_request
    count = -(-chunk_len // rows_per_request)
    numbers = first + np.flatnonzero(~answered[first : first + count].astype(bool))
    starts = (numbers - first) * rows_per_request
    rows = (starts[:, None] + np.arange(rows_per_request)).ravel()
    return ChunkPlan(numbers, rows[rows < chunk_len])


def too_many_failures(dead_letters: int, expected: int, max_failures: float) -> bool:
    """Whether the share of dead letters among the expected requests passes `max_failures` (0..1)."""
    return expected > 0 and dead_letters / expected > max_failures


def reasons_of(dead_lines: Iterable[bytes]) -> Counter[str]:
    """Dead letters by reason (`<stage>/<error>`), from the lines of a `<out>.dead.jsonl` file."""
    counts: Counter[str] = Counter()
    for line in dead_lines:
        entry = orjson.loads(line)
        counts[f"{entry.get('stage') or '?'}/{entry.get('error') or '?'}"] += 1
    return counts


def describe_reasons(counts: Counter[str]) -> str:
    """`dead letters by reason: validate/ValidationError 3, ...`, the most frequent first."""
    return "dead letters by reason: " + ", ".join(f"{reason} {n}" for reason, n in counts.most_common())
