"""Tensors on the wire: V2 datatypes, numpy arrays, and the conversions between them.

`DATATYPES` maps each V2 datatype to its numpy dtype. Arrays come from JSON data (checked: ragged
rows, values that do not fit the datatype, a shape that does not hold the values) or from the
raw little-endian bytes of Triton's binary extension, and go back out as JSON-ready dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.errors import ValidationError

#: V2 datatype -> numpy dtype. BYTES tensors hold Python `str`/`bytes` objects.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_DTYPE_TO_DATATYPE = {dtype: name for name, dtype in DATATYPES.items()}


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per record
class Tensor:
    """A named tensor: `data` is a numpy array of `shape`, typed as `datatype`."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]
    parameters: Mapping[str, Any] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype of a numpy array."""
    if array.dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _DTYPE_TO_DATATYPE[array.dtype]
    except KeyError:
        raise ValidationError(f"numpy dtype {array.dtype} has no V2 datatype") from None


def nonfinite_error(name: str) -> ValidationError:
    """The error for an input holding NaN or Infinity."""
    return ValidationError(
        f"input {name!r} holds NaN or Infinity; finite numbers only "
        "(setting STREAMSCORE_ALLOW_NONFINITE=true accepts them)"
    )


def array_from_binary(name: str, blob: bytes, shape: list[int], datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        raise ValidationError(f"input {name!r}: BYTES tensors must be sent as JSON data")
    dtype = DATATYPES[datatype].newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if len(blob) != expected:
        raise ValidationError(f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes, got {len(blob)}")
    return np.frombuffer(blob, dtype=dtype).astype(DATATYPES[datatype], copy=False).reshape(shape)


def tensor_from_json(
    name: str, datatype: str, shape: list[int], data: Any, parameters: Mapping[str, Any] | None
) -> Tensor:
    """A Tensor from the JSON `data` of an input, checked as `array_from_json` checks it."""
    return Tensor(name, datatype, array_from_json(name, data, shape, datatype), parameters)


def array_from_json(name: str, data: Any, shape: list[int], datatype: str) -> np.ndarray[Any, Any]:
    if not isinstance(data, list):
        data = [data]
    try:
        raw = np.asarray(data)
    except ValueError:
        raise ValidationError(f"input {name!r}: 'data' is ragged (rows of different lengths)") from None
    if raw.dtype.kind == "f" and datatype == "UINT64":
        raw = _as_uint64(data, raw)
    array = _cast(name, raw, datatype)
    if datatype == "BYTES" and raw.dtype.kind == "U":
        # numpy's fixed-width strings drop trailing NUL characters: keep the strings as sent
        array = np.array(data, dtype=object)
    size = math.prod(shape)
    if array.size != size:
        raise ValidationError(f"input {name!r}: shape {shape} holds {size} values, 'data' has {array.size}")
    return array if array.shape == tuple(shape) else array.reshape(shape)


def _as_uint64(data: Any, raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # numpy reads [0, 2**63] (an int64 and a uint64 value) as float64; keep such integers exact
    values = np.asarray(data, dtype=object).reshape(-1).tolist()
    if all(type(v) is int and 0 <= v < 2**64 for v in values):
        return np.array(values, dtype=np.uint64).reshape(raw.shape)
    return raw


_KINDS_ACCEPTED = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "O": "USO"}


def _cast(name: str, raw: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    dtype = DATATYPES[datatype]
    if raw.size == 0:
        return raw.astype(dtype)
    if raw.dtype.kind not in _KINDS_ACCEPTED[dtype.kind]:
        raise ValidationError(
            f"input {name!r}: datatype {datatype} cannot hold the values sent ({_describe_kind(raw.dtype.kind)})"
        )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise ValidationError(f"input {name!r}: values from {low} to {high} do not fit {datatype}")
    if dtype.kind == "O":
        return np.array(raw.tolist(), dtype=object)
    return raw.astype(dtype, copy=False)


def _describe_kind(kind: str) -> str:
    return {
        "f": "fractional numbers",
        "i": "integers",
        "u": "integers",
        "b": "booleans",
        "U": "strings",
        "O": "mixed values or numbers too large",
    }.get(kind, kind)


def as_tensor(name: str, value: Any, datatype: str | None = None) -> Tensor:
    """A Tensor from an array-like; the datatype follows the numpy dtype unless given."""
    array = np.asarray(value)
    if datatype is not None:
        array = array.astype(DATATYPES[datatype], copy=False)
    elif array.dtype.kind in "US":
        array = array.astype(object)
    return Tensor(name, datatype or datatype_of(array), array)


def tensor_json(tensor: Tensor) -> dict[str, Any]:
    data = tensor.data
    flat: Any
    if data.dtype.kind == "O" or data.dtype.kind in "US":
        flat = [v.decode() if isinstance(v, bytes) else v for v in data.reshape(-1).tolist()]
    else:
        flat = np.ascontiguousarray(data).reshape(-1)
    out: dict[str, Any] = {
        "name": tensor.name,
        "shape": list(data.shape),
        "datatype": tensor.datatype,
        "data": flat,
    }
    if tensor.parameters:
        out["parameters"] = dict(tensor.parameters)
    return out
