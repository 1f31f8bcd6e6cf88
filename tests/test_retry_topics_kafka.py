"""Retry topics on the real broker: a record that may be scored later waits on a retry topic, in both guarantees."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord

from demo.models import install_model, make_mlp
from schemas import headers as h
from schemas.codec import encode_request
from tests.harness import Out, committed, end_offsets, header, produce, read_topic, responses, run_burst
from transport.admin import create_topics
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 2
FIRST_DELAY_MS, SECOND_DELAY_MS = 3000, 1000


@pytest.fixture(params=["at-least-once", "exactly-once"])
async def settings(request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path: Path, unique_group: str) -> Settings:
    """A worker with two retry topics (3 s, then 1 s: three attempts in all) on fresh topics, mlp 1 its model."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    retry = [f"{prefix}-in-retry-{FIRST_DELAY_MS}", f"{prefix}-in-retry-{SECOND_DELAY_MS}"]
    await create_topics(kafka_bootstrap, [f"{prefix}-in", f"{prefix}-out", f"{prefix}-in.DLT", *retry], PARTITIONS)
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=f"{prefix}-in",
        results_topic=f"{prefix}-out",
        group_id=unique_group,
        control_topic="",
        model_root=str(root),
        model_name="mlp",
        retry_topic_delays_ms=(str(FIRST_DELAY_MS), str(SECOND_DELAY_MS)),
        guarantee=request.param,
        commit_interval_ms=200,
        log_format="console",
    )


def request(request_id: str, version: str | None = None) -> Out:
    row = np.random.default_rng(len(request_id)).random((1, 8), dtype=np.float32)
    pinned = [] if version is None else [(h.MODEL_VERSION, version.encode())]
    return Out(request_id.encode(), encode_request({"x": row}, id=request_id), [("traceparent", b"00-1"), *pinned])


def only(records: list[ConsumerRecord[bytes, bytes]], key: bytes) -> ConsumerRecord[bytes, bytes]:
    [found] = [r for r in records if r.key == key]
    return found


def due_of(record: ConsumerRecord[bytes, bytes]) -> int:
    raw = header(record, h.RETRY_BACKOFF_TIMESTAMP)
    assert raw is not None
    return h.decode_big_integer(raw)


async def test_a_record_for_a_version_not_pulled_yet_waits_on_a_retry_topic_and_is_scored_once_it_is(
    settings: Settings,
) -> None:
    """Step by step: "late" pins mlp version 2, which is not on the worker yet: it goes to the 3 s retry
    topic. Version 2 is installed meanwhile, and 20 more requests arrive: they are scored while "late"
    waits (the loop never sleeps). When due, "late" is scored by version 2, once; everything is committed."""
    s = settings
    await produce(
        s.bootstrap_servers, s.input_topic, [request(f"early-{i}") for i in range(10)] + [request("late", "2")]
    )

    async def meanwhile() -> list[Out]:
        while sum((await end_offsets(s.bootstrap_servers, s.input_topics[1], PARTITIONS)).values()) < 1:
            await asyncio.sleep(0.1)
        install_model(Path(s.model_root), "mlp", "2", make_mlp, seed=2)
        more = [request(f"more-{i}") for i in range(20)]
        await produce(s.bootstrap_servers, s.input_topic, more)
        return more

    code, _ = await asyncio.gather(run_burst(s), meanwhile())

    assert 0 == code
    results = await read_topic(s.bootstrap_servers, s.results_topic, expect=31)
    assert {**{f"early-{i}": 1 for i in range(10)}, **{f"more-{i}": 1 for i in range(20)}, "late": 1} == Counter(
        r.id for r in responses(results)
    )
    [waited] = await read_topic(s.bootstrap_servers, s.input_topics[1], expect=1)
    assert (b"late", 2) == (waited.key, h.decode_int(header(waited, h.RETRY_ATTEMPTS) or b""))
    [scored] = [r for r in responses(results) if r.id == "late"]
    assert "2" == scored.model_version
    assert only(results, b"late").timestamp >= due_of(waited)  # consumed when due, not before
    assert all(r.timestamp < due_of(waited) for r in results if r.key.startswith(b"more-"))
    assert [] == await read_topic(s.bootstrap_servers, s.dead_letter_topic_name, idle_s=1.0)
    for topic, count in [(s.input_topic, 31), (s.input_topics[1], 1)]:
        offsets = await committed(s.bootstrap_servers, s.group_id, topic, PARTITIONS)
        assert count == sum(offset or 0 for offset in offsets.values())


async def test_a_record_that_never_succeeds_is_dead_lettered_after_its_last_attempt(settings: Settings) -> None:
    """ "never" pins a version that never comes: attempt 1 on the input topic, 2 on the 3 s topic, 3 on
    the 1 s topic, then the dead-letter topic, its value, key and own headers byte for byte, Spring's
    retry headers and the attempts counted; each attempt made no sooner than it was due."""
    s = settings
    sent = request("never", "9")
    await produce(s.bootstrap_servers, s.input_topic, [sent, request("fine")])

    assert 0 == await run_burst(s)

    [first] = await read_topic(s.bootstrap_servers, s.input_topics[1], expect=1)
    [second] = await read_topic(s.bootstrap_servers, s.input_topics[2], expect=1)
    [letter] = await read_topic(s.bootstrap_servers, s.dead_letter_topic_name, expect=1)
    [original] = [r for r in await read_topic(s.bootstrap_servers, s.input_topic, expect=2) if r.key == b"never"]
    assert (sent.key, sent.value) == (letter.key, letter.value)
    assert [("traceparent", b"00-1"), (h.MODEL_VERSION, b"9")] == list(letter.headers[:2])
    assert [2, 3] == [h.decode_int(header(r, h.RETRY_ATTEMPTS) or b"") for r in (first, second)]
    assert [original.timestamp] * 3 == [
        h.decode_big_integer(header(r, h.RETRY_ORIGINAL_TIMESTAMP) or b"") for r in (first, second, letter)
    ]
    assert second.timestamp >= due_of(first) and letter.timestamp >= due_of(second)
    assert b"3" == header(letter, h.DLT_ATTEMPTS)
    assert s.input_topics[2].encode() == header(letter, h.DLT_ORIGINAL_TOPIC)
    assert b"ModelUnavailableError" == header(letter, h.DLT_ERROR)
    assert ["fine"] == [r.id for r in responses(await read_topic(s.bootstrap_servers, s.results_topic, expect=1))]
