"""The manifest of a model version: what was pushed, what it looks like, how it was measured."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from schemas.errors import ConfigError
from schemas.names import NAME_PATTERN as NAME_PATTERN
from schemas.names import check_name as check_name

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"  # a version's artifact, stored as it is
GZIP_FILE = "model.onnx.gz"  # the artifact, gzip-compressed
# rows per batch when neither STREAMSCORE_MAX_BATCH_ROWS nor the version's tuning gives one (the worker's
# default, and what `model evaluate` runs an untuned version at)
DEFAULT_MAX_BATCH_ROWS = 256
TUNE_EVENT = "tune"  # a history event of `model tune`: max_batch_rows by intra-op threads, measured here

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions: numeric parts as numbers ("10" > "9", "1.10" > "1.9")."""
    parts = re.split(r"[._-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, V2 datatype (or ONNX type for non-tensors), shape."""

    name: str
    datatype: str
    shape: list[Dim] | None  # None: not a tensor (a sequence or a map)


@dataclass(frozen=True)
class Manifest:
    """Everything recorded about one version. The files and their sha256 never change."""

    name: str
    version: str
    sha256: str  # of the ONNX model itself, before any compression
    size: int  # bytes of the ONNX model itself
    artifact: str  # the file in the version's folder: model.onnx or model.onnx.gz
    compression: str  # "none" or "gzip"
    opset: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    created_at: str  # ISO 8601, UTC
    source: str  # where the model came from (a path, a URL, a training run)
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form: metrics, data reference
    external_data: list[str] = field(default_factory=list)  # files beside the model, relative
    parent: str | None = None  # the version this one was derived from (optimize)
    measurements: dict[str, Any] | None = None  # against the parent (optimize)
    history: list[dict[str, Any]] = field(default_factory=list)  # append-only events (attempts)
    # sha256 of every stored file by relative path: the artifact as stored (gzip or not) and each
    # external-data file; {} in manifests written before it (their artifact is checked by `sha256`)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = orjson.loads(raw)
            body["inputs"] = [TensorSpec(**spec) for spec in body["inputs"]]
            body["outputs"] = [TensorSpec(**spec) for spec in body["outputs"]]
            return cls(**body)
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"unreadable manifest: {error}") from None

    def tuned_batch_rows(self, threads: int, provider: str) -> int | None:
        """The `max_batch_rows` the latest `model tune` chose for `threads` intra-op threads on `provider`."""
        return tuned_batch_rows(self.history, threads, provider)

    def with_event(self, event: dict[str, Any]) -> Manifest:
        """A copy with one more history event (the only change a manifest allows)."""
        return Manifest(
            **{
                **asdict(self),
                "inputs": self.inputs,
                "outputs": self.outputs,
                "history": [*self.history, event],
            }
        )


def tuned_batch_rows(history: list[dict[str, Any]], threads: int, provider: str) -> int | None:
    """The rows per batch of the latest tune event measured on `provider`, for `threads` intra-op threads or
    else the nearest thread count it measured (the lower of two as near); None when there is none.

    Tuning is a history event, not a field of its own: the manifest stays readable by workers that
    predate tuning, and every tuning run stays on record. An event edited into nonsense counts as none.
    """
    for event in reversed(history):
        if event.get("event") != TUNE_EVENT or event.get("provider") != provider:
            continue
        chosen = event.get("max_batch_rows")
        if not isinstance(chosen, dict):
            return None
        valid = {int(t): rows for t, rows in chosen.items() if str(t).isdigit() and _positive(rows)}
        if not valid:
            return None
        nearest = min(valid, key=lambda measured: (abs(measured - threads), measured))
        return int(valid[nearest])
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
