"""Hardening on the real broker: no record, no signal and no broker state stops a partition or loses a record.

Each test reproduces one way a worker used to crash-loop, duplicate or dead-letter valid records,
and checks the rule: every record ends as its result or its dead letter, the worker goes on, and
nothing is committed past a record that has neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artifacts.registry import Registry
from demo.models import install_model, make_mlp
from registry.push import push_model
from schemas import headers as h
from schemas.codec import decode_response, encode_request
from schemas.control import DesiredState, encode_state
from tests.factories import flip_byte
from tests.harness import (
    Out,
    committed,
    end_offsets,
    header,
    produce,
    read_topic,
    responses,
    run_burst,
    stage_of,
    start_worker,
    worker_children,
    worker_settings_for,
)
from transport.admin import create_topics
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 2


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """mlp version 1 (FP32 x [N, 8])."""
    root = tmp_path / "models"
    install_model(root, "mlp", "1", make_mlp)
    return root


@pytest.fixture
async def topics(kafka_bootstrap: str) -> dict[str, str]:
    """Fresh input, results and dead-letter topics of one test."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    names = {"input": f"{prefix}-in", "results": f"{prefix}-out", "dead": f"{prefix}-in.DLT"}
    await create_topics(kafka_bootstrap, list(names.values()), PARTITIONS)
    return names


@pytest.fixture
def settings(kafka_bootstrap: str, topics: dict[str, str], model_root: Path, unique_group: str) -> Settings:
    """A worker on this test's topics, the mlp its default model, no control topic."""
    return worker_settings_for(
        kafka_bootstrap,
        topics,
        model_root,
        unique_group,
        control_topic="",
        worker_id="hardening-worker",
        commit_interval_ms=100,
    )


def good(i: int) -> Out:
    """A valid one-row request with id ok-<i>, on partition 0."""
    row = np.full((1, 8), i % 7 / 10, dtype=np.float32)
    return Out(f"ok-{i}".encode(), encode_request({"x": row}, id=f"ok-{i}"), partition=0)


def ids_of(records: list[Any]) -> list[str]:
    return sorted(decode_response(r.value).id for r in records)


# ---------------------------------------------------------------------------------------------
# 1, 2: dead letters the producer or the broker could not take


@pytest.mark.parametrize(
    ("size", "compression"),
    [
        pytest.param(1_048_000, None, id="1048000-bytes-not-json"),
        pytest.param(1_204_424, "gzip", id="1204424-bytes-gzip-compressed"),
    ],
)
async def test_a_dead_letter_too_large_for_its_topic_goes_without_the_value(
    settings: Settings, topics: dict[str, str], size: int, compression: str | None
) -> None:
    """Step by step: a value larger than the dead-letter topic takes arrives between two good requests
    (compressed, so that the broker took it); it is dead-lettered without its value, with a header
    saying its size and where to read it; the good ones are scored; every offset is committed; exit 0."""
    poison = Out(b"poison", b"\x01" + b"p" * (size - 1), partition=0)
    records = [good(1), poison, good(2)]
    await produce(
        settings.bootstrap_servers, topics["input"], records, compression_type=compression, max_request_size=2**21
    )

    assert 0 == await run_burst(settings)

    [letter] = await read_topic(settings.bootstrap_servers, topics["dead"], expect=1)
    assert (b"poison", b"") == (letter.key, letter.value)
    omitted = header(letter, h.DLT_VALUE_OMITTED)
    assert omitted is not None and omitted.startswith(f"{size} bytes".encode())
    assert f"{topics['input']}[0]@1".encode() in omitted
    assert "decode" == stage_of(letter)
    assert ["ok-1", "ok-2"] == ids_of(await read_topic(settings.bootstrap_servers, topics["results"], expect=2))
    assert {0: 3, 1: None} == await committed(settings.bootstrap_servers, settings.group_id, topics["input"], 2)


async def test_a_tombstone_is_dead_lettered_and_its_partition_goes_on(
    settings: Settings, topics: dict[str, str]
) -> None:
    """A record with a null key and a null value (what `kcat -Z` sends) is dead-lettered, marked as a
    tombstone, with an empty value; the request after it is scored."""
    await produce(settings.bootstrap_servers, topics["input"], [Out(None, None, partition=0), good(1)])

    assert 0 == await run_burst(settings)

    [letter] = await read_topic(settings.bootstrap_servers, topics["dead"], expect=1)
    assert (None, b"") == (letter.key, letter.value)
    assert header(letter, h.DLT_TOMBSTONE) is not None
    assert ["ok-1"] == ids_of(await read_topic(settings.bootstrap_servers, topics["results"], expect=1))


# ---------------------------------------------------------------------------------------------
# 3: every codec Kafka defines


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_input_and_control_records_of_every_codec_are_read(
    settings: Settings, topics: dict[str, str], model_root: Path, codec: str
) -> None:
    """Requests and a control record compressed with `codec` (as Java producers send them) are read:
    the promotion to version 2 is applied and every request scored by it; results go out in `codec` too."""
    install_model(model_root, "mlp", "2", make_mlp, scale=2.0)
    control = f"control-{uuid.uuid4().hex[:8]}"
    await create_topics(settings.bootstrap_servers, [control])
    state = DesiredState("mlp", current="1").promote("2")
    await produce(settings.bootstrap_servers, control, [Out(b"mlp", encode_state(state))], compression_type=codec)
    await produce(settings.bootstrap_servers, topics["input"], [good(i) for i in range(20)], compression_type=codec)

    assert 0 == await run_burst(settings.replace(control_topic=control, compression=codec))

    results = responses(await read_topic(settings.bootstrap_servers, topics["results"], expect=20))
    assert [f"ok-{i}" for i in range(20)] == sorted((r.id for r in results), key=lambda i: int(i[3:]))
    assert {"2"} == {r.model_version for r in results}


# ---------------------------------------------------------------------------------------------
# 7: a pinned default version that cannot be loaded


async def test_a_pinned_default_version_that_fails_to_load_exits_2(settings: Settings, tmp_path: Path) -> None:
    """The version the settings pin is corrupted: the worker refuses it once, says so, and exits 2
    (restarting would not help) instead of refusing it in a loop."""
    registry = Registry.at(tmp_path / "registry")
    for version in ("1", "2"):
        push_model(registry, make_mlp(tmp_path / f"{version}.onnx", scale=float(version)), name="mlp", version=version)
    flip_byte(tmp_path / "registry", "2")
    log = tmp_path / "worker.log"
    env = {**worker_settings(settings), "model_root": tmp_path / "registry", "model_version": "2"}

    process = start_worker(env, log)
    code = await asyncio.to_thread(process.wait, 60)

    events = [e.get("event") for e in json_lines(log)]
    assert 2 == code
    assert 1 <= events.count("model_version_refused") <= 2
    assert "worker_unusable" in events


# ---------------------------------------------------------------------------------------------
# 9: one signal, however delivered, is one graceful stop


async def test_sigterm_to_the_process_group_is_a_graceful_stop(
    settings: Settings, topics: dict[str, str], tmp_path: Path
) -> None:
    """Step by step: two worker processes score a stream; SIGTERM goes to the whole process group (as
    systemd sends it), so each child gets it twice (its own and the parent's); every process drains
    and commits, the group exits 0; a second run finishes the stream; no id is scored twice."""
    count = 6000
    rows = np.random.default_rng(1).random((count, 8), dtype=np.float32)
    records = [Out(f"id-{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"id-{i}")) for i in range(count)]
    await produce(settings.bootstrap_servers, topics["input"], records)
    env = {**worker_settings(settings), "processes": 2, "max_in_flight": 200}
    process = start_worker(env, tmp_path / "worker.log", new_session=True)
    try:
        await wait_for_results(settings, topics["results"], count // 4)
        assert 2 == len(worker_children(process.pid))
        os.killpg(process.pid, signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert 0 == code
    assert 0 == await run_burst(settings)

    ids = Counter(
        r.id for r in responses(await read_topic(settings.bootstrap_servers, topics["results"], expect=count))
    )
    assert {f"id-{i}" for i in range(count)} == set(ids)
    assert {1} == set(ids.values())


# ---------------------------------------------------------------------------------------------
# 10: a fatal error commits what was acknowledged


async def test_a_fatal_error_still_commits_what_was_acknowledged(
    kafka_bootstrap: str, settings: Settings, topics: dict[str, str]
) -> None:
    """Step by step: the dead-letter topic takes no record over 200 bytes, so a poison record on
    partition 0 can never be dead-lettered and the worker stops (exit 1). Before it stops, the
    results acknowledged on partition 1 are committed; on partition 0 nothing past the poison is."""
    tiny = f"{topics['dead']}-tiny"
    await create_topics(kafka_bootstrap, [tiny], configs={"max.message.bytes": "200"})
    records = [good(0), Out(b"poison", b"not json", partition=0), good(1)]
    records += [Out(f"p1-{i}".encode(), good(100 + i).value, partition=1) for i in range(20)]
    await produce(kafka_bootstrap, topics["input"], records)

    assert 1 == await run_burst(settings.replace(dead_letter_topic=tiny))

    offsets = await committed(kafka_bootstrap, settings.group_id, topics["input"], PARTITIONS)
    assert 20 == offsets[1]
    assert offsets[0] is None or offsets[0] <= 1


# ---------------------------------------------------------------------------------------------
# 11: the broker's failure is never the record's


async def test_an_unwritable_results_topic_pauses_the_worker_and_dead_letters_nothing(
    kafka_bootstrap: str, settings: Settings, topics: dict[str, str]
) -> None:
    """Step by step: the results topic does not exist yet (the broker creates none by itself), so no
    result can be written; for several times the old retry budget the worker keeps every record,
    commits nothing and dead-letters nothing; once the topic exists, every result is written and
    committed. (On a cluster, `min.insync.replicas` not met fails the same way: tests/test_faults_cluster.)"""
    results = f"{topics['results']}-later"
    await produce(kafka_bootstrap, topics["input"], [good(i) for i in range(10)])
    broken = settings.replace(results_topic=results, retry_attempts=2, retry_max_s=1.0, request_timeout_ms=2000)
    worker = asyncio.create_task(run_burst(broken))
    try:
        await asyncio.sleep(8)
        assert not worker.done()
        assert [] == await read_topic(kafka_bootstrap, topics["dead"], idle_s=0.5)
        assert {0: None, 1: None} == await committed(kafka_bootstrap, settings.group_id, topics["input"], PARTITIONS)
        await create_topics(kafka_bootstrap, [results], PARTITIONS)
        assert 0 == await asyncio.wait_for(worker, 90)
    finally:
        worker.cancel()

    written = ids_of(await read_topic(kafka_bootstrap, results, expect=10))
    assert [f"ok-{i}" for i in range(10)] == sorted(written, key=lambda i: int(i[3:]))
    assert [] == await read_topic(kafka_bootstrap, topics["dead"], idle_s=0.5)
    assert {0: 10, 1: None} == await committed(kafka_bootstrap, settings.group_id, topics["input"], PARTITIONS)


# ---------------------------------------------------------------------------------------------
# 13: control records are checked before they are applied


async def test_invalid_control_records_are_skipped_and_the_valid_one_applied(
    settings: Settings, topics: dict[str, str], model_root: Path, tmp_path: Path
) -> None:
    """Records that are not desired states (null JSON, a list, a name that climbs out of the registry, a
    canary weight of 5, a record keyed by another model) are skipped and logged; the valid promotion
    after them is applied, and every request is scored by it."""
    install_model(model_root, "mlp", "2", make_mlp, scale=2.0)
    control = f"control-{uuid.uuid4().hex[:8]}"
    await create_topics(settings.bootstrap_servers, [control])
    bad = [
        b"null",
        b"[1]",
        b'{"model": "../x", "current": "1"}',
        b'{"model": "mlp", "canary": {"version": "2", "weight": 5}}',
    ]
    valid = encode_state(DesiredState("mlp", current="1").promote("2"))
    records = [Out(b"mlp", raw) for raw in bad] + [Out(b"other", valid), Out(b"mlp", valid)]
    await produce(settings.bootstrap_servers, control, records)
    await produce(settings.bootstrap_servers, topics["input"], [good(i) for i in range(5)])
    log = tmp_path / "worker.log"

    process = start_worker({**worker_settings(settings), "control_topic": control, "burst": True}, log)
    assert 0 == await asyncio.to_thread(process.wait, 90)

    results = responses(await read_topic(settings.bootstrap_servers, topics["results"], expect=5))
    assert {"2"} == {r.model_version for r in results}
    skipped = [e for e in json_lines(log) if e.get("event") == "control_record_skipped"]
    assert len(bad) + 1 == len(skipped)


# ---------------------------------------------------------------------------------------------
# helpers


def worker_settings(settings: Settings) -> dict[str, Any]:
    """`settings` as the environment of a `streamscore worker` subprocess (JSON logs)."""
    names = ("bootstrap_servers", "input_topic", "results_topic", "dead_letter_topic", "group_id", "control_topic")
    values: dict[str, Any] = {name: getattr(settings, name) for name in names}
    return {**values, "model_root": settings.model_root, "model_name": "mlp", "log_format": "json"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a worker's log file (other lines skipped)."""
    found = []
    for line in path.read_bytes().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


async def wait_for_results(settings: Settings, topic: str, at_least: int, timeout_s: float = 90.0) -> None:
    """Wait until `topic` holds at least `at_least` records."""
    async with asyncio.timeout(timeout_s):
        while sum((await end_offsets(settings.bootstrap_servers, topic, PARTITIONS)).values()) < at_least:
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# 4: memory in flight is bounded in bytes as well as records

FLOOD_RECORDS = 120
FLOOD_ROWS = 4000  # x 32 features: about 0.8 MB of JSON per request
FLOOD_RSS_BOUND_MB = 300  # the README's figure for the defaults (64 MiB in flight): see "Guarantees and limits"


async def test_a_flood_of_maximum_size_records_stays_within_the_memory_bound(
    settings: Settings, topics: dict[str, str], model_root: Path, tmp_path: Path
) -> None:
    """Step by step: 120 requests of about 0.8 MB each (4,000 rows of 32 features) wait on the input;
    one worker process with the default in-flight limits scores them all; its resident memory,
    sampled every 50 ms, never passes the bound the README states."""
    install_model(model_root, "wide", "1", make_mlp, features=32, hidden=1024)  # slower than decoding: records pile up
    rows = np.round(np.random.default_rng(3).random((FLOOD_ROWS, 32)), 3).astype(np.float32)
    value = encode_request({"x": rows})
    assert 700_000 < len(value) < settings.max_record_bytes
    records = [Out(f"big-{i}".encode(), value, [(h.MODEL, b"wide")]) for i in range(FLOOD_RECORDS)]
    await produce(settings.bootstrap_servers, topics["input"], records, max_request_size=2**21)
    log = tmp_path / "worker.log"

    process = start_worker({**worker_settings(settings), "burst": True}, log)
    peak = await asyncio.to_thread(peak_rss_mb, process)

    assert 0 == process.returncode
    results = await read_topic(settings.bootstrap_servers, topics["results"], expect=FLOOD_RECORDS)
    assert FLOOD_RECORDS == len(results)
    assert peak < FLOOD_RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"


def peak_rss_mb(process: Any, interval_s: float = 0.05) -> float:
    """The largest resident memory of the worker processes a supervisor runs, until it exits."""
    peak = 0.0
    while process.poll() is None:
        for pid in worker_children(process.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            peak = max(peak, kb / 1024)
        time.sleep(interval_s)
    return peak
