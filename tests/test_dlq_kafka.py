"""`streamscore dlq inspect | replay` on the real broker, over dead letters a real worker wrote."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from demo.models import install_model, make_failing_model, make_mlp
from schemas import headers as h
from schemas.codec import encode_request
from streamscore.cli import main as cli
from tests.conftest import MakeTopics
from tests.factories import make_record
from tests.harness import Out, end_offsets, produce, read_topic, responses, run_burst, worker_settings_for
from transport.admin import create_topics
from transport.connection import Connection
from transport.limits import DEFAULT_MAX_MESSAGE_BYTES, topic_limits
from worker.deadletter import dead_letter_headers
from worker.settings import Settings

pytestmark = pytest.mark.kafka

DLT_LIMIT = 20_000  # the dead-letter topic's max.message.bytes: the large record's value does not fit
Consumed = ConsumerRecord[bytes, bytes]


def good(i: int) -> bytes:
    """A valid request for the mlp."""
    return encode_request({"x": np.full((1, 8), i / 10, dtype=np.float32)}, id=f"ok-{i}")


def request(shape: list[int], data: list[float], rid: str) -> bytes:
    return orjson.dumps({"id": rid, "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]})


CUSTOM = ("x-custom", b"\x00\x01\xff")  # a binary header must come back byte for byte
BAD = {
    "not-json": (Out(b"not-json", b"\x00\xffnot json", [CUSTOM], partition=0), "decode"),
    "wrong-shape": (Out(b"wrong-shape", request([1, 7], [0.0] * 7, "wrong-shape"), [CUSTOM], partition=1), "validate"),
    "unknown-version": (Out(b"unknown-version", good(5), [(h.MODEL_VERSION, b"7"), CUSTOM], partition=0), "validate"),
    "raises": (Out(b"raises", request([1, 4], [100.0, 0, 0, 0], "raises"), [(h.MODEL, b"failing")], 1), "infer"),
    "tombstone": (Out(None, None, [CUSTOM], partition=1), "decode"),
    "too-large": (Out(b"too-large", b" " * 30_000, [CUSTOM], partition=0), "decode"),
}
REPLAYABLE = [out for name, (out, _) in BAD.items() if name != "too-large"]


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """mlp version 1 (the default model) and a model that raises on a large first feature."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    install_model(root, "failing", "1", make_failing_model)
    return root


@pytest.fixture
async def topics(kafka_bootstrap: str, make_topics: MakeTopics) -> dict[str, str]:
    """Input and results (2 partitions), and a dead-letter topic of one partition that takes 20 kB."""
    names = await make_topics("in", "out", partitions=2)
    dead = f"{names[0]}.DLT"
    await create_topics(kafka_bootstrap, [dead], 1, configs={"max.message.bytes": str(DLT_LIMIT)})
    return {"input": names[0], "results": names[1], "dead": dead}


@pytest.fixture
def settings(kafka_bootstrap: str, topics: dict[str, str], model_root: Path, unique_group: str) -> Settings:
    """A burst worker of this test's topics; records over 4 kB are dead-lettered at decode."""
    return worker_settings_for(
        kafka_bootstrap,
        topics,
        model_root,
        unique_group,
        max_record_bytes=4096,
        worker_id="test-worker",
    )


async def dlq(bootstrap: str, dead_letter_topic: str, *argv: str) -> int:
    """Run `streamscore dlq ...` against this test's broker and dead-letter topic, as a user would."""
    topic = [] if "--topic" in argv else ["--topic", dead_letter_topic]
    return await asyncio.to_thread(cli, ["dlq", *argv, "--bootstrap-servers", bootstrap, *topic])


async def run_dlq(settings: Settings, *argv: str) -> int:
    """`dlq` against the worker's broker and dead-letter topic."""
    return await dlq(settings.bootstrap_servers, settings.dead_letter_topic, *argv)


async def dead_letters_of(settings: Settings, records: list[Out]) -> list[Consumed]:
    """Produce `records` (good ones between them), run a worker until drained; the dead letters."""
    interleaved = [r for i, out in enumerate(records) for r in (Out(b"ok", good(i), partition=i % 2), out)]
    await produce(settings.bootstrap_servers, settings.input_topic, interleaved)
    assert 0 == await run_burst(settings)
    return await read_topic(settings.bootstrap_servers, settings.dead_letter_topic, expect=len(records))


async def set_max_message_bytes(bootstrap: str, topic: str, limit: int) -> None:
    """Set `topic`'s max.message.bytes, and wait until the broker describes it so."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
        assert all(resource[0] == 0 for resource in response.resources), response
    finally:
        await admin.close()
    async with asyncio.timeout(30):
        while (await topic_limits(Connection(bootstrap), [topic]))[topic] != limit:
            await asyncio.sleep(0.1)


def replayed(records: list[Consumed], count: int) -> dict[bytes | None, Consumed]:
    """The records of the input topic that carry `streamscore-replay-count: count`, by key."""
    return {r.key: r for r in records if (h.REPLAY_COUNT, str(count).encode()) in r.headers}


async def test_inspect_counts_what_a_worker_dead_lettered(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Six bad records: inspect --json counts them by stage, error, model version and hour as their
    headers say; --stage selects; --show decodes Spring's binary headers."""
    dead = await dead_letters_of(settings, [out for out, _ in BAD.values()])
    capsys.readouterr()

    assert 0 == await run_dlq(settings, "inspect", "--json")
    report = orjson.loads(capsys.readouterr().out)
    assert 0 == await run_dlq(settings, "inspect", "--stage", "validate", "--show", "1")
    shown = capsys.readouterr().out

    models = Counter(
        (
            dict(d.headers).get(h.DLT_MODEL, b"(none)").decode(),
            dict(d.headers).get(h.DLT_MODEL_VERSION, b"(none)").decode(),
        )
        for d in dead
    )
    assert (6, 6) == (report["read"], report["selected"])
    assert {"decode": 3, "validate": 2, "infer": 1} == report["by_stage"]
    errors = {"DecodeError": 3, "ValidationError": 1, "ModelUnavailableError": 1, "InferenceError": 1}
    assert errors == report["by_error"]
    assert models == {(m["model"], m["version"]): m["count"] for m in report["by_model_version"]}
    assert 6 == sum(report["by_hour"].values())
    assert f"{settings.dead_letter_topic}: 6 dead letters read (all 1 partitions), 2 selected" in shown
    assert "    kafka_dlt-original-partition: 1" in shown or "    kafka_dlt-original-partition: 0" in shown
    assert '    streamscore-dlt-stage: "validate"' in shown


async def test_replay_sends_originals_back_byte_for_byte_counts_each_replay_and_refuses_at_the_cap(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step by step: a worker dead-letters six bad records; replay sends five back to the input topic,
    each to its original partition with its key, value and headers unchanged plus replay count 1, and
    skips the one whose value the dead letter could not hold, saying where it is. The worker fails them
    again; a replay of those new dead letters sends count 2. They fail a third time; with
    --max-replays 2 every one is refused and nothing is sent."""
    await dead_letters_of(settings, [out for out, _ in BAD.values()])
    capsys.readouterr()

    assert 0 == await run_dlq(settings, "replay")

    summary = capsys.readouterr().out
    input_records = await read_topic(settings.bootstrap_servers, settings.input_topic, expect=12 + 5)
    first = replayed(input_records, 1)
    assert summary.startswith(
        "replayed 5, skipped (not all in the dead letter) 1, refused (replayed 3 times already) 0"
    )
    assert f"value omitted; the original is at {settings.input_topic}[0]@" in summary
    assert {out.key for out in REPLAYABLE} == set(first)
    for out in REPLAYABLE:
        back = first[out.key]
        assert (out.value, out.partition) == (back.value, back.partition)
        assert [*out.headers, (h.REPLAY_COUNT, b"1")] == list(back.headers)

    assert 0 == await run_burst(settings)  # the replayed records fail again: dead letters 6..10
    capsys.readouterr()
    assert 0 == await run_dlq(settings, "replay", "--partition", "0", "--offsets", "6-")

    assert capsys.readouterr().out.startswith("replayed 5, skipped (not all in the dead letter) 0, refused")
    second = replayed(await read_topic(settings.bootstrap_servers, settings.input_topic, expect=12 + 10), 2)
    assert {out.key for out in REPLAYABLE} == set(second)
    assert all([*out.headers, (h.REPLAY_COUNT, b"2")] == list(second[out.key].headers) for out in REPLAYABLE)

    assert 0 == await run_burst(settings)  # and again: dead letters 11..15, replayed twice
    before = await end_offsets(settings.bootstrap_servers, settings.input_topic, 2)
    capsys.readouterr()
    assert 0 == await run_dlq(settings, "replay", "--partition", "0", "--offsets", "11-", "--max-replays", "2")

    refused = capsys.readouterr().out
    assert refused.startswith(
        "replayed 0, skipped (not all in the dead letter) 0, refused (replayed 2 times already) 5"
    )
    assert f"{settings.dead_letter_topic}[0]@11: replayed 2 times already (--max-replays 2)" in refused
    assert before == await end_offsets(settings.bootstrap_servers, settings.input_topic, 2)


async def test_an_at_least_once_replay_writes_exactly_the_selected_records_and_refuses_one_at_the_cap(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Six dead letters, four of stage decode, one of those replayed 3 times already and one twice: a replay
    of --stage decode writes three records to the input topic and nothing else (no transaction markers
    either), each to its original partition with its key, value and original headers byte for byte, the
    old count dropped and streamscore-replay-count added; the one at the cap (3) is refused and named."""
    capped = Out(b"capped", b"\x01capped", [CUSTOM, (h.REPLAY_COUNT, b"3")], partition=1)
    twice = Out(b"twice", b"\x01twice", [(h.REPLAY_COUNT, b"2"), CUSTOM], partition=0)
    others = [BAD[name][0] for name in ("not-json", "tombstone", "wrong-shape", "unknown-version")]
    dead = await dead_letters_of(settings, [*others, capped, twice])
    [capped_at] = [d.offset for d in dead if d.key == b"capped"]
    before = await end_offsets(settings.bootstrap_servers, settings.input_topic, 2)
    capsys.readouterr()

    assert 0 == await run_dlq(settings, "replay", "--stage", "decode", "--guarantee", "at-least-once")

    summary = capsys.readouterr().out
    after = await end_offsets(settings.bootstrap_servers, settings.input_topic, 2)
    records = await read_topic(settings.bootstrap_servers, settings.input_topic, expect=12 + 3)
    written = [r for r in records if r.offset >= before[r.partition]]
    expected = {
        b"not-json": (0, b"\x00\xffnot json", [CUSTOM, (h.REPLAY_COUNT, b"1")]),
        None: (1, None, [CUSTOM, (h.REPLAY_COUNT, b"1")]),
        b"twice": (0, b"\x01twice", [CUSTOM, (h.REPLAY_COUNT, b"3")]),
    }
    assert expected == {r.key: (r.partition, r.value, list(r.headers)) for r in written}
    assert ({0: 2, 1: 1}, 3) == ({p: after[p] - before[p] for p in after}, len(written))
    assert summary.startswith(
        "replayed 3, skipped (not all in the dead letter) 0, refused (replayed 3 times already) 1"
    )
    assert f"{settings.dead_letter_topic}[0]@{capped_at}: replayed 3 times already (--max-replays 3)" in summary


async def test_an_exactly_once_replay_that_fails_part_way_is_aborted_and_a_retry_commits_all(
    kafka_bootstrap: str, settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step by step: a worker dead-letters two small records of input partition 0 and, of partition 1, one
    small and one of 5 kB. The input topic is then narrowed to 3 kB. A replay --guarantee exactly-once:
    partition 0's batch is accepted, partition 1's refused, so the command exits 1 naming the large one
    and aborts. read_uncommitted shows partition 0's replays were written; read_committed shows none.
    With the limit back and STREAMSCORE_GUARANTEE=exactly-once, the same replay commits all four, each
    partition ending with a commit marker, and inspect reads past the aborted records to the end."""
    large = Out(b"large", request([1, 8], [0.0] * 8, "large") + b" " * 5000, partition=1)
    small = [BAD[name][0] for name in ("not-json", "unknown-version", "wrong-shape")]  # partitions 0, 0, 1
    dead = await dead_letters_of(settings, [*small, large])
    [large_at] = [d.offset for d in dead if d.key == b"large"]
    await set_max_message_bytes(kafka_bootstrap, settings.input_topic, 3000)
    capsys.readouterr()

    assert 1 == await run_dlq(settings, "replay", "--guarantee", "exactly-once")

    error = capsys.readouterr().err
    uncommitted = await read_topic(
        kafka_bootstrap, settings.input_topic, expect=8 + 2, isolation_level="read_uncommitted"
    )
    committed = await read_topic(kafka_bootstrap, settings.input_topic, idle_s=1.0)
    transaction = f"streamscore-dlq-replay-{settings.dead_letter_topic}"
    # whether wrong-shape shares the large one's batch of partition 1 is the client's choice
    assert re.search(rf"transaction {re.escape(transaction)} aborted \([1-2] of 4 records failed\): nothing", error)
    assert f"{settings.dead_letter_topic}[0]@{large_at} -> {settings.input_topic}: MessageSizeTooLargeError" in error
    assert (
        {b"not-json", b"unknown-version"}
        <= set(replayed(uncommitted, 1))
        <= {b"not-json", b"unknown-version", b"wrong-shape"}
    )
    assert ({}, 8) == (replayed(committed, 1), len(committed))

    await set_max_message_bytes(kafka_bootstrap, settings.input_topic, DEFAULT_MAX_MESSAGE_BYTES)
    monkeypatch.setenv("STREAMSCORE_GUARANTEE", "exactly-once")
    before = await end_offsets(kafka_bootstrap, settings.input_topic, 2)
    assert 0 == await run_dlq(settings, "replay")

    after = await end_offsets(kafka_bootstrap, settings.input_topic, 2)
    records = await read_topic(kafka_bootstrap, settings.input_topic, expect=8 + 4)
    assert ({out.key for out in [*small, large]}, 12) == (set(replayed(records, 1)), len(records))
    assert {0: 2 + 1, 1: 2 + 1} == {p: after[p] - before[p] for p in after}  # two records and a commit marker
    capsys.readouterr()
    assert 0 == await run_dlq(settings, "inspect", "--topic", settings.input_topic)
    assert f"{settings.input_topic}: 12 dead letters read (all 2 partitions), 12 selected" in capsys.readouterr().out


async def test_a_replay_without_a_transaction_names_what_was_not_acknowledged(
    kafka_bootstrap: str, make_topics: MakeTopics, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three dead letters of a topic that takes 3 kB, the one from partition 1 of 5 kB: the replay exits
    1 naming it (dead letter, topic, error); the two of partition 0 are replayed and acknowledged."""
    [dead] = await make_topics("in.DLT", partitions=1)
    target = dead.removesuffix(".DLT")
    await create_topics(kafka_bootstrap, [target], 2, configs={"max.message.bytes": "3000"})
    letters = []
    for offset, (partition, value) in enumerate([(0, b"a"), (1, b"b" * 5000), (0, b"c")]):
        original = make_record(value, topic=target, partition=partition, offset=offset, key=value[:1])
        added = dead_letter_headers(
            original, ValueError("x"), stage="decode", group_id="g", worker="w", attempts=1, model=None
        )
        letters.append(Out(original.key, value, added))
    await produce(kafka_bootstrap, dead, letters)

    assert 1 == await dlq(kafka_bootstrap, dead, "replay")

    out, err = capsys.readouterr()
    assert "1 of 3 records were not acknowledged and may not have been replayed: " in err
    assert f"{dead}[0]@1 -> {target}: MessageSizeTooLargeError" in err
    assert out.startswith("replayed 2, ")
    assert [b"a", b"c"] == [r.value for r in await read_topic(kafka_bootstrap, target, expect=2)]


async def test_a_dead_letter_of_a_last_retry_goes_back_to_the_input_topic_and_is_scored_once_its_version_is_there(
    kafka_bootstrap: str, make_topics: MakeTopics, tmp_path: Path, unique_group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step by step: a request pins mlp version 2, which the worker does not have: it waits on the 200 ms retry
    topic, fails again and is dead-lettered from there. Version 2 is installed; the replay sends it to the
    input topic (not the retry topic) with its own headers and the count, Spring's retry headers dropped,
    and the next worker scores it with version 2."""
    names = await make_topics("in", "out", "in.DLT", "in-retry-200", partitions=2)
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=names[0],
        results_topic=names[1],
        group_id=unique_group,
        control_topic="",
        model_root=str(root),
        model_name="mlp",
        retry_topic_delays_ms=("200",),
        log_format="console",
    )
    own = [("traceparent", b"00-1"), (h.MODEL_VERSION, b"2")]
    await produce(kafka_bootstrap, names[0], [Out(b"late", good(1), own)])
    assert 0 == await run_burst(settings)
    [letter] = await read_topic(kafka_bootstrap, names[2], expect=1)
    assert names[3].encode() == dict(letter.headers)[h.DLT_ORIGINAL_TOPIC]
    install_model(root, "mlp", "2", make_mlp, seed=2)
    capsys.readouterr()

    assert 0 == await dlq(kafka_bootstrap, names[2], "replay")

    assert capsys.readouterr().out.startswith("replayed 1, ")
    [_, back] = await read_topic(kafka_bootstrap, names[0], expect=2)
    assert (b"late", good(1), [*own, (h.REPLAY_COUNT, b"1")]) == (back.key, back.value, list(back.headers))
    assert 0 == await run_burst(settings)
    [result] = responses(await read_topic(kafka_bootstrap, names[1], expect=1))
    assert ("ok-1", "2") == (result.id, result.model_version)
