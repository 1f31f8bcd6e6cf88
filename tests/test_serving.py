"""What a worker serves, changed by `Serving`: verified loads, refusals kept out, switches reported."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import worker.serving
from schemas.control import Canary, DesiredState, WorkerStatus, decode_status
from tests.factories import flip_byte, make_mlp_registry
from worker.serving import Serving
from worker.store import ModelStore

WORKER = "worker-1"


class Published:
    """A fake `publish`: keeps every (key, value) it is given."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    async def __call__(self, key: bytes, value: bytes) -> None:
        self.records.append((key, value))

    def statuses(self) -> list[WorkerStatus]:
        """The statuses published, keys checked, timestamps blanked."""
        assert all(key == f"mlp/{WORKER}".encode() for key, _ in self.records)
        return [dataclasses.replace(decode_status(value), at="") for _, value in self.records]


class Logs:
    """Stands in for worker.serving's logger (structlog caches the real one): keeps (level, event, facts)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **facts: self.events.append((level, event, facts))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with mlp versions 1, 2 and 3 (sha256 checked at load)."""
    return make_mlp_registry(tmp_path)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def serving(root: Path, executor: ThreadPoolExecutor, published: Published) -> Serving:
    return Serving(ModelStore(root, default_name="mlp"), executor, WORKER, published)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Logs:
    logs = Logs()
    monkeypatch.setattr(worker.serving, "log", logs)
    return logs


def restore(root: Path, version: str, content: bytes) -> None:
    next((root / "mlp" / version).glob("model.onnx*")).write_bytes(content)


async def test_load_default_skips_a_corrupted_version(root: Path, serving: Serving, logs: Logs) -> None:
    """Version 3 is corrupted: it is refused and logged, and version 2, the next highest, serves."""
    flip_byte(root, "3")

    model = await serving.load_default()

    assert ("mlp", "2") == (model.name, model.version)
    assert "2" == serving.lineup.serving("mlp")
    assert [("mlp", "3")] == list(serving.lineup.refused)
    assert [("error", "model_version_refused", "3")] == [(lvl, e, f["version"]) for lvl, e, f in logs.events]


async def test_a_promotion_switches_and_reports(serving: Serving, published: Published) -> None:
    """Serving 3, a state promoting 2 loads 2, switches once, and publishes a status naming 2 current."""
    await serving.load_default()

    await serving.apply(DesiredState("mlp", current="2", previous=("3",)))

    assert (1, "2") == (serving.switches, serving.lineup.serving("mlp"))
    assert ("mlp", "2") in serving.lineup.loaded
    assert [WorkerStatus("mlp", WORKER, current="2")] == published.statuses()


async def test_a_corrupted_current_keeps_the_old_version_until_a_retry_loads_it(
    root: Path, serving: Serving, published: Published
) -> None:
    """Step by step: 3 serves; a state names 2, which is corrupted; 3 keeps serving and 2 is reported
    failed; 2 is repaired; the same state applied again loads 2, switches, and nothing is failed."""
    await serving.load_default()
    content = flip_byte(root, "2")
    state = DesiredState("mlp", current="2", previous=("3",))

    await serving.apply(state)

    assert (0, "3") == (serving.switches, serving.lineup.serving("mlp"))
    [status] = published.statuses()
    assert ("3", ["2"]) == (status.current, list(status.failed))

    restore(root, "2", content)
    await serving.apply(state)

    assert (1, "2") == (serving.switches, serving.lineup.serving("mlp"))
    assert WorkerStatus("mlp", WORKER, current="2") == published.statuses()[-1]


@pytest.mark.parametrize(
    ("state", "corrupted", "effective"),
    [
        pytest.param(
            DesiredState("mlp", current="3", canary=Canary("2", 0.5)),
            "2",
            DesiredState("mlp", current="3"),
            id="canary-refused",
        ),
        pytest.param(
            DesiredState("mlp", current="3", shadow="2"), "2", DesiredState("mlp", current="3"), id="shadow-refused"
        ),
        pytest.param(
            DesiredState("mlp", current="3", canary=Canary("1", 0.5), shadow="2"),
            "1",
            DesiredState("mlp", current="3", shadow="2"),
            id="canary-refused-shadow-kept",
        ),
        pytest.param(
            DesiredState("mlp", current="3", canary=Canary("2", 0.5), shadow="1"),
            None,
            DesiredState("mlp", current="3", canary=Canary("2", 0.5), shadow="1"),
            id="all-load",
        ),
    ],
)
async def test_a_canary_or_shadow_that_fails_to_load_is_dropped(
    root: Path,
    serving: Serving,
    published: Published,
    state: DesiredState,
    corrupted: str | None,
    effective: DesiredState,
) -> None:
    """The state applied, and reported, leaves out the canary or shadow version refused at load."""
    if corrupted is not None:
        flip_byte(root, corrupted)

    await serving.apply(state)

    assert effective == serving.lineup.states["mlp"]
    [status] = published.statuses()
    canary = effective.canary.version if effective.canary else None
    failed = [] if corrupted is None else [corrupted]
    assert (canary, effective.shadow, failed) == (status.canary, status.shadow, list(status.failed))


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        pytest.param(
            "mlp", "9", "model 'mlp' has no version '9' on this worker; available: 1, 2, 3", id="unknown-version"
        ),
        pytest.param("nope", None, "unknown model 'nope': no nope/<version>/model.onnx under {root}", id="unknown"),
        pytest.param("mlp", "../1", "model version '../1' is not a valid version name", id="bad-version"),
        pytest.param("mlp", "2", None, id="pinned-version"),
        pytest.param("mlp", None, None, id="default-version"),
    ],
)
async def test_prepare(root: Path, serving: Serving, name: str, version: str | None, expected: str | None) -> None:
    """prepare loads what a request needs, or returns a ModelNotFoundError saying why it cannot."""
    error = await serving.prepare(name, version)

    assert (None if expected is None else expected.format(root=root)) == (None if error is None else str(error))


async def test_prepare_refuses_a_corrupted_pinned_version(root: Path, serving: Serving) -> None:
    """A pinned version that fails its sha256 check cannot be served, and is not loaded."""
    flip_byte(root, "2")

    error = await serving.prepare("mlp", "2")

    assert str(error).startswith("model mlp version 2 cannot be served: ")
    assert ("mlp", "2") not in serving.lineup.loaded


async def test_a_publish_that_raises_does_not_stop_serving(serving: Serving, logs: Logs) -> None:
    """A status that cannot be published is logged as a warning; the switch happens all the same."""

    async def publish(key: bytes, value: bytes) -> None:
        raise RuntimeError("broker down")

    serving.publish = publish
    await serving.load_default()

    await serving.apply(DesiredState("mlp", current="1", previous=("3",)))

    assert "1" == serving.lineup.serving("mlp")
    assert ("warning", "status_not_published") in [(level, event) for level, event, _ in logs.events]
