"""Bookkeeping for `streamscore collect`: which expected ids are answered, and their spooled lines.

Memory: each result is formatted on arrival and appended to a spool file beside the output;
per expected request only a state byte, a spool offset and a length are kept (13 bytes, so
13 MB for a million requests). The output is then written from the spool in row order.

The file layouts are described in `producer.collect`; `producer.flatten` formats the lines.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from producer.flatten import Columns, FlattenError, jsonl_object, read_outputs
from schemas import headers as h
from schemas.binary import load_response_body
from schemas.errors import ConfigError, DecodeError

MISSING_SHOWN = 5
OUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def output_path(value: str) -> Path:
    """The `--out` file; ConfigError unless its extension names a format this writes."""
    out = Path(value)
    if out.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"--out {out}: name it .jsonl or .csv (the format follows the extension)")
    return out


MISSING, RESULT, DEAD = 0, 1, 2  # what a request has so far (a state byte per request)
COLLECT_STAGE = "collect"


# ---------------------------------------------------------------------------------------------
# Ids


def parse_row(request_id: str, prefix: str) -> int | None:
    """The row index in `<prefix>-<row index>`, or None for any other id."""
    head = prefix + "-"
    if not request_id.startswith(head):
        return None
    tail = request_id[len(head) :]
    if not (tail.isascii() and tail.isdigit()) or (tail != "0" and tail.startswith("0")):
        return None  # produce never pads, so "p-007" is not the id of row 7
    return int(tail)


@dataclass(frozen=True)
class Expected:
    """The ids produce gave: `<prefix>-<n * rows_per_request>` for n in 0 .. count-1."""

    prefix: str
    count: int
    rows_per_request: int = 1

    def number_of(self, request_id: str) -> int | None:
        """The request number of an expected id, or None."""
        row = parse_row(request_id, self.prefix)
        if row is None or row % self.rows_per_request:
            return None
        number = row // self.rows_per_request
        return number if number < self.count else None

    def id_of(self, number: int) -> str:
        return f"{self.prefix}-{number * self.rows_per_request}"


# ---------------------------------------------------------------------------------------------
# Bookkeeping


class Ledger:
    """Per expected request: has it a result or a dead letter, and where is it spooled."""

    def __init__(self, count: int) -> None:
        self.state = np.zeros(count, dtype=np.int8)
        self.offset = np.zeros(count, dtype=np.int64)
        self.length = np.zeros(count, dtype=np.uint32)
        self.settled = 0
        self.superseded = 0  # dead letters replaced by a later result

    def accepts(self, number: int, kind: int) -> bool:
        """Whether a record of `kind` for request `number` is kept (else it is a duplicate)."""
        current = self.state[number]
        return bool(current == MISSING or (current == DEAD and kind == RESULT))

    def store(self, number: int, kind: int, offset: int, length: int) -> None:
        if self.state[number] == MISSING:
            self.settled += 1
        else:
            self.superseded += 1
        self.state[number], self.offset[number], self.length[number] = kind, offset, length

    def numbers(self, kind: int) -> np.ndarray[Any, np.dtype[np.intp]]:
        """The request numbers holding `kind`, in row order."""
        return np.flatnonzero(self.state == kind)


class Spool:
    """Append-only bytes in a file; an entry is read back by (offset, length)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("w+b")
        self.size = 0

    def append(self, data: bytes) -> int:
        offset = self.size
        self._file.write(data)
        self.size += len(data)
        return offset

    def copy(self, ledger: Ledger, kind: int, target: io.BufferedWriter) -> None:
        """Write the entries of every request holding `kind` to `target`, in row order."""
        self._file.flush()
        if not self.size:
            return
        descriptor = self._file.fileno()  # read, not mapped: the spool's pages stay out of the resident memory
        for number in ledger.numbers(kind):
            target.write(os.pread(descriptor, int(ledger.length[number]), int(ledger.offset[number])))

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Summary:
    """What was collected."""

    expected: int = 0
    results: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    superseded: int = 0
    outside: int = 0  # ids with the prefix that were not expected
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # the first few ids without anything
    missing_count: int = 0

    def describe(self, out: Path) -> str:
        rate = (self.results + self.dead_letters) / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"collected {self.results} results and {self.dead_letters} dead letters of {self.expected} ids "
            f"into {out} in {self.seconds:.2f} s ({rate:,.0f} ids/s); dropped {self.duplicates} duplicates"
        )
        extras = [(self.superseded, "dead letters replaced by a later result"), (self.outside, "unexpected ids")]
        return text + "".join(f", {n} {what}" for n, what in extras if n)


class Collector:
    """Turns result and dead-letter records into spooled lines; writes them out in row order."""

    def __init__(self, expected: Expected, out: Path) -> None:
        self.expected, self.out = expected, out
        self.csv = OUT_FORMATS[out.suffix.lower()] == "csv"
        self.ledger = Ledger(expected.count)
        self.columns: Columns | None = None
        self.duplicates = self.outside = 0
        self._results = Spool(out.with_name(f".{out.name}.results.spool"))
        self._dead = Spool(out.with_name(f".{out.name}.dead.spool"))
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    @property
    def done(self) -> bool:
        return self.ledger.settled == self.expected.count

    def add_result(self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Keep a result record if its id is expected and not yet answered.

        A result with binary outputs (its `inference-header-content-length` header in `headers`)
        is written as its JSON form would be.
        """
        try:
            length = h.header_length(headers)
        except ValueError:
            length = 0  # refused by `load_response_body` (when the id is expected): a dead letter at collect
        found = self._admit(key, value, RESULT, length)
        if found is None:
            return
        number, request_id = found
        try:
            line = self._format(request_id, number, load_response_body(value or b"", header_length=length))
        except (FlattenError, DecodeError, orjson.JSONDecodeError, AttributeError) as error:
            self._store_dead(number, request_id, COLLECT_STAGE, type(error).__name__, str(error))
            return
        self.ledger.store(number, RESULT, self._results.append(line), len(line))

    def add_dead_letter(self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        """Keep a dead letter if its id is expected and has neither a result nor a dead letter."""
        found = self._admit(key, value, DEAD)
        if found is not None:
            stage, error, message = (
                h.first(headers, (name,)) for name in (h.DLT_STAGE, h.DLT_ERROR, h.DLT_EXCEPTION_MESSAGE)
            )
            self._store_dead(*found, stage, error, message)

    def missing(self, limit: int = MISSING_SHOWN) -> tuple[int, list[str]]:
        """How many expected ids have nothing yet, and the first `limit` of them."""
        numbers = self.ledger.numbers(MISSING)
        return len(numbers), [self.expected.id_of(int(n)) for n in numbers[:limit]]

    def write(self) -> Path | None:
        """Write the output (and `<out>.dead.jsonl` if there are dead letters); return the latter."""
        header = b""
        if self.csv:
            columns = self.columns.header() if self.columns else Columns(()).header()
            header = self._csv_bytes([columns])
        _write_atomically(self.out, header, self._results, self.ledger, RESULT)
        dead_path = self.out.with_name(self.out.name + ".dead.jsonl")
        if not self.ledger.numbers(DEAD).size:
            dead_path.unlink(missing_ok=True)  # no stale file from an earlier run
            return None
        _write_atomically(dead_path, b"", self._dead, self.ledger, DEAD)
        return dead_path

    def close(self) -> None:
        self._results.close()
        self._dead.close()

    def summary(self, seconds: float) -> Summary:
        count, shown = self.missing()
        return Summary(
            expected=self.expected.count,
            results=int(self.ledger.numbers(RESULT).size),
            dead_letters=int(self.ledger.numbers(DEAD).size),
            duplicates=self.duplicates,
            superseded=self.ledger.superseded,
            outside=self.outside,
            seconds=seconds,
            missing=shown,
            missing_count=count,
        )

    def _admit(
        self, key: bytes | None, value: bytes | None, kind: int, header_length: int | None = None
    ) -> tuple[int, str] | None:
        """(request number, id) of a record to keep; None for other batches and duplicates."""
        request_id = key.decode("utf-8", errors="replace") if key else _body_id(value, header_length)
        if request_id is None or not request_id.startswith(self.expected.prefix):
            return None
        number = self.expected.number_of(request_id)
        if number is None:
            self.outside += parse_row(request_id, self.expected.prefix) is not None
            return None
        if not self.ledger.accepts(number, kind):
            self.duplicates += 1
            return None
        return number, request_id

    def _format(self, request_id: str, number: int, body: Any) -> bytes:
        if not self.csv:
            return orjson.dumps(jsonl_object(request_id, body)) + b"\n"
        outputs = read_outputs(body)
        self.columns = self.columns or Columns.of(outputs)
        first_row = number * self.expected.rows_per_request
        return self._csv_bytes(self.columns.rows(request_id, first_row, body.get("model_version"), outputs))

    def _csv_bytes(self, rows: list[list[Any]]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerows(rows)
        return self._buffer.getvalue().encode()

    def _store_dead(self, number: int, key: str, stage: str | None, error: str | None, message: str | None) -> None:
        row = number * self.expected.rows_per_request
        entry = {"key": key, "row": row, "stage": stage, "error": error, "message": message}
        line = orjson.dumps(entry) + b"\n"
        self.ledger.store(number, DEAD, self._dead.append(line), len(line))


def _body_id(value: bytes | None, header_length: int | None = None) -> str | None:
    """The `id` of a record without a key: in its JSON body (the first `header_length` bytes); None if it has none."""
    with suppress(orjson.JSONDecodeError, AttributeError):
        found = orjson.loads((value or b"")[:header_length]).get("id")
        return found if isinstance(found, str) else None
    return None


def _write_atomically(path: Path, header: bytes, spool: Spool, ledger: Ledger, kind: int) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as target:
        target.write(header)
        spool.copy(ledger, kind, target)
    os.replace(partial, path)
