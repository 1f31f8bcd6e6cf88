"""Plain factories shared by the unit tests (fixtures live in conftest.py, owned elsewhere)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import orjson

from schemas.records import InputRecord


def make_record(
    value: bytes | None = b"{}",
    *,
    topic: str = "requests",
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp: int = 1_700_000_000_000,
    timestamp_type: int = 0,
) -> InputRecord:
    """An input record with sensible defaults."""
    return InputRecord(topic, partition, offset, value, key, tuple(headers), timestamp, timestamp_type)


def v2_input(name: str, datatype: str, shape: list[int], data: Any, **extra: Any) -> dict[str, Any]:
    """One V2 input object, as JSON would hold it."""
    return {"name": name, "datatype": datatype, "shape": shape, "data": data, **extra}


def v2_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    """A V2 request body (JSON bytes) holding `inputs`."""
    return orjson.dumps({"inputs": list(inputs), **extra})


def make_mlp_registry(folder: Path) -> Path:
    """A registry under `folder` with mlp versions 1, 2 and 3 (pushed: sha256 checked at load)."""
    from artifacts.registry import Registry
    from demo.models import make_mlp
    from registry.push import push_model

    registry = Registry.at(folder / "registry")
    for version in ("1", "2", "3"):
        push_model(registry, make_mlp(folder / f"{version}.onnx", scale=float(version)), name="mlp", version=version)
    return folder / "registry"


def flip_byte(root: Path, version: str, name: str = "mlp") -> bytes:
    """Flip one byte in the middle of a version's stored artifact; its content before."""
    artifact = next((root / name / version).glob("model.onnx*"))
    before = artifact.read_bytes()
    data = bytearray(before)
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    return before


def make_external_data_model(folder: Path, location: str = "weights.bin", *, scale: float = 1.0) -> Path:
    """An MLP saved as `<folder>/model.onnx` with every initializer in `<folder>/<location>`."""
    from demo.models import make_mlp

    model = onnx.load(make_mlp(folder.parent / f"{folder.name}-inline.onnx", scale=scale))
    path = folder / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def make_gzip_bomb(expanded: int) -> bytes:
    """A gzip stream of `expanded` zero bytes (about a thousand times smaller), built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)  # | 16: a gzip header and trailer
    chunk = bytes(1 << 20)
    parts = [packer.compress(chunk[: min(len(chunk), expanded - done)]) for done in range(0, expanded, len(chunk))]
    return b"".join([*parts, packer.flush()])
