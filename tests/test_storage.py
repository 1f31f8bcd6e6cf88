"""The registry's storage: a version appears whole or not at all, once, and staging is never listed."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from artifacts.registry import Registry
from artifacts.storage import LocalStorage, StorageError
from demo.models import make_mlp
from registry.push import push_model
from worker.store import ModelStore

FILES = {"model.onnx": b"model", "data/weights.bin": b"weights", "manifest.json": b"{}"}


def _listing(root: Path) -> list[str]:
    """Every path under `root`, relative, hidden ones included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_version_is_written_with_every_file_and_nothing_else(tmp_path: Path) -> None:
    """write_version stores each file under the prefix and leaves no staging folder behind."""
    storage = LocalStorage(tmp_path)

    storage.write_version("m/1", FILES)

    assert FILES == {key: storage.read(f"m/1/{key}") for key in FILES}
    assert ["m", "m/1", "m/1/data", "m/1/data/weights.bin", "m/1/manifest.json", "m/1/model.onnx"] == _listing(tmp_path)


def test_writing_a_version_that_exists_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """A second write_version of the same prefix raises StorageError; the first one's files stay."""
    storage = LocalStorage(tmp_path)
    storage.write_version("m/1", FILES)

    with pytest.raises(StorageError, match=r"m/1 already exists .* versions are immutable"):
        storage.write_version("m/1", {"model.onnx": b"other"})

    assert b"model" == storage.read("m/1/model.onnx")
    assert ["1"] == os.listdir(tmp_path / "m")  # the refused write's staging folder is gone


def test_of_writers_racing_for_one_version_exactly_one_wins(tmp_path: Path) -> None:
    """Eight threads write version 1 at once, each its own files: one succeeds, seven get StorageError,
    and the stored version is the winner's, whole."""
    storage = LocalStorage(tmp_path)
    start = threading.Barrier(8)
    outcomes: dict[int, str] = {}

    def write(writer: int) -> None:
        start.wait()
        try:
            storage.write_version("m/1", {f"file-{i}": str(writer).encode() for i in range(20)})
            outcomes[writer] = "won"
        except StorageError:
            outcomes[writer] = "refused"

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    [winner] = [writer for writer, outcome in outcomes.items() if outcome == "won"]
    assert 7 == sum(outcome == "refused" for outcome in outcomes.values())
    assert {str(winner).encode()} == {storage.read(f"m/1/file-{i}") for i in range(20)}
    assert ["1"] == os.listdir(tmp_path / "m")


def test_a_write_that_fails_part_way_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk refuses the second file: the error propagates, and neither the version nor its staging remain."""
    storage, real_fsync, calls = LocalStorage(tmp_path), os.fsync, []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        storage.write_version("m/1", FILES)

    assert [] == os.listdir(tmp_path / "m")


@pytest.mark.parametrize("key", ["../escape", "/etc/escape", "a/../../escape", ""])
def test_a_file_key_cannot_leave_the_version(tmp_path: Path, key: str) -> None:
    """Keys that are absolute, climb with '..' or are empty are refused, and nothing is written."""
    with pytest.raises(StorageError, match="must be a relative path"):
        LocalStorage(tmp_path / "root").write_version("m/1", {key: b"x"})

    assert ["root", "root/m"] == _listing(tmp_path)


# -- staging leftovers and hand-copied folders in listings -----------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with mlp version 1 pushed, a crashed push of version 2 (a complete staging folder),
    and a model `other` whose only folder is a crashed push's staging."""
    root = tmp_path / "registry"
    push_model(Registry.at(root), make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    for staging in (root / "mlp" / ".staging-crashed", root / "other" / ".staging-crashed"):
        staging.mkdir(parents=True)
        for name in ("model.onnx", "manifest.json"):
            (staging / name).write_bytes((root / "mlp" / "1" / name).read_bytes())
    return root


def test_staging_leftovers_are_in_no_listing_of_the_registry(root: Path) -> None:
    """models(), versions() and unverified_versions() show version 1 of mlp only."""
    registry = Registry.at(root)

    assert (["mlp"], ["1"], []) == (registry.models(), registry.versions("mlp"), registry.unverified_versions("mlp"))
    assert [] == registry.versions("other")


def test_staging_leftovers_are_in_no_listing_of_the_worker(root: Path) -> None:
    """The worker's store sees mlp version 1 only, and mlp as the only model (its default)."""
    store = ModelStore(root)

    assert ("mlp", ["1"]) == (store.default_name, store.versions("mlp"))


def test_a_folder_copied_by_hand_is_an_unverified_version_and_numbers_go_past_it(root: Path) -> None:
    """mlp/2/model.onnx without a manifest is listed as unverified, and the next push becomes 3."""
    (root / "mlp" / "2").mkdir()
    (root / "mlp" / "2" / "model.onnx").write_bytes((root / "mlp" / "1" / "model.onnx").read_bytes())
    registry = Registry.at(root)

    assert (["1"], ["2"]) == (registry.versions("mlp"), registry.unverified_versions("mlp"))
    assert "3" == registry.next_version("mlp")


def test_pushing_over_a_folder_copied_by_hand_is_refused(root: Path, tmp_path: Path) -> None:
    """A push of version 2 where mlp/2/model.onnx was copied by hand fails and leaves that folder as it was."""
    (root / "mlp" / "2").mkdir()
    (root / "mlp" / "2" / "model.onnx").write_bytes(b"by hand")

    with pytest.raises(StorageError, match="mlp/2 already exists"):
        push_model(Registry.at(root), make_mlp(tmp_path / "m2.onnx", scale=2.0), name="mlp", version="2")

    assert ["model.onnx"] == os.listdir(root / "mlp" / "2")
