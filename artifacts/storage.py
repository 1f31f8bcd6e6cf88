"""Where the registry keeps its files: one small interface, a local-directory implementation.

Keys are relative POSIX paths (`<name>/<version>/manifest.json`). A team shares the registry
through a shared directory (a volume, NFS, a mounted bucket); an object store can implement
the same `Storage` protocol later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from schemas.errors import ConfigError


class StorageError(ConfigError):
    """A registry key is invalid, missing, or already taken."""


class Storage(Protocol):
    """What the registry needs from a store of immutable files."""

    def read(self, key: str) -> bytes:
        """The bytes under `key`; StorageError if there are none."""
        ...

    def write_new(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically; StorageError if the key exists (immutability)."""
        ...

    def replace(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, atomically, replacing what was there."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (files and folders), sorted."""
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

    def __init__(self, root: Path) -> None:
        self.root = root

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

    def replace(self, key: str, data: bytes) -> None:
        target = self._path(key)
        os.replace(self._stage(target, data), target)

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
