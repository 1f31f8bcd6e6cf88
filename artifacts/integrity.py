"""What the bytes of a version must match: the sha256 of every file, and a gzip artifact bounded by its size.

Pure checks on bytes already read: `artifacts.registry` reads a version's files once and asks
these; each failure is an ArtifactError naming the version, the file, what was found and what
to do. A manifest written before per-file digests (no `files`) still has the model's sha256:
its artifact is checked by that, and its external data is reported by `unverified_files`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping

from artifacts.manifest import Manifest
from schemas.errors import ModelLoadError

MAX_MODEL_BYTES = 2**31 - 1  # protobuf cannot parse a larger ModelProto; larger weights live in external data
REPUSH = "push the model again as a new version"


class ArtifactError(ModelLoadError):
    """A version's files do not match its manifest (corrupted, truncated, replaced, or a decompression bomb)."""


def sha256_of(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def file_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    """The sha256 of each file by relative path, as a manifest records them in `files`."""
    return {relative: sha256_of(data) for relative, data in sorted(files.items())}


def check_files(where: str, manifest: Manifest, stored: Mapping[str, bytes]) -> None:
    """ArtifactError for a stored file whose sha256 is not the manifest's (a manifest without `files` checks none),
    or an uncompressed artifact whose size is not the manifest's (said first: it tells a truncated file)."""
    artifact = stored.get(manifest.artifact)
    if manifest.compression == "none" and artifact is not None and len(artifact) != manifest.size:
        cut = "cut short (an interrupted upload or copy)" if len(artifact) < manifest.size else "grown"
        raise ArtifactError(
            f"{where}: {manifest.artifact} is {len(artifact)} bytes where the manifest says {manifest.size}; it was "
            f"{cut} or replaced after the push: {REPUSH}"
        )
    if not manifest.files:
        return
    for relative, data in stored.items():
        expected = manifest.files.get(relative)
        if expected is None:
            raise ArtifactError(f"{where}: the manifest records no sha256 for {relative}; it was edited: {REPUSH}")
        found = sha256_of(data)
        if found != expected:
            raise ArtifactError(
                f"{where}: {relative} has sha256 {found[:12]}... where the manifest says {expected[:12]}...; the file "
                f"was corrupted or replaced after the push: {REPUSH}"
            )


def unverified_files(manifest: Manifest) -> list[str]:
    """The files of a version no digest covers: the external data of a manifest older than `files`."""
    return [] if manifest.files else list(manifest.external_data)


def inflate(where: str, manifest: Manifest, stored: bytes) -> bytes:
    """The model in a gzip artifact, expanded to at most the manifest's `size` bytes: a bomb stops there."""
    if manifest.size > MAX_MODEL_BYTES:
        raise ArtifactError(
            f"{where}: the manifest gives a model size of {manifest.size} bytes, more than an ONNX file can hold "
            f"({MAX_MODEL_BYTES}); the manifest was edited: {REPUSH}"
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)  # | 16: a gzip header and trailer, as `model push` writes
    try:
        model = inflater.decompress(stored, manifest.size + 1)  # one byte more than allowed tells a bomb
    except zlib.error as error:
        raise ArtifactError(
            f"{where}: {manifest.artifact} is not valid gzip ({error}); it was corrupted: {REPUSH}"
        ) from None
    if len(model) > manifest.size:
        raise ArtifactError(
            f"{where}: {manifest.artifact} expands past its manifest size of {manifest.size} bytes (a decompression "
            f"bomb, or the artifact of another model); it was not expanded further: {REPUSH}"
        )
    if not inflater.eof or inflater.unused_data:
        problem = "ends before its gzip stream does" if not inflater.eof else "has bytes after its gzip stream"
        raise ArtifactError(f"{where}: {manifest.artifact} {problem}; it was truncated or altered: {REPUSH}")
    return model


def check_model(where: str, manifest: Manifest, model: bytes) -> None:
    """ArtifactError when the model's sha256 (after decompression) is not the manifest's."""
    digest = sha256_of(model)
    if digest != manifest.sha256:
        raise ArtifactError(
            f"{where}: sha256 {digest[:12]}... does not match the manifest's {manifest.sha256[:12]}...; the artifact "
            "was corrupted or replaced, push it again as a new version"
        )
