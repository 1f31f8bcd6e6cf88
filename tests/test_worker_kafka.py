"""End to end on the real broker: every record ends as a result or a dead letter, committed after."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import murmur2

from demo.models import install_model, make_expanding_model, make_failing_model, make_fixed_batch_model, make_mlp
from schemas import headers as h
from schemas.codec import decode_response, encode_request
from tests.harness import (
    Out,
    committed,
    produce,
    read_topic,
    responses,
    run_burst,
    stage_of,
    worker_settings_for,
)
from transport.admin import create_topics
from worker.deadletter import original_headers
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """A model folder: mlp (versions 1 and 2), a model that raises, a batch-1 model."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    install_model(root, "mlp", "2", make_mlp, scale=2.0)
    install_model(root, "failing", "1", make_failing_model)
    install_model(root, "single", "1", make_fixed_batch_model)
    install_model(root, "expanding", "1", make_expanding_model)
    return root


@pytest.fixture
async def topics(make_topics) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Input, results and dead-letter topics of one test."""
    names = await make_topics("in", "out", "in.DLT", partitions=PARTITIONS)
    return {"input": names[0], "results": names[1], "dead": names[2]}


@pytest.fixture
def settings(kafka_bootstrap: str, topics: dict[str, str], model_root: Path, unique_group: str) -> Settings:
    """Worker settings for this test's topics and models, default model mlp."""
    return worker_settings_for(
        kafka_bootstrap,
        topics,
        model_root,
        unique_group,
        max_request_rows=4,
        max_record_bytes=4096,
        worker_id="test-worker",
    )


def good(i: int, rows: int = 1, features: int = 8) -> bytes:
    """A valid request for the mlp."""
    data = np.full((rows, features), i % 7 / 10, dtype=np.float32)
    return encode_request({"x": data}, id=f"ok-{i}")


def request(name: str, shape: list[int], datatype: str, data: object, rid: str) -> bytes:
    return orjson.dumps({"id": rid, "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})


BAD_INPUTS: dict[str, tuple[Out, str]] = {
    "not-json": (Out(b"not-json", b"\x00\xffnot json at all"), "decode"),
    "truncated": (Out(b"truncated", good(1)[:25]), "decode"),
    "not-v2": (Out(b"not-v2", b'{"instances": [[1, 2, 3]]}'), "decode"),
    "unknown-input": (
        Out(b"unknown-input", request("features", [1, 8], "FP32", [0.0] * 8, "unknown-input")),
        "validate",
    ),
    "wrong-shape": (Out(b"wrong-shape", request("x", [1, 7], "FP32", [0.0] * 7, "wrong-shape")), "validate"),
    "wrong-datatype": (
        Out(b"wrong-datatype", request("x", [1, 8], "FP64", [0.5] * 8, "wrong-datatype")),
        "validate",
    ),
    "nan": (
        Out(
            b"nan",
            json.dumps(
                {
                    "id": "nan",
                    "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [float("nan")] * 8}],
                }
            ).encode(),
        ),
        "validate",
    ),
    "infinity": (
        Out(
            b"infinity",
            json.dumps(
                {
                    "id": "infinity",
                    "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [float("inf")] + [0.0] * 7}],
                }
            ).encode(),
        ),
        "validate",
    ),
    "too-many-rows": (Out(b"too-many-rows", good(3, rows=5)), "validate"),
    "too-large": (
        Out(b"too-large", request("x", [1, 8], "FP32", [0.0] * 8, "too-large") + b" " * 5000),
        "decode",
    ),
    "null": (Out(b"null", None), "decode"),
    "empty": (Out(b"empty", b""), "decode"),
    "unknown-model": (Out(b"unknown-model", good(4), [(h.MODEL, b"nope")]), "validate"),
    "unknown-version": (Out(b"unknown-version", good(5), [(h.MODEL_VERSION, b"7")]), "validate"),
    "raises": (
        Out(b"raises", request("x", [1, 4], "FP32", [100.0, 0, 0, 0], "raises"), [(h.MODEL, b"failing")]),
        "infer",
    ),
}


async def test_scores_good_records_and_dead_letters_each_bad_input_at_its_stage(
    settings: Settings, topics: dict[str, str]
) -> None:
    """Good and bad records interleaved on one partition: the good are scored, each bad one is
    dead-lettered once at its stage, byte for byte, and every offset is committed."""
    records: list[Out] = []
    for i, (out, _) in enumerate(BAD_INPUTS.values()):
        records.append(Out(f"ok-{i}".encode(), good(i), [("traceparent", b"00-abc-01")], partition=0))
        records.append(Out(out.key, out.value, [*out.headers, ("x-custom", b"\x00\x01")], partition=0))
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings)

    results = await read_topic(settings.bootstrap_servers, topics["results"], expect=len(BAD_INPUTS))
    dead = await read_topic(settings.bootstrap_servers, topics["dead"], expect=len(BAD_INPUTS))
    assert sorted(f"ok-{i}" for i in range(len(BAD_INPUTS))) == sorted(r.id for r in responses(results))
    assert all(r.headers[0] == ("traceparent", b"00-abc-01") for r in results)
    stages = {d.key.decode(): stage_of(d) for d in dead}
    assert {name: stage for name, (_, stage) in BAD_INPUTS.items()} == stages
    sent = {r.key: r for r in records}
    for letter in dead:
        original = sent[letter.key]
        assert original.value == letter.value
        assert [*original.headers] == original_headers(letter.headers)[: len(original.headers)]
        assert 0 == int.from_bytes(dict(letter.headers)[h.DLT_ORIGINAL_PARTITION], "big")
        assert settings.group_id.encode() == dict(letter.headers)[h.DLT_ORIGINAL_CONSUMER_GROUP]
    assert_all_committed = await committed(settings.bootstrap_servers, settings.group_id, topics["input"], PARTITIONS)
    assert {0: len(records), 1: None, 2: None} == assert_all_committed


async def test_dead_letter_names_the_model_and_version_it_failed_on(settings: Settings, topics: dict[str, str]) -> None:
    """A record that fails inference carries the failing model's name, version and sha256."""
    bad = Out(b"raises", request("x", [1, 4], "FP32", [100.0, 0, 0, 0], "raises"), [(h.MODEL, b"failing")])
    await produce(settings.bootstrap_servers, topics["input"], [bad])

    assert 0 == await run_burst(settings)

    [letter] = await read_topic(settings.bootstrap_servers, topics["dead"], expect=1)
    added = dict(letter.headers)
    assert b"failing" == added[h.DLT_MODEL]
    assert b"1" == added[h.DLT_MODEL_VERSION]
    assert 64 == len(added[h.DLT_MODEL_SHA256])
    assert b"schemas.errors.InferenceError" == added[h.DLT_EXCEPTION_FQCN]
    assert b"Gather" in added[h.DLT_EXCEPTION_MESSAGE]


async def test_failing_batch_is_split_so_only_the_bad_record_is_dead_lettered(
    settings: Settings, topics: dict[str, str]
) -> None:
    """Forty records batched together, one makes the model raise: 39 results, 1 dead letter."""
    bad_index = 17
    records = [
        Out(
            f"r{i}".encode(),
            request("x", [1, 4], "FP32", [100.0 if i == bad_index else i % 10, 1, 2, 3], f"r{i}"),
            [(h.MODEL, b"failing")],
            partition=0,
        )
        for i in range(40)
    ]
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings.replace(max_batch_delay_ms=200.0))

    results = responses(await read_topic(settings.bootstrap_servers, topics["results"], expect=39))
    dead = await read_topic(settings.bootstrap_servers, topics["dead"], expect=1)
    assert sorted(f"r{i}" for i in range(40) if i != bad_index) == sorted(r.id for r in results)
    assert [f"r{bad_index}".encode()] == [d.key for d in dead]
    for response in results:
        row = int(response.id[1:])
        assert [[float(row % 10)]] == response.output("y").data.tolist()


async def test_results_carry_the_version_that_scored_them(settings: Settings, topics: dict[str, str]) -> None:
    """Unpinned requests get the highest version; a pinned header gets exactly that version."""
    records = [
        Out(b"latest", good(1)),
        Out(
            b"pinned",
            encode_request({"x": np.zeros((1, 8), np.float32)}, id="pinned"),
            [(h.MODEL_VERSION, b"1")],
        ),
    ]
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings)

    results = await read_topic(settings.bootstrap_servers, topics["results"], expect=2)
    versions = {decode_response(r.value).id: decode_response(r.value).model_version for r in results}
    assert {"ok-1": "2", "pinned": "1"} == versions


async def test_nonfinite_values_are_scored_when_allowed(settings: Settings, topics: dict[str, str]) -> None:
    """With allow_nonfinite, a NaN input is scored, and a NaN output is written as null."""
    value = json.dumps(
        {
            "id": "nan",
            "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [float("nan")] * 8}],
        }
    )
    await produce(settings.bootstrap_servers, topics["input"], [Out(b"nan", value.encode())])

    assert 0 == await run_burst(settings.replace(allow_nonfinite=True))

    [result] = await read_topic(settings.bootstrap_servers, topics["results"], expect=1)
    assert [None, None, None] == orjson.loads(result.value)["outputs"][0]["data"]


async def test_batches_never_exceed_a_batch_size_the_model_fixes(settings: Settings, topics: dict[str, str]) -> None:
    """A model whose first dimension is 1 scores many one-row records, each on its own."""
    records = [
        Out(f"s{i}".encode(), request("x", [1, 4], "FP32", [i, 1, 1, 1], f"s{i}"), [(h.MODEL, b"single")])
        for i in range(30)
    ]
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings.replace(max_batch_delay_ms=100.0))

    results = responses(await read_topic(settings.bootstrap_servers, topics["results"], expect=30))
    assert {f"s{i}": [[i + 3.0]] for i in range(30)} == {r.id: r.output("y").data.tolist() for r in results}


async def test_dead_letter_that_cannot_be_written_waits_and_leaves_the_offset_uncommitted(
    kafka_bootstrap: str, settings: Settings, topics: dict[str, str]
) -> None:
    """The dead-letter topic does not exist yet: the worker keeps the bad record and commits nothing at
    or after it (the poison is not skipped); once the topic exists, the dead letter lands there and
    everything is committed. (Until issue 7 the worker stopped with exit 1 here.)"""
    records = [
        Out(b"a", good(1), partition=0),
        Out(b"bad", b"nope", partition=0),
        Out(b"c", good(2), partition=0),
    ]
    await produce(kafka_bootstrap, topics["input"], records)
    missing = topics["dead"] + "-missing"
    broken = settings.replace(dead_letter_topic=missing, request_timeout_ms=1500, retry_attempts=2, retry_max_s=3.0)
    worker = asyncio.create_task(run_burst(broken))
    try:
        await asyncio.sleep(6)
        offsets = await committed(kafka_bootstrap, settings.group_id, topics["input"], PARTITIONS)
        assert offsets[0] is None or offsets[0] <= 1
        assert not worker.done()
        await create_topics(kafka_bootstrap, [missing], PARTITIONS)
        assert 0 == await asyncio.wait_for(worker, 60)
    finally:
        worker.cancel()

    [letter] = await read_topic(kafka_bootstrap, missing, expect=1)
    assert (b"bad", b"nope") == (letter.key, letter.value)
    assert 3 == (await committed(kafka_bootstrap, settings.group_id, topics["input"], PARTITIONS))[0]


async def test_every_id_once_across_many_records_and_partitions(settings: Settings, topics: dict[str, str]) -> None:
    """Two thousand requests over three partitions, some with several rows: one result each, on the
    partition of its key as Java's client would place it (murmur2, the hashes computed a batch at a time)."""
    records = [Out(f"ok-{i}".encode(), good(i, rows=1 + i % 3)) for i in range(2000)]
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings.replace(max_batch_rows=64))

    read = await read_topic(settings.bootstrap_servers, topics["results"], expect=2000)
    results = responses(read)
    counts = Counter(r.id for r in results)
    assert {f"ok-{i}" for i in range(2000)} == set(counts)
    assert {1} == set(counts.values())
    assert all(r.output("probabilities").data.shape == (1 + int(r.id[3:]) % 3, 3) for r in results)
    misplaced = [r.key for r in read if r.partition != (murmur2(r.key) & 0x7FFFFFFF) % PARTITIONS]
    assert [] == misplaced, "results not on the partition Kafka's default partitioner gives their key"


async def test_a_result_too_large_for_kafka_dead_letters_its_request_at_the_produce_stage(
    settings: Settings, topics: dict[str, str]
) -> None:
    """A request whose result is larger than a Kafka record may be is dead-lettered (stage produce,
    the broker client's refusal as the cause); the requests around it are scored."""
    small = request("x", [1, 4], "FP32", [1.0, 2.0, 3.0, 4.0], "small")
    large = request("x", [2, 4], "FP32", [1.0] * 8, "large")  # 2 rows x 200 000 floats: over 1 MB of JSON
    headers = [(h.MODEL, b"expanding")]
    records = [
        Out(b"before", good(1), partition=0),
        Out(b"large", large, headers, partition=0),
        Out(b"small", small, headers, partition=0),
        Out(b"after", good(2), partition=0),
    ]
    await produce(settings.bootstrap_servers, topics["input"], records)

    assert 0 == await run_burst(settings)

    results = await read_topic(settings.bootstrap_servers, topics["results"], expect=3)
    [letter] = await read_topic(settings.bootstrap_servers, topics["dead"], expect=1)
    assert ["ok-1", "ok-2", "small"] == sorted(decode_response(r.value).id for r in results)
    assert (b"large", large) == (letter.key, letter.value)
    assert "produce" == stage_of(letter)
    assert b"MessageSizeTooLarge" in dict(letter.headers)[h.DLT_EXCEPTION_MESSAGE]
    assert {0: len(records), 1: None, 2: None} == await committed(
        settings.bootstrap_servers, settings.group_id, topics["input"], PARTITIONS
    )
