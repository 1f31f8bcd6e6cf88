"""The model registry: versions of models, each an immutable set of files and its manifest.

Layout in the storage: `<name>/<version>/manifest.json` beside the artifact (`model.onnx`, or
`model.onnx.gz` when stored compressed) and any external-data files; the manifest records the
sha256 of every file. A version appears whole or not at all: `add` writes its files into a
staging folder and renames it into place (`Storage.write_version`), so a push that fails or
crashes leaves only a `.staging-*` folder, which no listing shows. A folder holding a plain
`model.onnx` and no manifest was copied in by hand: it is served, but nothing verifies it.

In an object store (`s3://bucket/prefix`, `artifacts.objectstore`) the manifest is written last
and makes the version exist; files without one are a push under way or interrupted, never served.
Read from there, a version's files can be kept on local disk by sha256 (`artifacts.cache`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from artifacts.cache import DigestCache
from artifacts.integrity import check_files, check_model, file_digests, inflate, unverified_files
from artifacts.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, check_name, version_key
from artifacts.storage import LocalStorage, Storage, StorageError

S3_EXTRA = "pip install 'streamscore[s3]'"

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

    def __init__(self, storage: Storage, cache: DigestCache | None = None) -> None:
        self.storage = storage
        self.cache = cache  # files read from the storage, kept by sha256; None: read every time

    @classmethod
    def at(cls, root: Path | str, cache: Path | None = None) -> Registry:
        """The registry at `root`: an `s3://bucket/prefix` URL, else a local or mounted directory.
        `cache`: where files read from an object store are kept by sha256 (a directory needs none)."""
        if isinstance(root, Path) or not root.startswith("s3://"):
            return cls(LocalStorage(Path(root)))
        try:
            from artifacts.objectstore import S3Storage  # obstore is the optional `s3` extra
        except ImportError as error:
            raise StorageError(f"a registry at {root} needs the s3 extra ({error}): {S3_EXTRA}") from None
        return cls(S3Storage(root), None if cache is None else DigestCache(cache))

    def __str__(self) -> str:
        return str(self.storage)

    def models(self) -> list[str]:
        """Names of the models that have at least one version (pushed, or copied by hand)."""
        return [name for name in self.storage.list("") if self.versions(name) or self.unverified_versions(name)]

    def versions(self, name: str) -> list[str]:
        """The versions of `name` that have a manifest, oldest first."""
        check_name("model name", name)
        found = [v for v in self.storage.list(name) if self.storage.exists(f"{name}/{v}/{MANIFEST_FILE}")]
        return sorted(found, key=version_key)

    def unverified_versions(self, name: str) -> list[str]:
        """The versions of `name` copied in by hand: a plain model.onnx and no manifest, oldest first
        (none in an object store, where such files are a push under way or interrupted)."""
        check_name("model name", name)
        if not self.storage.hand_copies:
            return []
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
        files = (manifest.artifact, *manifest.external_data)
        cached = {relative: self._cached(manifest, relative) for relative in files}
        stored = {
            relative: self.storage.read(f"{name}/{version}/{relative}") if data is None else data
            for relative, data in cached.items()
        }
        check_files(where, manifest, stored)
        self._keep(manifest, {relative: stored[relative] for relative, data in cached.items() if data is None})
        artifact = stored.pop(manifest.artifact)
        model = inflate(where, manifest, artifact) if manifest.compression == "gzip" else artifact
        check_model(where, manifest, model)
        return StoredVersion(manifest, model, stored, tuple(unverified_files(manifest)))

    def _cached(self, manifest: Manifest, relative: str) -> bytes | None:
        """A file of `manifest` from the cache, when there is one and it holds the file (checked by sha256)."""
        digest = manifest.files.get(relative)
        return None if self.cache is None or digest is None else self.cache.get(digest)

    def _keep(self, manifest: Manifest, read: dict[str, bytes]) -> None:
        """Cache the files just read from the storage (and checked against `manifest`)."""
        if self.cache is not None and manifest.files:
            for relative, data in read.items():
                self.cache.put(manifest.files[relative], data)

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
        check_name("model name", name)
        check_name("model version", version)
        self.storage.update(
            f"{name}/{version}/{MANIFEST_FILE}", lambda raw: Manifest.from_json(raw).with_event(dict(event)).to_json()
        )

    def next_version(self, name: str) -> str:
        """One more than the highest numeric version folder of `name` ("1" for a new model)."""
        numeric = [int(v) for v in self.storage.list(name) if v.isdigit()]
        return str(max(numeric, default=0) + 1)
