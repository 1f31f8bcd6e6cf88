"""Read feature rows from files, in chunks, so a file of millions of rows is never all in memory.

Formats (chosen by extension, or named explicitly):

    csv    one row per line, numbers only; a first line with no number in it is a header
    jsonl  each line a JSON list of numbers (one row) or a JSON object (a ready V2 request)
    npy    a 2-D numpy array, read a chunk at a time (allow_pickle=False)
    parquet  numeric columns (integers, floats, booleans), read in batches of rows with pyarrow
           (`pip install 'streamscore[parquet]'`); a null is refused like a NaN

Every reader yields 2-D float64 arrays of at most `chunk_rows` rows, all with the same number of
columns; `jsonl` also yields `ReadyRequest`s, in file order. A bad value is a `ConfigError` that
names the file, the line (or row) and what to do.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import numpy as np
import orjson

from schemas.errors import ConfigError

FORMATS = ("csv", "jsonl", "npy", "parquet")
DEFAULT_CHUNK_ROWS = 10_000
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy", ".parquet": "parquet"}

Rows = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True, slots=True)
class ReadyRequest:
    """A V2 request from a JSON Lines file, sent unchanged (`body` is the line's bytes)."""

    body: bytes
    id: str | None
    line: int


Chunk = Rows | ReadyRequest


def format_of(path: Path, explicit: str | None = None) -> str:
    """The file format: `explicit` if given, else from the extension."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise ConfigError(f"unknown format {explicit!r}; use one of {', '.join(FORMATS)}")
        return explicit
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; pass --format {'|'.join(FORMATS)}"
        ) from None


def read_chunks(path: Path | str, fmt: str | None = None, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Chunks of rows (and, for jsonl, ready requests) from `path`, in file order."""
    path = Path(path)
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    fmt = format_of(path, fmt)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; check the path given to --file")
    readers = {"csv": read_csv, "jsonl": read_jsonl, "npy": read_npy, "parquet": read_parquet}
    return readers[fmt](path, chunk_rows=chunk_rows)


# ---------------------------------------------------------------------------------------------
# CSV


def read_csv(path: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, header: bool | None = None) -> Iterator[Rows]:
    """Rows of a CSV file of numbers; `header=None` detects a header (a line without numbers)."""
    width: int | None = None
    for block in _blocks(_csv_lines(path, header), chunk_rows):
        chunk = _csv_chunk(path, block, width)
        width = chunk.shape[1]
        yield chunk


def _csv_lines(path: Path, header: bool | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty data line."""
    with path.open(newline="", encoding="utf-8") as handle:
        try:
            lines = ((n, row) for n, row in enumerate(csv.reader(handle), start=1) if row)
            first = next(lines, None)
            if first is None:
                return
            if header is None:
                header = not any(_is_number(field) for field in first[1])
            if not header:
                yield first
            yield from lines
        except (csv.Error, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not a readable UTF-8 CSV file ({error})") from None


def _csv_chunk(path: Path, block: list[tuple[int, list[str]]], width: int | None) -> Rows:
    try:
        chunk = np.array([row for _, row in block], dtype=np.float64)
    except ValueError:
        chunk = None  # find the line to blame, row by row (only on the error path)
    if chunk is None or chunk.ndim != 2 or (width is not None and chunk.shape[1] != width):
        _raise_csv_error(path, block, width)
    _check_finite(path, chunk, [number for number, _ in block], "line")
    return chunk


def _raise_csv_error(path: Path, block: list[tuple[int, list[str]]], width: int | None) -> NoReturn:
    width = width if width is not None else len(block[0][1])
    for number, row in block:
        if len(row) != width:
            raise ConfigError(
                f"{path}, line {number}: {len(row)} values where earlier rows have {width}; "
                "every row needs the same number of columns"
            )
        for column, field in enumerate(row, start=1):
            if not _is_number(field):
                raise ConfigError(
                    f"{path}, line {number}, column {column}: {field!r} is not a number; "
                    "CSV files must hold numeric columns only"
                )
    raise ConfigError(f"{path}: lines {block[0][0]}-{block[-1][0]} cannot be read as numbers")


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# JSON Lines


def read_jsonl(path: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """Rows (lines holding a list of numbers) and ready requests (lines holding an object)."""
    pending: list[list[float]] = []
    numbers: list[int] = []
    width: int | None = None
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            item = _parse_jsonl_line(path, number, line)
            if isinstance(item, ReadyRequest):
                if pending:
                    yield _jsonl_chunk(path, pending, numbers, width)
                    pending, numbers = [], []
                yield item
                continue
            width = _check_width(path, number, len(item), width)
            pending.append(item)
            numbers.append(number)
            if len(pending) == chunk_rows:
                yield _jsonl_chunk(path, pending, numbers, width)
                pending, numbers = [], []
    if pending:
        yield _jsonl_chunk(path, pending, numbers, width)


def _parse_jsonl_line(path: Path, number: int, line: bytes) -> list[float] | ReadyRequest:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{path}, line {number}: not valid JSON ({error})") from None
    if isinstance(value, dict):
        request_id = value.get("id")
        known_id = request_id if isinstance(request_id, str) else None
        return ReadyRequest(line.strip(), known_id, number)
    if isinstance(value, list) and value and all(_is_json_number(v) for v in value):
        return value
    raise ConfigError(
        f"{path}, line {number}: expected a list of numbers (one row) or an object (a V2 request), "
        f"got {line.strip()[:60]!r}"
    )


def _is_json_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_width(path: Path, number: int, length: int, width: int | None) -> int:
    if width is not None and length != width:
        raise ConfigError(
            f"{path}, line {number}: {length} values where earlier rows have {width}; "
            "every row needs the same number of columns"
        )
    return length


def _jsonl_chunk(path: Path, rows: list[list[float]], numbers: list[int], width: int | None) -> Rows:
    chunk = np.array(rows, dtype=np.float64).reshape(len(rows), width or 0)
    _check_finite(path, chunk, numbers, "line")
    return chunk


# ---------------------------------------------------------------------------------------------
# npy


def read_npy(path: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Rows]:
    """Rows of a 2-D `.npy` array, read one chunk at a time from the file (not memory-mapped, so that
    the pages read do not stay in the process's resident memory)."""
    with path.open("rb") as handle:
        shape, fortran_order, dtype = _npy_header(path, handle)
        if len(shape) != 2:
            raise ConfigError(f"{path}: holds an array of shape {shape}; a 2-D array (rows, features) is needed")
        if dtype.kind not in "biuf":
            raise ConfigError(f"{path}: holds {dtype} values; numbers are needed")
        if fortran_order:  # column-major: a chunk of rows is not contiguous in the file
            yield from _npy_chunks_mapped(path, chunk_rows)
            return
        rows, width = shape
        _check_npy_size(path, handle, rows * width * dtype.itemsize, rows)
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            flat = np.fromfile(handle, dtype=dtype, count=count * width)
            if flat.size != count * width:
                raise ConfigError(f"{path}: ends after {start + flat.size // max(width, 1)} of its {rows} rows")
            chunk = flat.reshape(count, width).astype(np.float64, copy=False)
            _check_finite(path, chunk, range(start, start + count), "row")
            yield chunk


def _npy_header(path: Path, handle: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The shape, order and dtype of a `.npy` file (the handle is left at the first value)."""
    try:
        major, _ = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(handle)
    except (ValueError, OSError) as error:
        raise ConfigError(f"{path}: not a readable .npy array ({error})") from None
    if dtype.hasobject:
        raise ConfigError(f"{path}: not a readable .npy array (it holds Python objects, which need pickle)")
    return shape, fortran_order, dtype


def _check_npy_size(path: Path, handle: BinaryIO, data_bytes: int, rows: int) -> None:
    """Refuse a file cut short before any of its rows is read (a copy interrupted)."""
    held = path.stat().st_size - handle.tell()
    if held < data_bytes:
        whole = held * rows // data_bytes if data_bytes else 0
        raise ConfigError(f"{path}: ends after {whole} of its {rows} rows ({held} of {data_bytes} bytes of data)")


def _npy_chunks_mapped(path: Path, chunk_rows: int) -> Iterator[Rows]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ConfigError(f"{path}: not a readable .npy array ({error})") from None
    for start in range(0, array.shape[0], chunk_rows):
        chunk = np.asarray(array[start : start + chunk_rows], dtype=np.float64)
        _check_finite(path, chunk, range(start, start + len(chunk)), "row")
        yield chunk


# ---------------------------------------------------------------------------------------------
# Parquet


def read_parquet(path: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Rows]:
    """Rows of a Parquet file's columns, `chunk_rows` at a time (never the whole file)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'streamscore[parquet]'") from None
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise ConfigError(f"{path}: not a readable Parquet file ({error})") from None
    for field in file.schema_arrow:
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_boolean(field.type)):
            raise ConfigError(f"{path}: column {field.name!r} holds {field.type}; every column must be numeric")
    start = 0
    for batch in file.iter_batches(batch_size=chunk_rows):
        columns = [column.cast(pa.float64()).to_numpy(zero_copy_only=False) for column in batch.columns]  # null: NaN
        chunk = np.column_stack(columns) if columns else np.empty((batch.num_rows, 0))
        _check_finite(path, chunk, range(start, start + len(chunk)), "row")
        start += len(chunk)
        yield chunk


# ---------------------------------------------------------------------------------------------
# Shared


def _check_finite(path: Path, chunk: Rows, positions: Iterable[int], what: str) -> None:
    finite = np.isfinite(chunk)
    if finite.all():
        return
    row, column = (int(i) for i in np.argwhere(~finite)[0])
    position = list(positions)[row]
    raise ConfigError(
        f"{path}, {what} {position}, column {column + 1}: {chunk[row, column]} is not a finite "
        "number; NaN and Infinity cannot travel in V2 JSON, fill or drop them first"
    )


def _blocks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block
