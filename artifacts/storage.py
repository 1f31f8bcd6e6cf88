"""Where the registry keeps its files: one small interface, a local-directory implementation.

Keys are relative POSIX paths (`<name>/<version>/manifest.json`). A team shares the registry
through a shared directory (a volume, NFS, a mounted bucket) or an S3-compatible object store
(`artifacts.objectstore`, the same `Storage` protocol). Names starting with "." are the store's
own (staging folders, temporary files): no listing shows them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Protocol

from schemas.errors import ConfigError


class StorageError(ConfigError):
    """A registry key is invalid, missing, or already taken."""


class Storage(Protocol):
    """What the registry needs from a store of immutable files."""

    # Whether a version folder with files and no manifest is a model copied in by hand (a folder,
    # where a push appears all at once) rather than a push under way or interrupted (an object store)
    hand_copies: bool

    def read(self, key: str) -> bytes:
        """The bytes under `key`; StorageError if there are none."""
        ...

    def write_new(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically; StorageError if the key exists (immutability)."""
        ...

    def write_version(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Store `files` (relative keys) under `prefix`, all visible at once or none; StorageError if
        `prefix` exists (immutability: of two writers racing for it, exactly one succeeds)."""
        ...

    def replace(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically, replacing what was there."""
        ...

    def update(self, key: str, change: Callable[[bytes], bytes]) -> None:
        """Replace the bytes under `key` by `change(bytes)`, atomically; StorageError if there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (files and folders), sorted; never the store's own "." names."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path of `key`, when the store has one (external data needs it)."""
        ...


def check_key(key: str) -> PurePosixPath:
    """A key as a relative path that cannot leave the store."""
    path = PurePosixPath(key)
    if path.is_absolute() or not path.parts or any(part in ("..", "", ".") for part in path.parts):
        raise StorageError(f"registry key {key!r} must be a relative path without '..'")
    return path


class LocalStorage:
    """A registry in a local (or mounted) directory. Writes are atomic renames."""

    hand_copies = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"no {key} in the registry at {self.root}") from None

    def write_new(self, key: str, data: bytes) -> None:
        target = self._path(key)
        temporary = self._stage(target, data)
        try:
            os.link(temporary, target)  # fails if the target exists: no version is overwritten
        except FileExistsError:
            raise StorageError(f"{key} already exists in the registry at {self.root}; versions are immutable") from None
        finally:
            temporary.unlink()

    def write_version(self, prefix: str, files: Mapping[str, bytes]) -> None:
        target = self._path(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".staging-{uuid.uuid4().hex}"  # a crash leaves it: listings skip "." names
        staging.mkdir()
        try:
            for relative, data in files.items():
                _write_synced(staging.joinpath(*check_key(relative).parts), data)
            _sync_folders(staging, files)
            self._publish(staging, target, prefix)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _sync_folders(target.parent, {})

    def _publish(self, staging: Path, target: Path, prefix: str) -> None:
        """Rename the complete staging folder to `target`, which must not exist yet."""
        try:
            # rename(2) refuses a non-empty target (ENOTEMPTY/EEXIST); every version folder holds
            # files, so an existing version is never replaced, and of two racing writers exactly one
            # wins. It does replace an empty folder, which holds no version.
            os.rename(staging, target)
        except OSError as error:
            if target.exists():
                raise StorageError(
                    f"{prefix} already exists in the registry at {self.root}; versions are immutable: "
                    "write a new version"
                ) from None
            raise StorageError(f"cannot write {prefix} in the registry at {self.root}: {error}") from error

    def replace(self, key: str, data: bytes) -> None:
        target = self._path(key)
        os.replace(self._stage(target, data), target)

    def update(self, key: str, change: Callable[[bytes], bytes]) -> None:
        """Read, change, replace atomically. Not a compare-and-swap: of two updates at once, one may be lost."""
        self.replace(key, change(self.read(key)))

    def _stage(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return Path(name)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix) if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _write_synced(path: Path, data: bytes) -> None:
    """Write a new file and flush it to the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _sync_folders(folder: Path, files: Mapping[str, bytes]) -> None:
    """Flush `folder`'s entries, and those of its subfolders that hold `files`, to the disk."""
    subfolders = {folder.joinpath(*check_key(relative).parts).parent for relative in files}
    for path in sorted({folder, *subfolders}):
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
