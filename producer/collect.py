"""`streamscore collect`: gather the results (and dead letters) of one batch into one file.

Reads the results and dead-letter topics from the beginning (no consumer group), keeps the
records whose request id is `<id-prefix>-<row index>` for an expected id, drops repeats (the
first wins; a later result replaces a dead letter, as after a replay), stops once every expected
id has a result or a dead letter, and writes the results sorted by row index:

    .jsonl  one object per request: {"id", "model_version", <output name>: <data in its shape>}
            (an output called "id" or "model_version" is written as "output_id", ...)
    .csv    one line per input row: id, row, model_version, then each output's values of that
            row; a request of k rows gives k lines (row = first row + 0..k-1); an output of
            w values per row gives columns <name>_0 .. <name>_<w-1> (C order of its trailing
            dimensions), or just <name> when w is 1; null (a non-finite value) is an empty cell

A result with binary outputs (Triton's binary tensor data extension, its JSON header's length in
the record header `inference-header-content-length`) is written as its JSON form would be.

Dead letters (and results that cannot be read or do not fit the CSV columns of the first
result, stage "collect") go to `<out>.dead.jsonl`: {"key", "row", "stage", "error", "message"}.

`--timeout S` gives up after S seconds in which no expected id was answered and no record
written before the start was read (a backlog of earlier batches keeps it reading).

Exit codes: 0 every id accounted for, 1 timeout (ids missing) or broker failure, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from producer.cli import CONNECTION_FIELDS, PROGRESS_INTERVAL_S, add_connection_flags, positive_int, quiet_client_logs
from producer.files import ReadyRequest, read_chunks
from producer.ledger import Collector, Expected, Summary, output_path
from schemas.errors import ConfigError, TransientError
from schemas.records import Record
from schemas.topics import DEFAULT_INPUT_TOPIC, DEFAULT_RESULTS_TOPIC, dead_letter_topic_of
from transport.connection import DEFAULT_BOOTSTRAP_SERVERS, Connection, start_client

PROG = "streamscore collect"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_DEAD_LETTER_TOPIC = dead_letter_topic_of(DEFAULT_INPUT_TOPIC)
POLL_MS = 200
EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Expected requests


def count_requests(path: Path, rows_per_request: int) -> int:
    """How many requests produce makes of the rows in `path` (read in chunks, not kept)."""
    rows = 0
    for chunk in read_chunks(path):
        if isinstance(chunk, ReadyRequest):
            raise ConfigError(f"{path}, line {chunk.line}: holds ready requests; pass --expect N instead")
        rows += len(chunk)
    return math.ceil(rows / rows_per_request)


# ---------------------------------------------------------------------------------------------
# The loop


class RecordSource(Protocol):
    """The part of `AIOKafkaConsumer` the loop uses (a fake stands in for tests)."""

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[Any, Any]: ...  # fmt: skip


@dataclass(frozen=True)
class CollectOptions:
    """What `collect` does, read once from the parsed flags."""

    expected: Expected
    out: Path
    results_topic: str = DEFAULT_RESULTS_TOPIC
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC  # empty: read no dead letters
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    timeout_s: float = DEFAULT_TIMEOUT_S
    progress: bool = False
    connection: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CollectOptions:
        """Options from the flags; counts the rows of `--from-file` (a ConfigError if unreadable)."""
        out = output_path(args.out)
        prefix = args.id_prefix or (Path(args.from_file).stem if args.from_file else None)
        if not prefix:
            raise ConfigError("--id-prefix is required with --expect (produce's default is the file's stem)")
        count = args.expect or count_requests(Path(args.from_file), args.rows_per_request)
        return cls(
            expected=Expected(prefix, count, args.rows_per_request),
            out=out,
            results_topic=args.results_topic,
            dead_letter_topic=args.dead_letter_topic or "",
            bootstrap_servers=args.bootstrap_servers,
            timeout_s=args.timeout,
            progress=args.progress or sys.stderr.isatty(),
            connection={name: value for name in CONNECTION_FIELDS if (value := getattr(args, name, None))},
        )


async def collect(
    options: CollectOptions,
    *,
    source: RecordSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress_stream: TextIO | None = None,
) -> Summary:
    """Read until every expected id is answered or `timeout_s` pass without progress; write the files."""
    started = clock()
    collector = Collector(options.expected, options.out)
    progress = _Progress(progress_stream or sys.stderr, options.progress, options.expected.count, clock)
    try:
        if source is not None:
            await _drain(source, collector, options, clock, progress)
        else:
            consumer = await _start_consumer(options)
            try:
                await _drain(consumer, collector, options, clock, progress)
            finally:
                await consumer.stop()
        progress.close()
        collector.write()
        return collector.summary(clock() - started)
    finally:
        collector.close()


async def _drain(
    source: RecordSource, collector: Collector, options: CollectOptions, clock: Callable[[], float], progress: _Progress
) -> None:
    """Feed records to `collector` until it is done, or `timeout_s` pass without progress.

    Progress is a newly answered id, or any record written before we started (the backlog of
    earlier batches may sit ahead of ours); records of other batches arriving live are not.
    """
    started_ms, last_progress = time.time() * 1000, clock()
    while not collector.done:
        settled, backlog = collector.ledger.settled, False
        batches = await source.getmany(timeout_ms=POLL_MS)
        for records in batches.values():
            backlog |= _feed(collector, records, options.results_topic, started_ms)
        if collector.ledger.settled > settled or backlog:
            last_progress = clock()
            progress.update(collector.ledger.settled)
        elif clock() - last_progress >= options.timeout_s:
            return


def _feed(collector: Collector, records: Sequence[Record], results_topic: str, started_ms: float) -> bool:
    """Hand records to `collector`; whether any was written before `started_ms`."""
    for record in records:
        if record.topic == results_topic:
            collector.add_result(record.key, record.value, record.headers)
        else:
            collector.add_dead_letter(record.key, record.value, record.headers)
    return bool(records) and records[0].timestamp < started_ms


async def _start_consumer(options: CollectOptions) -> AIOKafkaConsumer:
    topics = [t for t in (options.results_topic, options.dead_letter_topic) if t]
    consumer = AIOKafkaConsumer(
        *topics,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        metadata_max_age_ms=5000,  # notice a dead-letter topic created while we wait
        client_id="streamscore-collect",
        **Connection(bootstrap_servers=options.bootstrap_servers, **options.connection).kafka_options(),
    )
    await start_client(consumer, options.bootstrap_servers)
    return consumer


class _Progress:
    """`collected n of N ids` on one line, rewritten at most every PROGRESS_INTERVAL_S."""

    def __init__(self, stream: TextIO, enabled: bool, total: int, clock: Callable[[], float]) -> None:
        self._stream, self._enabled, self._total, self._clock = stream, enabled, total, clock
        self._started, self._shown_at = clock(), -math.inf

    def update(self, done: int) -> None:
        now = self._clock()
        if self._enabled and now - self._shown_at >= PROGRESS_INTERVAL_S:
            rate = done / (now - self._started) if now > self._started else 0.0
            self._stream.write(f"\rcollected {done:,} of {self._total:,} ids ({rate:,.0f} ids/s)")
            self._stream.flush()
            self._shown_at = now

    def close(self) -> None:
        if self._shown_at > -math.inf:
            self._stream.write("\n")
            self._stream.flush()


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `collect` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "collect",
        allow_abbrev=False,  # `--sasl-password` must not pass for `--sasl-password-file`
        help="gather the results and dead letters of a produced batch into a .jsonl or .csv file",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("--id-prefix", help="collect ids <id-prefix>-<row index> (default with --from-file: its stem)")
    count = parser.add_mutually_exclusive_group(required=True)
    count.add_argument("--expect", type=positive_int, help="how many request ids to wait for")
    count.add_argument("--from-file", type=Path, help="the file produce sent: wait for one id per request")
    add("--rows-per-request", type=positive_int, default=1, help="as given to produce (default: 1)")
    add("--out", required=True, type=Path, help="results.jsonl or results.csv (format from the extension)")
    add("--results-topic", default=DEFAULT_RESULTS_TOPIC, help="default: %(default)s")
    add("--dead-letter-topic", default=DEFAULT_DEAD_LETTER_TOPIC, help="default: %(default)s; '' for none")
    add("--bootstrap-servers", default=DEFAULT_BOOTSTRAP_SERVERS, help="default: %(default)s")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="give up after S seconds without a new id")
    add("--progress", action="store_true", help="show progress on stderr even when not a TTY")
    add_connection_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out `collect`: read, write the files, print a summary; return the exit code."""
    try:
        options = CollectOptions.from_args(args)
    except ConfigError as error:
        _fail(str(error))
        return EXIT_INPUT
    quiet_client_logs()
    try:
        summary = asyncio.run(collect(options))
    except ConfigError as error:
        _fail(str(error))
        return EXIT_INPUT
    except (TransientError, KafkaError) as error:
        _fail(f"reading {options.results_topic} failed: {error}")
        return EXIT_INCOMPLETE
    print(summary.describe(options.out))
    if summary.missing_count:
        shown = ", ".join(summary.missing) + (" ..." if summary.missing_count > len(summary.missing) else "")
        _fail(
            f"gave up after {options.timeout_s:g} s without progress: {summary.missing_count} ids have "
            f"neither a result nor a dead letter ({shown}); {options.out} holds the rest"
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
