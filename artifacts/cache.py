"""Files of model versions kept on local disk by their sha256, so a worker downloads each from an object store once.

A cached file is named by the sha256 its manifest gives (`<cache>/<sha256>`) and checked against
it each time it is read: a file changed on disk (corrupted, tampered with, cut short) is evicted,
logged as `model_cache_evicted`, and downloaded again. Files are written whole (a temporary file
renamed into place), so a crash leaves no half file under a digest's name. Nothing evicts old
versions: delete the folder to reclaim the space (it refills on the next load).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import structlog

from artifacts.integrity import sha256_of

log = structlog.get_logger("streamscore.cache")

DIGEST = re.compile(r"[0-9a-f]{64}")
DEFAULT_CACHE = Path("~/.cache/streamscore/models")  # the worker's STREAMSCORE_MODEL_CACHE when empty


class DigestCache:
    """Files by sha256 in a local folder, checked at every read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.expanduser()

    def _path(self, digest: str) -> Path:
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"{digest!r} is not a hex sha256")
        return self.folder / digest

    def get(self, digest: str) -> bytes | None:
        """The cached bytes whose sha256 is `digest`, or None (not cached, or evicted now for not matching)."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        found = sha256_of(data)
        if found == digest:
            return data
        path.unlink(missing_ok=True)
        log.warning(
            "model_cache_evicted",
            path=str(path),
            expected_sha256=digest,
            found_sha256=found,
            size=len(data),
            reason="the cached file does not match its sha256; it is downloaded again",
        )
        return None

    def put(self, digest: str, data: bytes) -> None:
        """Keep `data` under `digest` (written whole: a temporary file renamed into place)."""
        path = self._path(digest)
        if path.exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(name, path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
