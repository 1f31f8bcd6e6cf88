"""Hostile records on the real broker: each is dead-lettered with a clear reason, and the worker goes on.

Every test interleaves good records with the hostile one on one partition, runs a worker in burst
mode, and expects exit 0, every good record scored, the hostile one dead-lettered at its stage,
and every offset committed: a record must never stop its partition or the worker.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from demo.models import install_model, make_mlp
from schemas import headers as h
from schemas.codec import encode_request
from schemas.control import Canary, DesiredState, encode_state
from tests.harness import Out, committed, produce, read_topic, responses, run_burst, stage_of, worker_settings_for
from worker.settings import Settings

pytestmark = pytest.mark.kafka

FEATURES = 8


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """The MLP (FP32 x [N, 8] -> probabilities), versions 1 and 2."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    install_model(root, "mlp", "2", make_mlp, scale=2.0)
    return root


@pytest.fixture
async def topics(make_topics) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Input, results, dead-letter and control topics of one test, one partition each."""
    names = await make_topics("in", "out", "in.DLT", "control", partitions=1)
    return dict(zip(("input", "results", "dead", "control"), names, strict=True))


@pytest.fixture
def settings(kafka_bootstrap: str, topics: dict[str, str], model_root: Path, unique_group: str) -> Settings:
    """A worker on this test's topics, default limits (1 MiB records, 4096 rows), model mlp."""
    return worker_settings_for(
        kafka_bootstrap,
        topics,
        model_root,
        unique_group,
        control_topic=topics["control"],
        worker_id="test-worker",
    )


def good(rid: str) -> bytes:
    """A valid one-row request for the MLP."""
    return encode_request({"x": np.full((1, FEATURES), 0.25, dtype=np.float32)}, id=rid)


def v2(rid: str, *inputs: dict[str, object], **extra: object) -> bytes:
    return orjson.dumps({"id": rid, "inputs": list(inputs), **extra})


async def score_between_good_ones(settings: Settings, hostile: Out) -> tuple[object, ...]:
    """Produce good, hostile, good on one partition, run a burst; (stage, reason) of the one dead letter.

    Asserts what must hold for any hostile record: exit 0, both good records scored, one dead
    letter holding the hostile record byte for byte, every offset committed.
    """
    records = [Out(b"before", good("before")), hostile, Out(b"after", good("after"))]
    await produce(settings.bootstrap_servers, settings.input_topic, records)

    assert 0 == await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=2))
    [letter] = await read_topic(settings.bootstrap_servers, settings.dead_letter_topic, expect=1)
    assert ["after", "before"] == sorted(r.id for r in results)
    assert (hostile.key, hostile.value) == (letter.key, letter.value)
    assert {0: 3} == await committed(settings.bootstrap_servers, settings.group_id, settings.input_topic, 1)
    return stage_of(letter), dict(letter.headers)[h.DLT_EXCEPTION_MESSAGE].decode()


# ---------------------------------------------------------------------------------------------
# Memory bombs that pass validation


async def test_numbers_beside_one_long_string_are_refused_before_any_array_is_built(settings: Settings) -> None:
    """Scenario:
    1. A request for the MLP declares FP32 [4096, 8] and sends 32 768 numbers, one of them a
       string of 400 000 characters (a 465 KB record that fits the model's signature).
    2. Converting it as one numpy array would take 4096 x 8 x 400 000 x 4 bytes (52 GB).
    It is dead-lettered at validate, saying FP32 cannot hold strings; the worker goes on."""
    data: list[object] = [1] * (4096 * FEATURES)
    data[5] = "a" * 400_000
    value = v2("bomb", {"name": "x", "datatype": "FP32", "shape": [4096, FEATURES], "data": data})

    stage, reason = await score_between_good_ones(settings, Out(b"bomb", value))

    assert ("validate", "input 'x': datatype FP32 cannot hold the values sent (strings)") == (stage, reason)


async def test_strings_of_very_different_lengths_are_held_as_objects(settings: Settings) -> None:
    """Scenario:
    1. A BYTES request sends one string of 400 000 characters and 100 000 one-character ones
       (an 800 KB record, valid as a V2 request).
    2. As a fixed-width numpy array it would take 100 001 x 400 000 x 4 bytes (160 GB).
    It decodes (as an object array) and is dead-lettered at validate because the MLP takes FP32."""
    data = ["a" * 400_000] + ["b"] * 100_000
    value = v2("strings", {"name": "x", "datatype": "BYTES", "shape": [1, len(data)], "data": data})

    stage, reason = await score_between_good_ones(settings, Out(b"strings", value))

    assert ("validate", "input 'x' is BYTES; model mlp version 2 takes FP32") == (stage, reason)


# ---------------------------------------------------------------------------------------------
# An output named twice


async def test_an_output_requested_twice_is_refused(settings: Settings) -> None:
    """A request naming the output `probabilities` 2 000 times (which would multiply its result)
    is dead-lettered at decode, naming the output."""
    value = encode_request({"x": np.zeros((1, FEATURES), np.float32)}, id="twice", outputs=["probabilities"] * 2000)

    stage, reason = await score_between_good_ones(settings, Out(b"twice", value))

    assert ("decode", "output 'probabilities' requested twice; name each output once") == (stage, reason)


# ---------------------------------------------------------------------------------------------
# Text that cannot be encoded


async def test_a_lone_surrogate_in_the_id_is_refused_under_a_canary(settings: Settings) -> None:
    """Scenario:
    1. The control topic sets a canary (version 2 at 50 %), so routing hashes each request id.
    2. With allow_nonfinite (Python's json parser reads what orjson refuses), a request whose
       id is the JSON escape \\ud800 (a lone surrogate, not encodable as UTF-8) arrives.
    It is dead-lettered at decode as text that is not valid Unicode; the worker goes on."""
    state = DesiredState("mlp", current="1", canary=Canary("2", 0.5))
    await produce(settings.bootstrap_servers, settings.control_topic, [Out(b"mlp", encode_state(state))])
    data = ", ".join(["NaN"] + ["0.5"] * (FEATURES - 1))
    value = b'{"id": "\\ud800", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [%s]}]}' % (
        data.encode()
    )

    stage, reason = await score_between_good_ones(settings.replace(allow_nonfinite=True), Out(b"surrogate", value))

    assert "decode" == stage
    assert "'id' holds text that cannot be encoded as UTF-8 (a lone surrogate)" in reason


# ---------------------------------------------------------------------------------------------
# Binary requests and header names


async def test_binary_request_with_the_header_spelled_as_over_http_is_scored(settings: Settings) -> None:
    """A binary request whose length header is spelled `Inference-Header-Content-Length` (the
    capitals of HTTP) is scored like one with the lower-case name."""
    header = v2("binary", {"name": "x", "datatype": "FP32", "shape": [1, 8], "parameters": {"binary_data_size": 32}})
    value = header + struct.pack("<8f", *([0.25] * FEATURES))
    records = [
        Out(b"binary", value, [("Inference-Header-Content-Length", str(len(header)).encode())]),
        Out(b"pinned", good("pinned"), [("Streamscore-Model-Version", b"1")]),
    ]
    await produce(settings.bootstrap_servers, settings.input_topic, records)

    assert 0 == await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=2))
    assert {"binary": "2", "pinned": "1"} == {r.id: r.model_version for r in results}
    assert [] == await read_topic(settings.bootstrap_servers, settings.dead_letter_topic, idle_s=1.0)


async def test_binary_request_without_its_length_header_names_the_header(settings: Settings) -> None:
    """A binary request sent without the length header is dead-lettered at decode, and the
    reason names the header a binary request needs."""
    header = v2("binary", {"name": "x", "datatype": "FP32", "shape": [1, 8], "parameters": {"binary_data_size": 32}})
    value = header + struct.pack("<8f", *([0.25] * FEATURES))

    stage, reason = await score_between_good_ones(settings, Out(b"binary", value))

    assert "decode" == stage
    assert "record header inference-header-content-length" in reason
