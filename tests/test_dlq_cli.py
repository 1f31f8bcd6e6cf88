"""`streamscore dlq` without a broker: the read and send loops on the fakes, the flags, the exit codes."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from producer.dlq import Filters
from producer.dlq_cli import ReadProgress, replay_options_from_args, run, source_from_args
from producer.dlq_kafka import ReplayOptions, Source, inspect, replay
from schemas import headers as h
from schemas.errors import ConfigError, DecodeError, ValidationError
from schemas.records import InputRecord
from streamscore.cli import make_parser
from tests.factories import make_record
from tests.fakes import FakeCluster, FakeProducer, FakeReader
from worker.deadletter import dead_letter_headers, fit

DLT = "requests.DLT"


def write_dead_letter(
    cluster: FakeCluster,
    original: InputRecord,
    error: Exception,
    *,
    partition: int = 0,
    limit: int = 1_048_588,
) -> None:
    """Write the dead letter of `original` to the fake DLT as the worker would."""
    added = dead_letter_headers(
        original, error, stage=type(error).__name__.removesuffix("Error").lower(), group_id="g",
        worker="w", attempts=1, model=("mlp", "2", ""),
    )  # fmt: skip
    key, value, headers = fit(original, added, limit, DLT)
    cluster.append(DLT, value, key=key, headers=headers, partition=partition)


@pytest.fixture
def cluster() -> FakeCluster:
    """requests (2 partitions) and its DLT (2 partitions) holding four dead letters:
    DLT[0]@0 a validate failure, DLT[0]@1 a decode failure, DLT[1]@0 one replayed 3 times before (the cap),
    DLT[1]@1 one whose value did not fit."""
    cluster = FakeCluster()
    cluster.create("requests", partitions=2)
    cluster.create(DLT, partitions=2)
    own = (("traceparent", b"00-1"),)
    write_dead_letter(cluster, make_record(b'{"id": "a"}', key=b"a", offset=3, headers=own), ValidationError("shape"))
    write_dead_letter(cluster, make_record(b"\x00", key=b"b", partition=1, offset=5), DecodeError("not JSON"))
    capped = make_record(b'{"id": "c"}', key=b"c", offset=8, headers=((h.REPLAY_COUNT, b"3"),))
    write_dead_letter(cluster, capped, ValidationError("shape"), partition=1)
    large = make_record(b"v" * 3000, key=b"d", offset=9)
    write_dead_letter(cluster, large, DecodeError("too large"), partition=1, limit=2500)
    return cluster


class ReplayProducer(FakeProducer):
    """A fake producer with batches and transactions: a transaction's records reach the cluster
    only when it commits, as a read_committed reader sees them."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(cluster)
        self.calls: list[str] = []
        self._pending: list[tuple[asyncio.Future[Any], tuple[Any, ...]]] | None = None

    def create_batch(self) -> Any:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._write(future, topic, batch.value, batch.key, partition, batch.headers)
        return future

    async def begin_transaction(self) -> None:
        self.calls.append("begin")
        self._pending = []

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        pending, self._pending = self._pending or [], None
        for future, args in pending:
            super()._write(future, *args)

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        self._pending = None

    def _write(self, future: asyncio.Future[Any], *args: Any) -> None:
        if self._pending is None:
            super()._write(future, *args)
        else:  # acknowledged now, visible at commit
            self._pending.append((asyncio.get_running_loop().create_future(), args))
            future.set_result(None)


class _Batch:
    def append(self, *, key: bytes | None, value: bytes | None, timestamp: int | None, headers: Any) -> None:
        self.key, self.value, self.headers = key, value, headers


# ---------------------------------------------------------------------------------------------
# inspect


async def test_inspect_counts_every_dead_letter_and_shows_the_chosen(cluster: FakeCluster) -> None:
    """Four dead letters over two partitions: counted by stage and error, two shown (one of each kind)."""
    found = await inspect(Source(DLT), 2, reader=FakeReader(cluster))

    assert (4, 4) == (found.counts.read, found.counts.selected)
    assert {"validation": 2, "decode": 2} == dict(found.counts.stages)
    assert [(0, 0), (0, 1)] == [(letter.partition, letter.offset) for letter in found.shown]
    assert "all 2 partitions" == found.scope


async def test_inspect_reads_only_what_the_partition_and_offsets_select(cluster: FakeCluster) -> None:
    """--partition 1 --offsets 1-: one dead letter read, and the scope says so."""
    source = Source(DLT, filters=Filters(partition=1, offsets=(1, None)))

    found = await inspect(source, reader=FakeReader(cluster))

    assert (1, "partition 1, offsets 1-") == (found.counts.read, found.scope)


async def test_inspect_limit_reads_the_last_of_each_partition_and_reports_progress(cluster: FakeCluster) -> None:
    """--limit 1: the newest dead letter of each partition; progress hears of each batch."""
    seen: list[tuple[int, int]] = []

    found = await inspect(Source(DLT, limit=1), 5, reader=FakeReader(cluster), on_progress=lambda *p: seen.append(p))

    assert [(0, 1), (1, 1)] == sorted((letter.partition, letter.offset) for letter in found.shown)
    assert "the last 1 of each of 2 partitions" == found.scope
    assert (2, 2) == seen[-1]


async def test_a_missing_dead_letter_topic_says_how_to_name_it() -> None:
    """Not a crash: a ConfigError naming the topic and the flag."""
    with pytest.raises(ConfigError, match=r"the dead-letter topic nope\.DLT does not exist on .* --topic"):
        await inspect(Source("nope.DLT"), reader=FakeReader(FakeCluster()))


# ---------------------------------------------------------------------------------------------
# replay


async def test_replay_sends_each_original_back_to_its_partition_and_reports_the_rest(cluster: FakeCluster) -> None:
    """Two replayed to requests, each to the partition its original was read from; one refused, one skipped."""
    producer = ReplayProducer(cluster)

    outcome = await replay(Source(DLT), ReplayOptions(), reader=FakeReader(cluster), producer=producer)

    sent = cluster.records("requests")
    assert [(b"a", 0), (b"b", 1)] == [(r.key, r.partition) for r in sent]
    assert (("traceparent", b"00-1"), (h.REPLAY_COUNT, b"1")) == sent[0].headers
    assert (b"\x00", ((h.REPLAY_COUNT, b"1"),)) == (sent[1].value, sent[1].headers)
    plan = outcome.plan
    assert (["value omitted"], [3]) == ([skip.reason for skip in plan.skipped], [r.count for r in plan.refused])
    assert ((), None, []) == (outcome.failed, outcome.aborted, producer.calls)


async def test_a_dry_run_sends_nothing(cluster: FakeCluster) -> None:
    """The plan is made, no producer is used."""
    outcome = await replay(Source(DLT), ReplayOptions(dry_run=True), reader=FakeReader(cluster), producer=None)

    assert (2, []) == (len(outcome.plan.replays), cluster.records("requests"))


async def test_a_missing_target_topic_fails_before_anything_is_sent(cluster: FakeCluster) -> None:
    """--to a topic that does not exist: a ConfigError, no record written anywhere."""
    producer = ReplayProducer(cluster)

    with pytest.raises(ConfigError, match=r"topic elsewhere does not exist .* nothing was replayed"):
        await replay(Source(DLT), ReplayOptions(to="elsewhere"), reader=FakeReader(cluster), producer=producer)

    assert [] == producer.attempts


async def test_a_record_not_acknowledged_is_named_and_the_others_are_sent(cluster: FakeCluster) -> None:
    """The broker refuses the first record: the outcome names it, the second is replayed."""
    producer = ReplayProducer(cluster)
    producer.fail("requests", MessageSizeTooLargeError("too large"))

    outcome = await replay(Source(DLT), ReplayOptions(), reader=FakeReader(cluster), producer=producer)

    assert [("requests.DLT[0]@0", "MessageSizeTooLargeError('too large')")] == [
        (r.letter.position, error) for r, error in outcome.failed
    ]
    assert [b"b"] == [r.key for r in cluster.records("requests")]


async def test_a_record_refused_at_send_is_named_too(cluster: FakeCluster) -> None:
    """A send that raises (no metadata in time) fails that record, not the command."""
    producer = ReplayProducer(cluster)
    producer.fail("requests", KafkaTimeoutError(), at_send=True)

    outcome = await replay(Source(DLT), ReplayOptions(), reader=FakeReader(cluster), producer=producer)

    assert ["requests.DLT[0]@0"] == [r.letter.position for r, _ in outcome.failed]


async def test_a_transaction_commits_when_every_record_is_acknowledged(cluster: FakeCluster) -> None:
    """begin, two sends, commit: both records appear together."""
    producer = ReplayProducer(cluster)

    options = ReplayOptions(transactional_id="t")

    outcome = await replay(Source(DLT), options, reader=FakeReader(cluster), producer=producer)

    assert (["begin", "commit"], 2, None) == (producer.calls, len(cluster.records("requests")), outcome.aborted)


async def test_a_transaction_with_a_failed_record_is_aborted_and_replays_nothing(cluster: FakeCluster) -> None:
    """Step by step: the second record fails; the transaction is aborted; no record of it is visible."""
    producer = ReplayProducer(cluster)
    producer.fail("requests", MessageSizeTooLargeError("too large"))

    options = ReplayOptions(transactional_id="t")

    outcome = await replay(Source(DLT), options, reader=FakeReader(cluster), producer=producer)

    assert (["begin", "abort"], []) == (producer.calls, cluster.records("requests"))
    assert ("1 of 2 records failed", []) == (outcome.aborted, outcome.replayed)


async def test_a_tombstone_goes_back_in_a_batch_of_its_own() -> None:
    """Neither key nor value: aiokafka's send refuses it, so a batch carries it to the original partition."""
    cluster = FakeCluster()
    cluster.create("requests", partitions=2)
    write_dead_letter(cluster, make_record(None, partition=1, offset=2), DecodeError("empty"))
    producer = ReplayProducer(cluster)

    await replay(Source(DLT), ReplayOptions(), reader=FakeReader(cluster), producer=producer)

    [sent] = cluster.records("requests")
    assert (None, None, 1, ((h.REPLAY_COUNT, b"1"),)) == (sent.key, sent.value, sent.partition, sent.headers)


# ---------------------------------------------------------------------------------------------
# The command line


def parse(*argv: str) -> Any:
    """The namespace of `streamscore <argv>`."""
    return make_parser().parse_args(list(argv))


def test_the_dead_letter_topic_follows_the_input_topic_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As collect: STREAMSCORE_DEAD_LETTER_TOPIC, else STREAMSCORE_INPUT_TOPIC plus .DLT."""
    monkeypatch.setenv("STREAMSCORE_INPUT_TOPIC", "orders")
    inspect_topic, replay_topic = parse("dlq", "inspect").topic, parse("dlq", "replay").topic
    monkeypatch.setenv("STREAMSCORE_DEAD_LETTER_TOPIC", "orders.dead")

    assert ("orders.DLT", "orders.DLT", "orders.dead") == (inspect_topic, replay_topic, parse("dlq", "inspect").topic)


def test_the_flags_become_filters_and_options() -> None:
    """Repeated --stage values are any of; times are epoch ms; exactly-once names a per-topic transactional id."""
    args = parse(
        "dlq", "replay", "--topic", "t.DLT", "--stage", "decode", "--stage", "validate", "--error", "DecodeError",
        "--model", "mlp", "--model-version", "2", "--since", "2025-12-02T14:00Z", "--until", "1764691200000",
        "--partition", "1", "--offsets", "4-", "--guarantee", "exactly-once", "--max-replays", "5",
    )  # fmt: skip

    source, options = source_from_args(args), replay_options_from_args(args)

    expected = Filters(
        frozenset({"decode", "validate"}), frozenset({"DecodeError"}), "mlp", "2", 1_764_684_000_000,
        1_764_691_200_000, 1, (4, None),
    )  # fmt: skip
    assert expected == source.filters
    assert ReplayOptions(None, False, 5, "streamscore-dlq-replay-t.DLT") == options


def test_the_guarantee_of_a_replay_follows_the_environment_and_the_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """STREAMSCORE_GUARANTEE=exactly-once makes a replay transactional, its id under
    STREAMSCORE_TRANSACTIONAL_ID_PREFIX; --guarantee at-least-once turns it off, --transactional-id names it."""
    idempotent = replay_options_from_args(parse("dlq", "replay")).transactional_id
    named = replay_options_from_args(parse("dlq", "replay", "--transactional-id", "mine")).transactional_id
    monkeypatch.setenv("STREAMSCORE_GUARANTEE", "exactly-once")
    monkeypatch.setenv("STREAMSCORE_TRANSACTIONAL_ID_PREFIX", "acme")

    from_environment = replay_options_from_args(parse("dlq", "replay")).transactional_id
    overridden = replay_options_from_args(parse("dlq", "replay", "--guarantee", "at-least-once")).transactional_id

    assert (None, "mine") == (idempotent, named)
    assert ("acme-dlq-replay-streamscore.requests.DLT", None) == (from_environment, overridden)


def test_a_guarantee_that_does_not_exist_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad STREAMSCORE_GUARANTEE is refused before connecting to anything (argparse checks only the flag)."""
    monkeypatch.setenv("STREAMSCORE_GUARANTEE", "exactly-twice")

    assert 2 == run(parse("dlq", "replay", "--bootstrap-servers", "127.0.0.1:1"))
    assert "STREAMSCORE_GUARANTEE must be at-least-once or exactly-once, not 'exactly-twice'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dlq", "inspect", "--offsets", "1-3"], "--offsets needs --partition"),
        (["dlq", "replay", "--since", "2025-12-02", "--until", "2025-12-01"], "--since must be before --until"),
    ],
)
def test_filters_that_cannot_hold_exit_2_saying_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before connecting to anything."""
    assert 2 == run(parse(*argv))
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dlq", "inspect", "--since", "yesterday"], "neither an ISO time"),
        (["dlq", "replay", "--offsets", "b-a"], "not an offset range"),
        (["dlq", "replay", "--max-replays", "0"], "must be at least 1"),
        (["dlq", "inspect", "--show", "-1"], "must be 0 or more"),
    ],
)
def test_bad_flag_values_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits 2 with the reason."""
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)

    assert (2, True) == (exit_.value.code, message in capsys.readouterr().err)


def test_an_unreachable_broker_exits_1_naming_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    """No broker on the port: exit 1, the address in the message."""
    code = run(parse("dlq", "inspect", "--bootstrap-servers", "127.0.0.1:1"))

    assert (1, True) == (code, "cannot reach the Kafka broker at 127.0.0.1:1" in capsys.readouterr().err)


def test_progress_rewrites_one_line_and_ends_it_once() -> None:
    """At most every 0.2 s, then one newline however often close is called."""
    stream, now = io.StringIO(), [0.0]
    progress = ReadProgress(stream, True, clock=lambda: now[0])

    for read in (10, 20):
        now[0] += 0.1
        progress.update(read, 100)
    progress.close()
    progress.close()

    assert "\rread 10 of 100 dead letters (100/s)\n" == stream.getvalue()
