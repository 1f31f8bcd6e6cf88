"""Model versions that cannot be trusted, on the real broker: refused at load, never a crash.

Each test runs a worker whose registry holds a good version 1 and something wrong beside it; the
worker must keep scoring with what it can trust, exit 0 in burst mode, and say what it refused.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord

from artifacts.registry import Registry
from demo.models import make_mlp
from registry.push import push_model
from schemas import headers as h
from schemas.codec import encode_request
from tests.factories import make_external_data_model, make_gzip_bomb
from tests.harness import Out, header, model_cli, produce, read_topic, responses, run_burst, start_worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 3
BOMB_BYTES = 256 << 20  # expands to 256 MiB: inflating it whole is what the bound prevents


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with mlp version 1, pushed."""
    registry = Registry.at(tmp_path / "registry")
    push_model(registry, make_mlp(tmp_path / "mlp-1.onnx", scale=1.0), name="mlp", version="1")
    return tmp_path / "registry"


@pytest.fixture
async def settings(kafka_bootstrap: str, make_topics: Any, root: Path, unique_group: str) -> Settings:
    """A worker's settings on this test's topics and registry, following no control topic."""
    topic_in, topic_out, topic_dead = await make_topics("in", "out", "in.DLT", partitions=PARTITIONS)
    return Settings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=topic_in,
        results_topic=topic_out,
        dead_letter_topic=topic_dead,
        control_topic="",
        group_id=unique_group,
        model_root=str(root),
        model_name="mlp",
        log_format="console",
    )


def requests(prefix: str, count: int, pin: str | None = None) -> list[Out]:
    """`count` one-row requests with ids `<prefix><i>`, pinning version `pin` when given."""
    rows = np.random.default_rng(7).random((count, 8), dtype=np.float32)
    headers = [(h.MODEL_VERSION, pin.encode())] if pin else []
    return [
        Out(f"{prefix}{i}".encode(), encode_request({"x": rows[i : i + 1]}, id=f"{prefix}{i}"), headers)
        for i in range(count)
    ]


async def score(settings: Settings) -> tuple[dict[str, str], list[ConsumerRecord[bytes, bytes]]]:
    """20 requests without a pin and 10 pinning version 2, scored by a burst worker that must exit 0:
    the version that scored each result, by id, and the dead letters."""
    await produce(settings.bootstrap_servers, settings.input_topic, requests("u", 20) + requests("p", 10, pin="2"))

    assert 0 == await run_burst(settings)

    results = await read_topic(settings.bootstrap_servers, settings.results_topic, expect=20)
    dead = await read_topic(settings.bootstrap_servers, settings.dead_letter_topic, expect=10)
    return {r.id: str(r.model_version) for r in responses(results)}, dead


def reasons(dead: list[ConsumerRecord[bytes, bytes]]) -> set[str]:
    """The error message of each dead letter."""
    return {(header(record, h.DLT_EXCEPTION_MESSAGE) or b"").decode() for record in dead}


def plant_gzip_bomb(root: Path, tmp_path: Path) -> None:
    """Version 2: a gzip artifact that expands to 256 MiB, beside a manifest (of an older push, without
    per-file digests) that says the model has version 1's size."""
    manifest = json.loads((root / "mlp" / "1" / "manifest.json").read_bytes())
    manifest.pop("files", None)
    (root / "mlp" / "2").mkdir()
    (root / "mlp" / "2" / "model.onnx.gz").write_bytes(make_gzip_bomb(BOMB_BYTES))
    (root / "mlp" / "2" / "manifest.json").write_text(
        json.dumps({**manifest, "version": "2", "artifact": "model.onnx.gz", "compression": "gzip"})
    )


def plant_directory_as_model(root: Path, tmp_path: Path) -> None:
    """Version 2, pushed, whose artifact is then replaced by a directory of the same name."""
    push_model(Registry.at(root), make_mlp(tmp_path / "mlp-2.onnx", scale=3.0), name="mlp", version="2")
    artifact = next((root / "mlp" / "2").glob("model.onnx*"))
    artifact.unlink()
    artifact.mkdir()


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        pytest.param(plant_gzip_bomb, "expands past its manifest size", id="gzip-bomb"),
        pytest.param(plant_directory_as_model, "Is a directory", id="directory-as-model"),
    ],
)
async def test_an_artifact_that_raises_is_refused_and_version_1_keeps_serving(
    settings: Settings, root: Path, tmp_path: Path, plant: Callable[[Path, Path], None], reason: str
) -> None:
    """Scenario:
    1. Version 1 is good; version 2 (the highest) is a gzip bomb, or its model file is a directory.
    2. A burst worker gets 20 requests without a pin and 10 pinning version 2.
    It exits 0; the 20 are scored by version 1; the 10 are dead-lettered with the refusal's reason.
    """
    plant(root, tmp_path)

    scored, dead = await score(settings)

    assert {f"u{i}": "1" for i in range(20)} == scored
    assert 10 == len(dead)
    [why] = reasons(dead)
    assert "model mlp version 2" in why
    assert reason in why


async def test_a_version_whose_external_data_changed_after_push_is_refused(
    settings: Settings, root: Path, tmp_path: Path
) -> None:
    """Scenario:
    1. Version 2 keeps its weights in weights.bin and is pushed; then one byte of weights.bin changes.
    2. A burst worker gets 20 requests without a pin and 10 pinning version 2.
    The 20 are scored by version 1; the 10 are dead-lettered naming weights.bin's sha256 mismatch.
    """
    push_model(Registry.at(root), make_external_data_model(tmp_path / "exported", scale=3.0), name="mlp", version="2")
    weights = root / "mlp" / "2" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    scored, dead = await score(settings)

    assert {f"u{i}": "1" for i in range(20)} == scored
    [why] = reasons(dead)
    assert "model mlp version 2" in why
    assert "weights.bin has sha256" in why


async def test_a_version_copied_by_hand_is_served_and_logged_unverified(
    settings: Settings, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario:
    1. Version 2 is a plain mlp/2/model.onnx copied by hand: no manifest.
    2. A worker process scores 20 requests in burst mode, its logs in JSON.
    Version 2 scores them; the worker logs model_version_unverified for it; `model show` lists it as
    "unverified (no manifest)".
    """
    (root / "mlp" / "2").mkdir()
    shutil.copy(make_mlp(tmp_path / "mlp-2.onnx", scale=3.0), root / "mlp" / "2" / "model.onnx")
    await produce(settings.bootstrap_servers, settings.input_topic, requests("u", 20))
    logs = tmp_path / "worker.log"
    names = ("bootstrap_servers", "input_topic", "results_topic", "dead_letter_topic", "group_id", "model_root")
    worker = start_worker(
        {**{name: getattr(settings, name) for name in names}, "control_topic": "", "burst": True, "log_format": "json"},
        logs,
    )
    assert 0 == await asyncio.to_thread(worker.wait, 120)

    results = await read_topic(settings.bootstrap_servers, settings.results_topic, expect=20)
    assert {"2"} == {r.model_version for r in responses(results)}
    events = [json.loads(line) for line in logs.read_text().splitlines() if line.startswith("{")]
    [unverified] = [e for e in events if e["event"] == "model_version_unverified"]
    assert ("mlp", "2", "warning") == (unverified["model"], unverified["version"], unverified["level"])
    assert "streamscore model push" in unverified["hint"]
    capsys.readouterr()
    assert 0 == await model_cli(settings.replace(control_topic=f"control-{uuid.uuid4().hex[:8]}"), "show", "mlp")
    [line] = [line for line in capsys.readouterr().out.splitlines() if "version 2" in line]
    assert "unverified (no manifest)" in line


async def test_an_interrupted_push_is_invisible_to_the_worker_and_to_model_list(
    settings: Settings, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario:
    1. Pushing version 2 fails part way: the disk refuses the second file it writes.
    2. A push of version 3 crashed before its rename: its staging folder holds every file.
    3. A burst worker gets 20 requests; `model list` runs.
    The worker serves version 1 only, and `model list` shows version 1 only.
    """
    real_fsync, calls = os.fsync, []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    with monkeypatch.context() as patch, pytest.raises(OSError):
        patch.setattr(os, "fsync", failing_fsync)
        push_model(Registry.at(root), make_mlp(tmp_path / "mlp-2.onnx", scale=3.0), name="mlp", version="2")
    staging = root / "mlp" / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(root / "mlp" / "1", staging)
    manifest = json.loads((staging / "manifest.json").read_bytes())
    (staging / "manifest.json").write_text(json.dumps({**manifest, "version": "3"}))
    await produce(settings.bootstrap_servers, settings.input_topic, requests("u", 20))

    assert 0 == await run_burst(settings)

    results = await read_topic(settings.bootstrap_servers, settings.results_topic, expect=20)
    assert {"1"} == {r.model_version for r in responses(results)}
    capsys.readouterr()
    assert 0 == await model_cli(settings.replace(control_topic=f"control-{uuid.uuid4().hex[:8]}"), "list")
    [row] = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("mlp ")]
    assert ["mlp", "1"] == row[:2]
