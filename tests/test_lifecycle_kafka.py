"""Model versions in production, on the real broker: promote, rollback, canary, shadow, refusals."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artifacts.registry import Registry
from demo.models import make_mlp
from registry import bus
from registry.push import push_model
from schemas.codec import encode_request
from schemas.control import canary_share
from tests.harness import Out, model_cli, produce, read_topic, responses, start_worker, stop_worker
from worker.runner import Worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture
def registry_root(tmp_path: Path) -> Path:
    """A registry with mlp versions 1 and 2 (same signature, different outputs)."""
    root = tmp_path / "registry"
    registry = Registry.at(root)
    for version, scale in (("1", 1.0), ("2", 3.0)):
        source = make_mlp(tmp_path / f"mlp-{version}.onnx", scale=scale)
        push_model(registry, source, name="mlp", version=version)
    return root


@pytest.fixture
async def env(kafka_bootstrap: str, make_topics: Any, registry_root: Path, unique_group: str) -> dict[str, Any]:
    """Topics (requests, results, shadow, dead letters), a control topic of its own, settings."""
    topic_in, topic_out, topic_shadow, topic_dead = await make_topics(
        "in", "out", "out.shadow", "in.DLT", partitions=PARTITIONS
    )
    control = f"control-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=topic_in,
        results_topic=topic_out,
        shadow_topic=topic_shadow,
        dead_letter_topic=topic_dead,
        control_topic=control,
        group_id=unique_group,
        model_root=str(registry_root),
        model_name="mlp",
        log_format="console",
    )
    return {"settings": settings, "registry": registry_root}


def requests(count: int, prefix: str = "r") -> list[Out]:
    rows = np.random.default_rng(7).random((count, 8), dtype=np.float32)
    return [
        Out(f"{prefix}{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"{prefix}{i}")) for i in range(count)
    ]


async def run_burst(settings: Settings) -> None:
    assert 0 == await asyncio.wait_for(Worker(settings.replace(burst=True)).run(), 120)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
async def test_promote_mid_stream_switches_each_worker_once(
    env: dict[str, Any], tmp_path: Path, guarantee: str
) -> None:
    """Scenario:
    1. Version 1 is promoted; two worker processes score a stream of 6 000 requests.
    2. Mid-stream, version 2 is promoted.
    Every request has exactly one result, from version 1 or 2; on every input partition the
    versions go 1...1 then 2...2 (each worker switches once, between batches).
    """
    settings: Settings = env["settings"]
    records = requests(6000)
    assert 0 == await model_cli(settings, "promote", "mlp", "1")
    await produce(settings.bootstrap_servers, settings.input_topic, records[:3000])
    logs = tmp_path / "worker.log"
    process = start_worker(
        {
            "bootstrap_servers": settings.bootstrap_servers,
            "input_topic": settings.input_topic,
            "results_topic": settings.results_topic,
            "dead_letter_topic": settings.dead_letter_topic,
            "control_topic": settings.control_topic,
            "group_id": settings.group_id,
            "model_root": settings.model_root,
            "model_name": "mlp",
            "processes": 2,
            "log_format": "json",
            "max_in_flight": 200,
            "guarantee": guarantee,
        },
        logs,
    )
    try:
        await wait_for_group(logs, processes=2)  # a rebalance after the promotion could move a partition back
        await read_topic(settings.bootstrap_servers, settings.results_topic, expect=1000, timeout_s=120)
        assert 0 == await model_cli(settings, "promote", "mlp", "2")
        await produce(settings.bootstrap_servers, settings.input_topic, records[3000:])
        results = await read_topic(settings.bootstrap_servers, settings.results_topic, expect=6000, timeout_s=180)
    finally:
        assert 0 == await asyncio.to_thread(stop_worker, process)

    counts = Counter(r.id for r in responses(results))
    assert {f"r{i}" for i in range(6000)} == set(counts)
    assert {1} == set(counts.values())
    version_of = {r.id: r.model_version for r in responses(results)}
    assert {"1", "2"} == set(version_of.values())
    inputs = await read_topic(settings.bootstrap_servers, settings.input_topic, expect=6000)
    by_partition: dict[int, list[str]] = defaultdict(list)
    for record in sorted(inputs, key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append(version_of[record.key.decode()])
    for partition, versions in by_partition.items():
        switch = versions.index("2") if "2" in versions else len(versions)
        assert ["1"] * switch + ["2"] * (len(versions) - switch) == versions, f"partition {partition}"
    switches = [json.loads(line) for line in logs.read_text().splitlines() if '"model_switched"' in line]
    assert 2 == len(switches), switches
    assert {("1", "2")} == {(s["previous"], s["current"]) for s in switches}


async def test_rollback_serves_the_previous_version_again(env: dict[str, Any]) -> None:
    """Promote 1, promote 2, roll back: requests are scored by version 1, and the version served
    before any promotion (the highest, 2) is the next rollback target."""
    settings: Settings = env["settings"]
    for args in (("promote", "mlp", "1"), ("promote", "mlp", "2"), ("rollback", "mlp")):
        assert 0 == await model_cli(settings, *args)
    await produce(settings.bootstrap_servers, settings.input_topic, requests(50))

    await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=50))
    assert {"1"} == {r.model_version for r in results}
    states = await bus.read_states(settings, settings.control_topic)
    assert ("1", ("2",)) == (states["mlp"].current, states["mlp"].previous)


async def test_canary_takes_its_share_by_request_id(env: dict[str, Any]) -> None:
    """A 20 % canary scores exactly the requests whose id hashes under 0.2, about 20 % of them."""
    settings: Settings = env["settings"]
    assert 0 == await model_cli(settings, "promote", "mlp", "1")
    assert 0 == await model_cli(settings, "canary", "mlp", "2", "--weight", "0.2")
    await produce(settings.bootstrap_servers, settings.input_topic, requests(2000))

    await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=2000))
    canary = {r.id for r in results if r.model_version == "2"}
    assert {f"r{i}" for i in range(2000) if canary_share(f"r{i}") < 0.2} == canary
    assert abs(len(canary) / 2000 - 0.2) < 4 * (0.2 * 0.8 / 2000) ** 0.5  # within four standard deviations


async def test_shadow_scores_alongside_and_compare_reports_the_difference(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """With version 2 as shadow, every request gets a result from 1 and a shadow result from 2,
    and `model compare` pairs them and reports that they disagree."""
    settings: Settings = env["settings"]
    assert 0 == await model_cli(settings, "promote", "mlp", "1")
    assert 0 == await model_cli(settings, "shadow", "mlp", "2")
    await produce(settings.bootstrap_servers, settings.input_topic, requests(300))

    await run_burst(settings)

    results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=300))
    shadow = responses(await read_topic(settings.bootstrap_servers, settings.shadow_topic_name, expect=300))
    assert {"1"} == {r.model_version for r in results}
    assert {"2"} == {r.model_version for r in shadow}
    assert {r.id for r in results} == {r.id for r in shadow}
    capsys.readouterr()
    assert 0 == await model_cli(
        settings,
        "compare",
        "mlp",
        "--results-topic",
        settings.results_topic,
        "--shadow-topic",
        settings.shadow_topic_name,
        "--json",
    )
    report = json.loads(capsys.readouterr().out)
    assert 300 == report["pairs"]
    assert 0 < report["disagreement"] <= 1


async def test_corrupted_or_pickled_versions_are_refused_at_load_and_the_old_one_keeps_serving(
    env: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario:
    1. Version 1 serves; a worker runs.
    2. Version 2's artifact gets one flipped byte on disk; version 3 is a pickle planted by hand
       as `model.onnx` beside a copy of a real manifest. Each is promoted in turn.
    3. Requests keep being scored by version 1; the worker's status names both refusals.
    """
    settings: Settings = env["settings"]
    root = Path(settings.model_root)
    artifact = next((root / "mlp" / "2").glob("model.onnx*"))
    corrupted = bytearray(artifact.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    artifact.write_bytes(bytes(corrupted))
    (root / "mlp" / "3").mkdir()
    (root / "mlp" / "3" / "model.onnx").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle header
    manifest = json.loads((root / "mlp" / "1" / "manifest.json").read_text())
    (root / "mlp" / "3" / "manifest.json").write_text(
        json.dumps({**manifest, "version": "3", "artifact": "model.onnx", "compression": "none"})
    )
    assert 0 == await model_cli(settings, "promote", "mlp", "1")
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        await produce(settings.bootstrap_servers, settings.input_topic, requests(100, "a"))
        await read_topic(settings.bootstrap_servers, settings.results_topic, expect=100)
        assert 0 == await model_cli(settings, "promote", "mlp", "2")
        assert 0 == await model_cli(settings, "promote", "mlp", "3")
        await wait_for_status(settings, lambda s: {"2", "3"} <= set(s.failed))
        await produce(settings.bootstrap_servers, settings.input_topic, requests(100, "b"))
        results = responses(await read_topic(settings.bootstrap_servers, settings.results_topic, expect=200))
    finally:
        worker.request_stop()
        assert 0 == await asyncio.wait_for(task, 60)

    assert {"1"} == {r.model_version for r in results}
    [status] = [s for s in await bus.read_statuses(settings, settings.control_topic) if s.model == "mlp"]
    assert "1" == status.current
    assert "sha256" in status.failed["2"]
    capsys.readouterr()
    assert 0 == await model_cli(settings, "show", "mlp")
    shown = capsys.readouterr().out
    assert "refused: 2:" in shown


async def wait_for_group(logs: Path, processes: int, timeout_s: float = 60.0) -> None:
    """Wait until `processes` worker processes have partitions (the group is complete)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        workers = set()
        for line in logs.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "partitions_assigned":
                workers.add(event.get("worker"))
        if len(workers) >= processes:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the group did not reach {processes} members in {timeout_s} s")


async def wait_for_status(settings: Settings, condition: Any, timeout_s: float = 60.0) -> None:
    """Wait until this test's worker reports a status that satisfies `condition`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        statuses = await bus.read_statuses(settings, settings.control_topic)
        if any(s.model == "mlp" and condition(s) for s in statuses):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no such status after {timeout_s} s: {statuses}")
