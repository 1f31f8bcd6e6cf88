"""The model registry: versions of models, each an immutable set of files and its manifest.

Layout in the storage: `<name>/<version>/manifest.json` beside the artifact (`model.onnx`, or
`model.onnx.gz` when stored compressed) and any external-data files; the manifest records the
sha256 of every file. A version appears whole or not at all: `add` writes its files into a
staging folder and renames it into place (`Storage.write_version`), so a push that fails or
crashes leaves only a `.staging-*` folder, which no listing shows. A folder holding a plain
`model.onnx` and no manifest was copied in by hand: it is served, but nothing verifies it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from artifacts.integrity import check_files, check_model, file_digests, inflate, unverified_files
from artifacts.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, check_name, version_key
from artifacts.storage import LocalStorage, Storage, StorageError

DEFAULT_MODEL_ROOT = "models"  # the registry folder, relative to where the command runs


@dataclass(frozen=True)
class StoredVersion:
    """One version as read from the registry: every file read once and checked against the manifest."""

    manifest: Manifest
    model: bytes  # the ONNX model, decompressed; its sha256 is the manifest's
    external: dict[str, bytes]  # the external-data files, by path relative to the model
    unverified: tuple[str, ...]  # files no digest covers (the external data of a manifest without `files`)


class Registry:
    """Read and add model versions in a storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def at(cls, root: Path | str) -> Registry:
        """The registry in a local or mounted directory."""
        return cls(LocalStorage(Path(root)))

    def models(self) -> list[str]:
        """Names of the models that have at least one version (pushed, or copied by hand)."""
        return [name for name in self.storage.list("") if self.versions(name) or self.unverified_versions(name)]

    def versions(self, name: str) -> list[str]:
        """The versions of `name` that have a manifest, oldest first."""
        check_name("model name", name)
        found = [v for v in self.storage.list(name) if self.storage.exists(f"{name}/{v}/{MANIFEST_FILE}")]
        return sorted(found, key=version_key)

    def unverified_versions(self, name: str) -> list[str]:
        """The versions of `name` copied in by hand: a plain model.onnx and no manifest, oldest first."""
        check_name("model name", name)
        exists = self.storage.exists
        found = [
            v
            for v in self.storage.list(name)
            if exists(f"{name}/{v}/{MODEL_FILE}") and not exists(f"{name}/{v}/{MANIFEST_FILE}")
        ]
        return sorted(found, key=version_key)

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest of one version; StorageError if there is none."""
        check_name("model name", name)
        check_name("model version", version)
        return Manifest.from_json(self.storage.read(f"{name}/{version}/{MANIFEST_FILE}"))

    def has(self, name: str, version: str) -> bool:
        return self.storage.exists(f"{name}/{version}/{MANIFEST_FILE}")

    def read_version(self, name: str, version: str) -> StoredVersion:
        """Every file of a version, read once: each checked against its sha256, the artifact
        decompressed (never past the manifest's size) and checked against the model's sha256.

        Raises ArtifactError when a file does not match, StorageError when one cannot be read.
        """
        manifest = self.manifest(name, version)
        where = f"model {name} version {version}"
        stored = {
            relative: self.storage.read(f"{name}/{version}/{relative}")
            for relative in (manifest.artifact, *manifest.external_data)
        }
        check_files(where, manifest, stored)
        artifact = stored.pop(manifest.artifact)
        model = inflate(where, manifest, artifact) if manifest.compression == "gzip" else artifact
        check_model(where, manifest, model)
        return StoredVersion(manifest, model, stored, tuple(unverified_files(manifest)))

    def read_model(self, name: str, version: str) -> bytes:
        """The ONNX bytes of a version, decompressed and checked (`read_version`)."""
        return self.read_version(name, version).model

    def folder(self, name: str, version: str) -> Path | None:
        """The local folder of a version (for models with external data), if the store has one."""
        path = self.storage.local_path(f"{name}/{version}/{MANIFEST_FILE}")
        return None if path is None else path.parent

    def add(self, manifest: Manifest, artifact: bytes, extra: dict[str, bytes] | None = None) -> Manifest:
        """Store a new version whole (its artifact, extra files and manifest appear at once); the
        manifest as stored, with the sha256 of every file in `files`. StorageError if it exists."""
        name, version = check_name("model name", manifest.name), check_name("model version", manifest.version)
        if self.has(name, version):
            raise StorageError(f"model {name} version {version} already exists; versions are immutable")
        files = {**(extra or {}), manifest.artifact: artifact}
        stored = dataclasses.replace(manifest, files=file_digests(files))
        self.storage.write_version(f"{name}/{version}", {**files, MANIFEST_FILE: stored.to_json()})
        return stored

    def record(self, name: str, version: str, event: dict[str, object]) -> None:
        """Append an event (an optimization attempt, ...) to a version's manifest history."""
        updated = self.manifest(name, version).with_event(dict(event))
        self.storage.replace(f"{name}/{version}/{MANIFEST_FILE}", updated.to_json())

    def next_version(self, name: str) -> str:
        """One more than the highest numeric version folder of `name` ("1" for a new model)."""
        numeric = [int(v) for v in self.storage.list(name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)
