"""What a version's bytes must match: a gzip artifact expands no further than its manifest says."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pytest

from artifacts.integrity import ArtifactError, inflate
from artifacts.manifest import Manifest
from artifacts.registry import Registry
from registry.push import push_model
from tests.factories import make_external_data_model, make_gzip_bomb


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """An empty registry."""
    return Registry.at(tmp_path / "registry")


@pytest.fixture
def external(tmp_path: Path, registry: Registry) -> Manifest:
    """mlp version 1, pushed with its weights in weights.bin."""
    return push_model(registry, make_external_data_model(tmp_path / "exported"), name="mlp", version="1")


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
