"""Rows per batch: the setting when given, else the version's tuned value (`model tune`), else 256."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from artifacts.manifest import TUNE_EVENT
from artifacts.registry import Registry
from artifacts.runtime import CPU
from demo.models import install_model, make_mlp
from registry.push import push_model
from schemas.errors import ConfigError
from tests.fakes import FakeClients, FakeCluster
from tests.test_runner import IN, PARTITIONS, send_requests, settings_for
from worker.batcher import Batch
from worker.observe import Observer
from worker.outcomes import Item
from worker.runner import Worker
from worker.settings import DEFAULT_MAX_BATCH_ROWS, Settings, batch_rows, from_sources
from worker.store import ModelStore

TUNED = 4


def tune(registry: Registry, name: str, version: str, rows: dict[str, int], provider: str = CPU[0]) -> None:
    """Record a tune event as `model tune` writes it (the measured points do not matter here)."""
    registry.record(name, version, {"event": TUNE_EVENT, "provider": provider, "max_batch_rows": rows, "points": []})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """mlp version 1 pushed and tuned to 4 rows at 1 thread; version 2 pushed, never tuned; 3 copied by hand."""
    registry = Registry.at(tmp_path / "registry")
    for version in ("1", "2"):
        push_model(registry, make_mlp(tmp_path / f"{version}.onnx"), name="mlp", version=version)
    tune(registry, "mlp", "1", {"1": TUNED, "2": 64})
    install_model(tmp_path / "registry", "mlp", "3", make_mlp)
    return tmp_path / "registry"


@pytest.mark.parametrize(
    ("setting", "tuned", "expected"),
    [
        (0, 64, (64, "tuned")),
        (0, None, (DEFAULT_MAX_BATCH_ROWS, "default")),
        (32, 64, (32, "setting")),
        (32, None, (32, "setting")),
    ],
)
def test_batch_rows_prefers_the_setting_then_the_tuned_value(
    setting: int, tuned: int | None, expected: tuple[int, str]
) -> None:
    """An explicit setting wins; 0 means the version's tuned value, else the default."""
    assert expected == batch_rows(setting, tuned)


def test_the_setting_defaults_to_0_and_refuses_negatives() -> None:
    """Unset is 0 (the model's value); STREAMSCORE_MAX_BATCH_ROWS=-1 is refused, naming the variable."""
    assert 0 == Settings().max_batch_rows
    assert 128 == from_sources({"STREAMSCORE_MAX_BATCH_ROWS": "128"}).max_batch_rows
    with pytest.raises(ConfigError, match="STREAMSCORE_MAX_BATCH_ROWS must be 0"):
        from_sources({"STREAMSCORE_MAX_BATCH_ROWS": "-1"})


@pytest.mark.parametrize(
    ("setting", "threads", "version", "expected"),
    [
        (0, 1, "1", TUNED),  # tuned at 1 thread
        (0, 2, "1", 64),  # tuned at 2 threads
        (0, 1, "2", DEFAULT_MAX_BATCH_ROWS),  # never tuned
        (0, 1, "3", DEFAULT_MAX_BATCH_ROWS),  # copied by hand: no manifest to tune
        (32, 1, "1", 32),  # the setting wins over the tuned value
    ],
)
def test_the_store_gives_each_loaded_version_its_rows_per_batch(
    root: Path, setting: int, threads: int, version: str, expected: int
) -> None:
    """A version loaded by the store carries the rows per batch the worker will give it."""
    store = ModelStore(root, default_name="mlp", max_batch_rows=setting, intra_op_threads=threads)
    assert expected == store.load("mlp", version).max_batch_rows


def test_a_value_tuned_on_another_provider_is_not_used(root: Path) -> None:
    """A CUDA tuning says nothing of the CPU: the CPU worker uses the default."""
    tune(Registry.at(root), "mlp", "2", {"1": 8}, provider="CUDAExecutionProvider")
    assert DEFAULT_MAX_BATCH_ROWS == ModelStore(root, default_name="mlp").load("mlp", "2").max_batch_rows


class BatchSizes(Observer):
    """Keeps the rows of every batch scored."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def scored(self, batch: Batch[Item]) -> None:
        super().scored(batch)
        self.sizes.append(batch.rows)


async def batch_sizes(root: Path, **changes: object) -> list[int]:
    """Run a burst worker over 24 one-row requests to mlp version 1, all waiting before it starts."""
    cluster = FakeCluster()
    cluster.create(IN, PARTITIONS)
    send_requests(cluster, 24)
    observer = BatchSizes()
    settings = settings_for(root, burst=True, model_version="1", max_batch_delay_ms=200.0, **changes)
    assert 0 == await asyncio.wait_for(Worker(settings, clients=FakeClients(cluster), observer=observer).run(), 30)
    assert 24 == sum(observer.sizes)
    return observer.sizes


async def test_the_worker_batches_at_the_tuned_value_when_the_setting_is_unset(root: Path) -> None:
    """STREAMSCORE_MAX_BATCH_ROWS unset: no batch of the tuned version exceeds its 4 rows."""
    sizes = await batch_sizes(root)
    assert TUNED == max(sizes)


async def test_an_explicit_setting_wins_over_the_tuned_value(root: Path) -> None:
    """STREAMSCORE_MAX_BATCH_ROWS=8: batches grow past the tuned 4 rows, up to 8."""
    sizes = await batch_sizes(root, max_batch_rows=8)
    assert 8 == max(sizes)
