"""`streamscore produce`: publish the rows of a CSV, JSON Lines or .npy file as V2 requests.

The main CLI (`streamscore/cli.py`) calls `add_parser(subparsers)` and then `run(args)`. This module
reads flags only; a caller that wants environment-derived defaults sets them on the returned
parser (`parser.set_defaults(bootstrap_servers=..., sasl_password=...)`). Request ids are
`<id-prefix>-<index of the request's first row>`, so a rerun sends the same ids.

Exit codes: 0 sent and acknowledged, 1 broker failure, 2 bad input (file, flags).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiokafka.errors import KafkaError

from producer.client import FeatureProducer, make_ids
from producer.files import DEFAULT_CHUNK_ROWS, FORMATS, Chunk, ReadyRequest, read_chunks
from schemas.errors import ConfigError, TransientError
from schemas.tensors import DATATYPES
from schemas.topics import DEFAULT_INPUT_TOPIC
from transport.connection import CONNECTION_FIELDS as _FIELDS
from transport.connection import DEFAULT_BOOTSTRAP_SERVERS

PROG = "streamscore produce"
DEFAULT_DATATYPE = "FP32"
PROGRESS_INTERVAL_S = 0.2  # at most 5 updates a second
EXIT_OK, EXIT_BROKER, EXIT_INPUT = 0, 1, 2
#: Connection settings read from `args` when present (flags, or defaults set by the caller).
CONNECTION_FIELDS = tuple(name for name in _FIELDS if name != "bootstrap_servers")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `produce` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "produce",
        allow_abbrev=False,  # `--sasl-password` must not pass for `--sasl-password-file`
        help="publish the rows of a CSV, JSON Lines or .npy file as V2 inference requests",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add = parser.add_argument
    add("--file", required=True, type=Path, help="the file to send (.csv, .jsonl, .npy)")
    add("--format", choices=FORMATS, help="the file format (default: from the extension)")
    add("--topic", default=DEFAULT_INPUT_TOPIC, help="the input topic (default: %(default)s)")
    add("--bootstrap-servers", default=DEFAULT_BOOTSTRAP_SERVERS, help="default: %(default)s")
    add("--rows-per-request", type=positive_int, default=1, help="rows in each request")
    add("--input-name", default="x", help="the model input the rows feed (default: x)")
    add("--datatype", default=DEFAULT_DATATYPE, choices=[d for d in DATATYPES if d != "BYTES"])
    add("--binary-outputs", action="store_true", help="ask for the outputs as binary data (Triton's extension)")
    add("--model", help="the model to score with (header streamscore-model)")
    add("--model-version", help="pin a model version (header streamscore-model-version)")
    add("--id-prefix", help="request ids are <id-prefix>-<first row index> (default: file stem)")
    add("--limit", type=positive_int, help="send at most N rows (a ready request counts as 1)")
    add("--progress", action="store_true", help="show progress on stderr even when not a TTY")
    add_connection_flags(parser)
    return parser


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The TLS/SASL flags of a client command (the password comes from the environment only)."""
    parser.add_argument("--security-protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    parser.add_argument("--sasl-mechanism", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    parser.add_argument("--sasl-username")
    parser.add_argument("--sasl-password-file", help="a file holding the SASL password (or STREAMSCORE_SASL_PASSWORD)")
    parser.add_argument("--ssl-cafile")
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")


def run(args: argparse.Namespace) -> int:
    """Carry out `produce`: send the file, print a summary; return the exit code."""
    options = ProduceOptions.from_args(args)
    quiet_client_logs()
    summary = Summary()
    try:
        asyncio.run(produce(options, summary=summary))
    except ConfigError as error:
        _fail(f"{error}{summary.so_far()}")
        return EXIT_INPUT
    except (TransientError, KafkaError) as error:
        _fail(f"sending {options.file} to {options.topic} failed: {error}{summary.so_far()}")
        return EXIT_BROKER
    print(summary.describe(options.topic))
    return EXIT_OK


def quiet_client_logs() -> None:
    """Keep aiokafka's own warnings off stderr when nobody configured logging (no last resort).

    A NullHandler only stops Python's last-resort printing; records still reach the root
    handlers that the caller may have configured.
    """
    client_logger = logging.getLogger("aiokafka")
    if not any(isinstance(h, logging.NullHandler) for h in client_logger.handlers):
        client_logger.addHandler(logging.NullHandler())


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class ProduceOptions:
    """What `produce` does, read once from the parsed flags."""

    file: Path
    topic: str = DEFAULT_INPUT_TOPIC
    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    format: str | None = None
    rows_per_request: int = 1
    input_name: str = "x"
    datatype: str = DEFAULT_DATATYPE
    binary_outputs: bool = False
    model: str | None = None
    model_version: str | None = None
    id_prefix: str = ""
    limit: int | None = None
    progress: bool = False
    connection: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProduceOptions:
        """Options from the namespace `add_parser`'s parser produced."""
        connection = {name: value for name in CONNECTION_FIELDS if (value := getattr(args, name, None))}
        return cls(
            file=Path(args.file),
            topic=args.topic,
            bootstrap_servers=args.bootstrap_servers,
            format=args.format,
            rows_per_request=args.rows_per_request,
            input_name=args.input_name,
            datatype=args.datatype,
            binary_outputs=args.binary_outputs,
            model=args.model,
            model_version=args.model_version,
            id_prefix=args.id_prefix or Path(args.file).stem,
            limit=args.limit,
            progress=args.progress or sys.stderr.isatty(),
            connection=connection,
        )

    @property
    def chunk_rows(self) -> int:
        """Rows read at a time: a multiple of rows_per_request, so chunks never split requests."""
        return self.rows_per_request * max(1, DEFAULT_CHUNK_ROWS // self.rows_per_request)


@dataclass
class Summary:
    """What was sent (and acknowledged)."""

    records: int = 0
    rows: int = 0
    seconds: float = 0.0
    first_id: str | None = None
    last_id: str | None = None

    def add(self, ids: list[str | None], rows: int) -> None:
        if ids:
            self.first_id = self.first_id or ids[0]
            self.last_id = ids[-1]
        self.records += len(ids)
        self.rows += rows

    def so_far(self) -> str:
        """What was acknowledged before a failure, for the error line."""
        if not self.records:
            return ""
        return f" ({self.records} records up to id {self.last_id} were sent and acknowledged)"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def describe(self, topic: str) -> str:
        return (
            f"sent {self.records} records, {self.rows} rows to {topic} in {self.seconds:.2f} s "
            f"({self.rows_per_s:,.0f} rows/s); first id {self.first_id}, last id {self.last_id}"
        )


class Progress:
    """A one-line progress report, rewritten in place at most every `interval` seconds."""

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream, self._enabled, self._interval, self._clock = stream, enabled, interval, clock
        self._started = clock()
        self._shown_at: float | None = None

    def update(self, rows: int) -> None:
        """Show `rows` sent so far, unless the last update was under `interval` ago."""
        now = self._clock()
        if not self._enabled or (self._shown_at is not None and now - self._shown_at < self._interval):
            return
        self._shown_at = now
        rate = rows / (now - self._started) if now > self._started else 0.0
        self._stream.write(f"\rsent {rows:,} rows ({rate:,.0f} rows/s)")
        self._stream.flush()

    def close(self) -> None:
        """End the progress line so what follows starts on a line of its own."""
        if self._shown_at is not None:
            self._stream.write("\n")
            self._stream.flush()


async def produce(
    options: ProduceOptions,
    *,
    summary: Summary | None = None,
    progress_stream: TextIO | None = None,
) -> Summary:
    """Send the file of `options`; return what was sent once every record is acknowledged.

    `summary`, when given, is filled in as records are acknowledged (also when this raises).
    """
    chunks = _limited(read_chunks(options.file, options.format, chunk_rows=options.chunk_rows), options.limit)
    first = next(chunks, None)  # a file that is unreadable from the start fails before connecting
    if first is not None:
        chunks = itertools.chain([first], chunks)
    progress = Progress(progress_stream or sys.stderr, enabled=options.progress)
    summary = summary if summary is not None else Summary()
    started = time.monotonic()
    try:
        async with _make_producer(options) as producer:
            await _send_all(producer, chunks, options, summary, progress)
    finally:
        progress.close()
    summary.seconds = time.monotonic() - started
    return summary


def _make_producer(options: ProduceOptions) -> FeatureProducer:
    return FeatureProducer(
        options.bootstrap_servers,
        options.topic,
        model=options.model,
        model_version=options.model_version,
        input_name=options.input_name,
        datatype=options.datatype,
        binary_outputs=options.binary_outputs,
        id_prefix=options.id_prefix,
        **options.connection,
    )


async def _send_all(
    producer: FeatureProducer,
    chunks: Iterable[Chunk],
    options: ProduceOptions,
    summary: Summary,
    progress: Progress,
) -> None:
    """Send rows chunk by chunk; consecutive ready requests go out together."""
    ready: list[ReadyRequest] = []
    for chunk in chunks:
        if isinstance(chunk, ReadyRequest):
            ready.append(chunk)
            if len(ready) < options.chunk_rows:
                continue
        await _send_ready(producer, ready, options, summary)
        ready = []
        if not isinstance(chunk, ReadyRequest):
            ids = make_ids(options.id_prefix, summary.rows, len(chunk), options.rows_per_request)
            await producer.send_rows(chunk, ids=ids, rows_per_request=options.rows_per_request)
            summary.add(list(ids), len(chunk))
        progress.update(summary.rows)
    await _send_ready(producer, ready, options, summary)


async def _send_ready(
    producer: FeatureProducer,
    ready: list[ReadyRequest],
    options: ProduceOptions,
    summary: Summary,
) -> None:
    """Send ready requests unchanged; one without an id is keyed `<id-prefix>-L<line>`."""
    if not ready:
        return
    keys = [r.id if r.id is not None else f"{options.id_prefix}-L{r.line}" for r in ready]
    sent = await producer.send_requests([r.body for r in ready], keys=keys)
    summary.add(sent, 0)


def _limited(chunks: Iterator[Chunk], limit: int | None) -> Iterator[Chunk]:
    """At most `limit` rows of `chunks` (a ready request counts as one row)."""
    if limit is None:
        yield from chunks
        return
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        if isinstance(chunk, ReadyRequest):
            left -= 1
            yield chunk
        else:
            yield chunk[:left]
            left -= len(chunk)
