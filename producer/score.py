"""`streamscore score`: publish a file's rows, gather their results and dead letters, write them in row order.

One command for `produce` then `collect`, resumable. Request ids are derived from the file's content
and the request settings (`producer.scoring` states the rule and its limits); on start the results
and dead-letter topics are read to their end, and only the requests with no answer there are
published. The file is read a chunk at a time (10,000 rows, rounded to whole requests); per
request only collect's 13 bytes of bookkeeping are kept, the answers are spooled to disk.

The output is collect's (`--out scored.csv` or `.jsonl`, dead letters in `<out>.dead.jsonl`);
at the end a summary with the dead letters by reason.

Exit codes: 0 every request answered and the dead-letter share at most --max-failures; 1 broker
failure, or --timeout seconds without an answer (ids missing); 2 bad input; 3 the share of
dead letters passed --max-failures (the output is written all the same).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from producer.cli import CONNECTION_FIELDS, DEFAULT_DATATYPE, add_connection_flags, positive_int, quiet_client_logs
from producer.client import FeatureProducer
from producer.files import FORMATS, ReadyRequest, Rows, read_chunks
from producer.ledger import Collector, Expected, Summary, output_path
from producer.progress import ScoreProgress, make_progress
from producer.scoring import (
    JobShape,
    chunk_rows_for,
    describe_reasons,
    job_prefix,
    plan_chunk,
    reasons_of,
    too_many_failures,
)
from schemas.errors import ConfigError, TransientError
from schemas.records import Record
from schemas.tensors import DATATYPES
from schemas.topics import DEFAULT_INPUT_TOPIC, DEFAULT_RESULTS_TOPIC, dead_letter_topic_of
from transport.connection import DEFAULT_BOOTSTRAP_SERVERS, Connection, start_client
from transport.reading import TopicReader, behind

PROG = "streamscore score"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_FAILURES = 0.0
CATCH_UP_IDLE_S = 5.0  # reading the topics' backlog ends at their end offsets, or after this long without a record
POLL_MS = 200
EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_FAILURES = 0, 1, 2, 3


@dataclass(frozen=True)
class ScoreOptions:
    """What `score` does, read once from the parsed flags."""

    file: Path
    out: Path
    shape: JobShape = field(default_factory=JobShape)
    format: str | None = None
    topic: str = DEFAULT_INPUT_TOPIC
    results_topic: str = DEFAULT_RESULTS_TOPIC
    dead_letter_topic: str = dead_letter_topic_of(DEFAULT_INPUT_TOPIC)
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    max_failures: float = DEFAULT_MAX_FAILURES
    timeout_s: float = DEFAULT_TIMEOUT_S
    bar: bool = False
    connection: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScoreOptions:
        out = output_path(args.out)
        shape = JobShape(args.rows_per_request, args.model, args.model_version, args.input_name, args.datatype)
        return cls(
            file=Path(args.input),
            out=out,
            shape=shape,
            format=args.format,
            topic=args.topic,
            results_topic=args.results_topic,
            dead_letter_topic=args.dead_letter_topic or "",
            bootstrap_servers=args.bootstrap_servers,
            max_failures=args.max_failures,
            timeout_s=args.timeout,
            bar=sys.stderr.isatty(),
            connection={name: value for name in CONNECTION_FIELDS if (value := getattr(args, name, None))},
        )

    @property
    def chunk_rows(self) -> int:
        return chunk_rows_for(self.shape.rows_per_request)

    def rows(self) -> Iterator[Rows]:
        """The file's rows, a chunk at a time; ready requests (JSON objects) are refused."""
        if self.file.suffix.lower() == ".parquet" and self.format is None:
            raise ConfigError(f"{self.file}: Parquet input is not supported yet; convert it to .npy or .csv")
        for chunk in read_chunks(self.file, self.format, chunk_rows=self.chunk_rows):
            if isinstance(chunk, ReadyRequest):
                raise ConfigError(
                    f"{self.file}, line {chunk.line}: a ready V2 request; score sends rows only "
                    "(send ready requests with `streamscore produce` and gather them with `collect`)"
                )
            yield chunk


@dataclass
class Outcome:
    """What a run did: the collect summary, how many requests it published, the verdict."""

    summary: Summary
    published: int = 0
    answered_before: int = 0
    reasons: str = ""
    failed: bool = False

    def describe(self, out: Path) -> str:
        lines = [
            f"published {self.published} of {self.summary.expected} requests "
            f"({self.answered_before} were answered already)",
            self.summary.describe(out),
        ]
        return "\n".join(lines + ([self.reasons] if self.reasons else []))


async def score(options: ScoreOptions, *, progress_stream: TextIO | None = None) -> Outcome:
    """Score the file of `options`: catch up on answers, publish the rest, wait, write; return what happened."""
    count = _count_requests(options)  # also: an unreadable file fails before connecting
    expected = Expected(job_prefix(options.file, options.shape), count, options.shape.rows_per_request)
    started = time.monotonic()
    collector = Collector(expected, options.out)
    try:
        async with _Answers(options, collector) as answers, _producer(options) as producer:
            before = collector.ledger.settled
            progress = make_progress(progress_stream or sys.stderr, count, before, bar=options.bar)
            try:
                published = await _publish_and_wait(options, collector, answers, producer, progress)
            finally:
                progress.close()
        collector.write()
        outcome = Outcome(collector.summary(time.monotonic() - started), published, before)
    finally:
        collector.close()
    return _judge(outcome, options)


def _count_requests(options: ScoreOptions) -> int:
    rows = sum(len(chunk) for chunk in options.rows())
    if not rows:
        raise ConfigError(f"{options.file}: holds no rows")
    return -(-rows // options.shape.rows_per_request)


def _judge(outcome: Outcome, options: ScoreOptions) -> Outcome:
    dead_path = options.out.with_name(options.out.name + ".dead.jsonl")
    if outcome.summary.dead_letters and dead_path.exists():
        with dead_path.open("rb") as lines:
            outcome.reasons = describe_reasons(reasons_of(lines))
    outcome.failed = too_many_failures(outcome.summary.dead_letters, outcome.summary.expected, options.max_failures)
    return outcome


async def _publish_and_wait(
    options: ScoreOptions, collector: Collector, answers: _Answers, producer: FeatureProducer, progress: ScoreProgress
) -> int:
    """Publish the unanswered requests while reading answers; return how many were published."""
    sent = [0]
    publishing = asyncio.create_task(_publish(options, collector, producer, sent))
    last_progress = time.monotonic()
    try:
        while not collector.done:
            if publishing.done():
                publishing.result()  # a failed send ends the run here
            if await answers.poll() or not publishing.done():
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress >= options.timeout_s:
                break
            progress.update(collector.ledger.settled, sent[0])
        await publishing
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
    progress.update(collector.ledger.settled, sent[0])
    return sent[0]


async def _publish(options: ScoreOptions, collector: Collector, producer: FeatureProducer, sent: list[int]) -> None:
    """Send, chunk by chunk, the requests the ledger has no answer for (as it stood after catching up)."""
    answered = collector.ledger.state != 0
    first_row, rpr = 0, options.shape.rows_per_request
    for chunk in options.rows():
        plan = plan_chunk(answered, first_row, len(chunk), rpr)
        if not plan.empty:
            ids = [collector.expected.id_of(int(n)) for n in plan.numbers]
            await producer.send_rows(chunk[plan.rows], ids=ids, rows_per_request=rpr)
            sent[0] += len(ids)
        first_row += len(chunk)


def _producer(options: ScoreOptions) -> FeatureProducer:
    shape = options.shape
    return FeatureProducer(
        options.bootstrap_servers,
        options.topic,
        model=shape.model,
        model_version=shape.model_version,
        input_name=shape.input_name,
        datatype=shape.datatype,
        **options.connection,
    )


class _Answers:
    """The results and dead-letter topics, read from their beginning into a collector.

    On entry it reads up to the end offsets of that moment (the answers of earlier runs), then
    `poll` keeps reading what arrives. A dead-letter topic that does not exist is not read.
    """

    def __init__(self, options: ScoreOptions, collector: Collector) -> None:
        self._options, self._collector = options, collector
        connection = Connection(bootstrap_servers=options.bootstrap_servers, **options.connection)
        self._reader = TopicReader(
            connection.kafka_options(), isolation_level="read_committed", client_id="streamscore-score"
        )

    async def __aenter__(self) -> _Answers:
        await start_client(self._reader, self._options.bootstrap_servers)
        try:
            await self._catch_up()
        except BaseException:
            await self._reader.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._reader.stop()

    async def poll(self) -> bool:
        """Read what arrived (up to POLL_MS); whether it answered a request that had no answer."""
        settled = self._collector.ledger.settled
        for records in (await self._reader.getmany(timeout_ms=POLL_MS)).values():
            self._feed(records)
        return self._collector.ledger.settled > settled

    async def _catch_up(self) -> None:
        partitions = await self._partitions()
        self._reader.assign(partitions)
        await self._reader.seek_to_beginning(*partitions)
        ends = dict(await self._reader.end_offsets(partitions))
        loop = asyncio.get_running_loop()
        last = loop.time()
        # An open transaction holds a read_committed reader short of the end offset: stop when idle.
        while await behind(self._reader, ends) and loop.time() - last < CATCH_UP_IDLE_S:
            fetched = await self._reader.getmany(timeout_ms=POLL_MS)
            for records in fetched.values():
                self._feed(records)
            if fetched:
                last = loop.time()

    async def _partitions(self) -> list[TopicPartition]:
        options = self._options
        found: list[TopicPartition] = []
        for topic in (options.results_topic, options.dead_letter_topic):
            numbers = sorted(await self._reader.partitions_of(topic)) if topic else []
            if topic == options.results_topic and not numbers:
                raise ConfigError(f"results topic {topic} does not exist; create it (streamscore broker create-topics)")
            found.extend(TopicPartition(topic, n) for n in numbers)
        return found

    def _feed(self, records: list[Record]) -> None:
        for record in records:
            if record.topic == self._options.results_topic:
                self._collector.add_result(record.key, record.value, record.headers)
            else:
                self._collector.add_dead_letter(record.key, record.value, record.headers)


# ---------------------------------------------------------------------------------------------
# CLI


def failure_share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `score` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "score",
        allow_abbrev=False,  # `--sasl-password` must not pass for `--sasl-password-file`
        help="score a file in one command: publish its rows, write the predictions in row order (resumable)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("input", type=Path, help="the rows to score (.csv, .jsonl of lists, .npy; .parquet with streamscore[parquet])")
    add("--out", required=True, type=Path, help="scored.csv or scored.jsonl (format from the extension)")
    add("--model", help="the model to score with (header streamscore-model; default: the worker's)")
    add("--model-version", help="pin a model version")
    add("--rows-per-request", type=positive_int, default=1, help="rows in each request (default: 1)")
    share_help = "the share (0..1) of requests that may be dead-lettered; past it exit 3 (default: %(default)s)"
    add("--max-failures", type=failure_share, default=DEFAULT_MAX_FAILURES, help=share_help)
    add("--format", choices=FORMATS, help="the input format (default: from the extension)")
    add("--input-name", default="x", help="the model input the rows feed (default: x)")
    add("--datatype", default=DEFAULT_DATATYPE, choices=[d for d in DATATYPES if d != "BYTES"])
    add("--topic", default=DEFAULT_INPUT_TOPIC, help="the input topic (default: %(default)s)")
    add("--results-topic", default=DEFAULT_RESULTS_TOPIC, help="default: %(default)s")
    add("--dead-letter-topic", default=dead_letter_topic_of(DEFAULT_INPUT_TOPIC), help="default: %(default)s")
    add("--bootstrap-servers", default=DEFAULT_BOOTSTRAP_SERVERS, help="default: %(default)s")
    add("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="give up after S seconds without a new answer")
    add_connection_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out `score`; print the summary; return the exit code."""
    try:
        options = ScoreOptions.from_args(args)
    except ConfigError as error:
        return _fail(str(error), EXIT_INPUT)
    quiet_client_logs()
    try:
        outcome = asyncio.run(score(options))
    except ConfigError as error:
        return _fail(str(error), EXIT_INPUT)
    except (TransientError, KafkaError) as error:
        return _fail(f"broker failure: {error}; run the same command again to resume", EXIT_INCOMPLETE)
    print(outcome.describe(options.out))
    summary = outcome.summary
    if summary.missing_count:
        shown = ", ".join(summary.missing) + (" ..." if summary.missing_count > len(summary.missing) else "")
        message = f"gave up after {options.timeout_s:g} s without an answer: {summary.missing_count} requests missing"
        return _fail(f"{message} ({shown}); run the same command again to resume", EXIT_INCOMPLETE)
    if outcome.failed:
        share = summary.dead_letters / summary.expected
        message = f"{share:.2%} of requests were dead-lettered, over --max-failures {options.max_failures:g}"
        return _fail(message, EXIT_FAILURES)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code
