"""What a version's bytes must match: every file's sha256, a bounded gzip, the exact bytes loaded."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest

from artifacts.integrity import ArtifactError, inflate
from artifacts.manifest import Manifest
from artifacts.registry import Registry
from artifacts.runtime import load_model, load_verified
from demo.models import make_mlp
from registry.push import push_model
from tests.factories import make_external_data_model, make_gzip_bomb

ROWS = np.random.default_rng(3).random((4, 8), dtype=np.float32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """An empty registry."""
    return Registry.at(tmp_path / "registry")


@pytest.fixture
def external(tmp_path: Path, registry: Registry) -> Manifest:
    """mlp version 1, pushed with its weights in weights.bin."""
    return push_model(registry, make_external_data_model(tmp_path / "exported"), name="mlp", version="1")


# -- the manifest --------------------------------------------------------------------------------


def test_push_records_the_sha256_of_every_stored_file(tmp_path: Path, registry: Registry, external: Manifest) -> None:
    """The manifest's `files` holds the sha256 of the artifact and of weights.bin, as stored."""
    folder = tmp_path / "registry" / "mlp" / "1"

    expected = {name: _sha256((folder / name).read_bytes()) for name in ("model.onnx", "weights.bin")}
    assert expected == external.files
    assert external == registry.manifest("mlp", "1")


def test_a_gzip_artifact_is_recorded_as_stored(tmp_path: Path, registry: Registry) -> None:
    """For a gzip artifact, `files` has the digest of the compressed file; `sha256` stays the model's."""
    path = make_mlp(tmp_path / "m.onnx", features=64, hidden=256)

    manifest = push_model(registry, path, name="m")

    stored = (tmp_path / "registry" / "m" / "1" / "model.onnx.gz").read_bytes()
    assert ("gzip", {"model.onnx.gz": _sha256(stored)}) == (manifest.compression, manifest.files)
    assert _sha256(path.read_bytes()) == manifest.sha256


def test_the_manifest_round_trips_through_json_with_its_files(external: Manifest) -> None:
    """to_json then from_json gives back the same manifest, `files` included."""
    assert external == Manifest.from_json(external.to_json())


def test_a_manifest_written_before_files_is_still_read(external: Manifest) -> None:
    """A manifest without `files` (an older push) reads, with no file digests."""
    body = orjson.loads(external.to_json())
    del body["files"]

    assert {} == Manifest.from_json(orjson.dumps(body)).files


# -- bounded decompression -----------------------------------------------------------------------


def _gzip_manifest(external: Manifest, size: int) -> Manifest:
    return dataclasses.replace(external, artifact="model.onnx.gz", compression="gzip", size=size)


def test_inflate_gives_back_a_model_of_exactly_its_size(external: Manifest) -> None:
    """A gzip stream of exactly `size` bytes expands whole."""
    model = bytes(range(256)) * 40

    assert model == inflate("m", _gzip_manifest(external, len(model)), gzip.compress(model))


def test_a_gzip_bomb_stops_at_the_manifest_size(external: Manifest) -> None:
    """A stream that expands to 64 MiB, under a manifest that says 1000 bytes, is an ArtifactError."""
    with pytest.raises(ArtifactError, match=r"model\.onnx\.gz expands past its manifest size of 1000 bytes"):
        inflate("model m version 1", _gzip_manifest(external, 1000), make_gzip_bomb(64 << 20))


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        pytest.param(gzip.compress(bytes(5000))[:-20], "ends before its gzip stream does", id="truncated"),
        pytest.param(gzip.compress(bytes(5000)) + b"tail", "has bytes after its gzip stream", id="trailing"),
        pytest.param(b"not gzip at all", "is not valid gzip", id="not-gzip"),
    ],
)
def test_a_damaged_gzip_artifact_is_an_artifact_error(external: Manifest, stored: bytes, message: str) -> None:
    """Truncated, trailed or foreign bytes in a gzip artifact are refused, saying which."""
    with pytest.raises(ArtifactError, match=message):
        inflate("m", _gzip_manifest(external, 5000), stored)


def test_a_manifest_size_past_what_onnx_can_hold_is_refused(external: Manifest) -> None:
    """A size over protobuf's 2 GiB limit is no bound at all: refused before inflating."""
    with pytest.raises(ArtifactError, match="more than an ONNX file can hold"):
        inflate("m", _gzip_manifest(external, 2**40), gzip.compress(b"x"))


# -- reading a version ---------------------------------------------------------------------------


def test_an_external_data_file_changed_after_push_is_refused(
    tmp_path: Path, registry: Registry, external: Manifest
) -> None:
    """One flipped byte in weights.bin makes read_version raise, naming the version and the file."""
    _flip(tmp_path / "registry" / "mlp" / "1" / "weights.bin")

    with pytest.raises(ArtifactError, match=r"model mlp version 1: weights\.bin has sha256 .* where the manifest says"):
        registry.read_version("mlp", "1")


def test_an_old_manifest_checks_its_model_and_reports_its_external_data_unverified(
    tmp_path: Path, registry: Registry, external: Manifest
) -> None:
    """Without `files`, the model is checked by `sha256` and weights.bin is listed as unverified."""
    path = tmp_path / "registry" / "mlp" / "1" / "manifest.json"
    body = orjson.loads(path.read_bytes())
    del body["files"]
    path.write_bytes(orjson.dumps(body))

    stored = registry.read_version("mlp", "1")

    assert ("weights.bin",) == stored.unverified
    assert external.sha256 == _sha256(stored.model)


# -- loading the exact bytes ---------------------------------------------------------------------


def test_load_verified_runs_the_bytes_it_was_given_not_the_files_on_disk(
    tmp_path: Path, registry: Registry, external: Manifest
) -> None:
    """The weights on disk change after they were read: the loaded model still gives the read weights'
    outputs, and the private folder it was loaded from is gone."""
    stored = registry.read_version("mlp", "1")
    reference = load_verified(stored.model, stored.external, "mlp", "1", sha256=external.sha256)
    _flip(tmp_path / "registry" / "mlp" / "1" / "weights.bin")
    before = set(Path(tempfile.gettempdir()).glob("streamscore-load-*"))

    loaded = load_verified(stored.model, stored.external, "mlp", "1", sha256=external.sha256)

    expected = reference.run({"x": ROWS})["probabilities"].data
    np.testing.assert_array_equal(expected, loaded.run({"x": ROWS})["probabilities"].data)
    assert before == set(Path(tempfile.gettempdir()).glob("streamscore-load-*"))
    on_disk = load_model(tmp_path / "registry" / "mlp" / "1" / "model.onnx", "mlp", "1")
    assert not np.array_equal(expected, on_disk.run({"x": ROWS})["probabilities"].data)  # the flip matters
