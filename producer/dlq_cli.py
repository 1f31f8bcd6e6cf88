"""`streamscore dlq inspect | replay`: count, show and replay the dead letters of a dead-letter topic.

Both read the topic (default `<input>.DLT`) up to its end offsets as of the start, with
`read_committed`, and select with the same filters: `--stage`, `--error`, `--model`,
`--model-version`, `--since`/`--until` (the dead letter's timestamp), `--partition` and
`--offsets A-B` (of the dead-letter topic). `inspect` prints counts by stage, error class,
model version and hour, and `--show K` dead letters decoded. `replay` sends each selected dead
letter's original key, value and headers back to its original topic (or `--to`), with the
dead-letter headers dropped and `streamscore-replay-count` added (a record dead-lettered from a retry
topic goes back to its input topic, its retry headers dropped); it skips a dead letter that
lacks part of its original, refuses one replayed `--max-replays` times already, and returns once
the broker acknowledged every record (an idempotent producer, acks=all). With `--guarantee
exactly-once` (or STREAMSCORE_GUARANTEE=exactly-once, or `--transactional-id`) the replay is one
transaction: all or nothing.

Exit codes: 0 done (every record sent was acknowledged), 1 a broker failure or a record not
acknowledged, 2 bad input (flags, a missing topic).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from aiokafka.errors import KafkaError

from producer.cli import CONNECTION_FIELDS, PROGRESS_INTERVAL_S, add_connection_flags, positive_int, quiet_client_logs
from producer.dlq import DEFAULT_MAX_REPLAYS, Filters, parse_offsets, parse_time
from producer.dlq_kafka import DEFAULT_DEAD_LETTER_TOPIC, ReplayOptions, Source, inspect, replay
from producer.dlq_report import describe_failures, inspect_json, render_counts, render_letter, render_outcome
from schemas.errors import ConfigError, TransientError
from transport.connection import AT_LEAST_ONCE, DEFAULT_BOOTSTRAP_SERVERS, EXACTLY_ONCE, GUARANTEES

PROG = "streamscore dlq"
DEFAULT_TRANSACTIONAL_ID_PREFIX = "streamscore"  # when STREAMSCORE_TRANSACTIONAL_ID_PREFIX is empty
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def source_from_args(args: argparse.Namespace) -> Source:
    """The dead letters the flags select; a ConfigError for filters that cannot hold together."""
    if args.offsets is not None and args.partition is None:
        raise ConfigError("--offsets needs --partition: offsets count within one partition")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ConfigError("--since must be before --until")
    filters = Filters(
        stages=frozenset(args.stage or ()),
        errors=frozenset(args.error or ()),
        model=args.model,
        model_version=args.model_version,
        since_ms=args.since,
        until_ms=args.until,
        partition=args.partition,
        offsets=args.offsets,
    )
    return Source(
        topic=args.topic,
        bootstrap_servers=args.bootstrap_servers,
        filters=filters,
        limit=getattr(args, "limit", None),
        from_beginning=getattr(args, "from_beginning", False),
        connection={name: value for name in CONNECTION_FIELDS if (value := getattr(args, name, None))},
    )


def replay_options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """How `replay` sends, from its flags: exactly-once in a transaction named by --transactional-id,
    else `<prefix>-dlq-replay-<dead-letter topic>`; a ConfigError for a guarantee that does not exist."""
    if args.guarantee not in GUARANTEES:
        raise ConfigError(f"STREAMSCORE_GUARANTEE must be {' or '.join(GUARANTEES)}, not {args.guarantee!r}")
    transactional_id = args.transactional_id
    if transactional_id is None and args.guarantee == EXACTLY_ONCE:
        transactional_id = replay_transactional_id(args.transactional_id_prefix, args.topic)
    return ReplayOptions(args.to, args.dry_run, args.max_replays, transactional_id)


def replay_transactional_id(prefix: str, dead_letter_topic: str) -> str:
    """One id per dead-letter topic, never a worker's (`<prefix>-<input topic>-<partition>`): a second
    replay of the topic fences the first, and a replay that died mid-transaction is aborted by the next
    one's start rather than at the broker's transaction timeout."""
    return f"{prefix or DEFAULT_TRANSACTIONAL_ID_PREFIX}-dlq-replay-{dead_letter_topic}"


class ReadProgress:
    """`read n of N dead letters` on one line, rewritten at most every PROGRESS_INTERVAL_S."""

    def __init__(self, stream: TextIO, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream, self._enabled, self._clock = stream, enabled, clock
        self._started, self._shown_at = clock(), -float("inf")

    def update(self, read: int, total: int) -> None:
        now = self._clock()
        if self._enabled and now - self._shown_at >= PROGRESS_INTERVAL_S:
            rate = read / (now - self._started) if now > self._started else 0.0
            self._stream.write(f"\rread {read:,} of {total:,} dead letters ({rate:,.0f}/s)")
            self._stream.flush()
            self._shown_at = now

    def close(self) -> None:
        """End the line, once, so what follows starts on a line of its own."""
        if self._shown_at > -float("inf"):
            self._stream.write("\n")
            self._stream.flush()
            self._shown_at = -float("inf")


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add `dlq inspect` and `dlq replay` to `subparsers`; return both (a caller sets their defaults)."""
    dlq: argparse.ArgumentParser = subparsers.add_parser(
        "dlq", help="count, show and replay dead letters", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect_parser = commands.add_parser(
        "inspect", allow_abbrev=False, help="count dead letters by stage, error, model version and hour; show some"
    )
    replay_parser = commands.add_parser(
        "replay", allow_abbrev=False, help="send dead letters back to their original topic, unchanged"
    )
    for parser in (inspect_parser, replay_parser):
        _add_source_flags(parser)
    add = inspect_parser.add_argument
    add("--limit", type=positive_int, help="read at most N dead letters of each partition (the last N)")
    add("--from-beginning", action="store_true", help="with --limit: the first N of each partition")
    add("--show", type=_count, default=0, metavar="K", help="print K of the selected dead letters decoded")
    add("--json", action="store_true", help="print the counts (and the dead letters shown) as JSON")
    add = replay_parser.add_argument
    add("--to", help="send to this topic instead of each dead letter's original topic")
    add("--dry-run", action="store_true", help="read and decide, send nothing")
    add("--max-replays", type=positive_int, default=DEFAULT_MAX_REPLAYS, help="refuse records replayed N times")
    add(
        "--guarantee",
        choices=GUARANTEES,
        help="at-least-once: each record acknowledged; exactly-once: one transaction, all or none "
        "(default: %(default)s, as STREAMSCORE_GUARANTEE)",
    )
    add("--transactional-id", help="the exactly-once replay's transactional id (implies --guarantee exactly-once)")
    replay_parser.set_defaults(guarantee=AT_LEAST_ONCE, transactional_id_prefix="")  # the environment's, if set
    return inspect_parser, replay_parser


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--topic", default=DEFAULT_DEAD_LETTER_TOPIC, help="the dead-letter topic (default: %(default)s)")
    add("--bootstrap-servers", default=DEFAULT_BOOTSTRAP_SERVERS, help="default: %(default)s")
    add("--stage", action="append", help="decode, validate, infer or produce (repeat for any of several)")
    add("--error", action="append", help="an error class, e.g. ValidationError (repeat for any of several)")
    add("--model", help="dead letters of this model (streamscore-dlt-model)")
    add("--model-version", help="dead letters of this model version (streamscore-dlt-model-version)")
    add("--since", type=_time, help="dead letters written at or after: ISO time (UTC unless it says) or epoch ms")
    add("--until", type=_time, help="dead letters written before: ISO time or epoch ms")
    add("--partition", type=_count, help="only this partition of the dead-letter topic")
    add("--offsets", type=_offsets, metavar="A-B", help="only these offsets of --partition (A-B inclusive, A-, A)")
    add("--progress", action="store_true", help="show reading progress on stderr even when not a TTY")
    add_connection_flags(parser)


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _offsets(text: str) -> tuple[int, int | None]:
    try:
        return parse_offsets(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Carry out `dlq inspect` or `dlq replay`; return the exit code."""
    try:
        source = source_from_args(args)
    except ConfigError as error:
        _fail(args, str(error))
        return EXIT_INPUT
    quiet_client_logs()
    progress = ReadProgress(sys.stderr, args.progress or sys.stderr.isatty())
    try:
        if args.dlq_command == "inspect":
            return _run_inspect(source, args.show, args.json, progress)
        return _run_replay(source, replay_options_from_args(args), progress)
    except ConfigError as error:
        _fail(args, str(error))
        return EXIT_INPUT
    except TransientError as error:
        _fail(args, str(error))
        return EXIT_FAILED
    except KafkaError as error:
        doing = "reading" if args.dlq_command == "inspect" else "replaying the dead letters of"
        _fail(args, f"{doing} {source.topic} failed: {error!r}; check the broker and run it again")
        return EXIT_FAILED
    finally:
        progress.close()


def _run_inspect(source: Source, show: int, as_json: bool, progress: ReadProgress) -> int:
    found = asyncio.run(inspect(source, show, on_progress=progress.update))
    progress.close()
    if as_json:
        print(inspect_json(found.counts, source.topic, found.shown))
        return EXIT_OK
    print(render_counts(found.counts, source.topic, found.scope))
    for letter in found.shown:
        print(f"\n{render_letter(letter)}")
    return EXIT_OK


def _run_replay(source: Source, options: ReplayOptions, progress: ReadProgress) -> int:
    outcome = asyncio.run(replay(source, options, on_progress=progress.update))
    progress.close()
    print(render_outcome(outcome, dry_run=options.dry_run, max_replays=options.max_replays))
    if outcome.failed or outcome.aborted is not None:
        print(f"{PROG} replay: {describe_failures(outcome, options.transactional_id)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _fail(args: argparse.Namespace, message: str) -> None:
    print(f"{PROG} {args.dlq_command}: {message}", file=sys.stderr)
