"""Tensors on the wire: V2 datatypes, numpy arrays, and the conversions between them.

`DATATYPES` maps each V2 datatype to its numpy dtype. Arrays come from JSON data (checked before
any array is built: ragged rows, a shape that does not hold the values, values of a type the
datatype does not take; then values out of the datatype's range) or from the raw little-endian
bytes of Triton's binary extension, and go back out as JSON-ready dicts.
"""

from __future__ import annotations

import math
import struct
import sys
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
    return _shaped(name, np.frombuffer(blob, dtype=dtype).astype(DATATYPES[datatype], copy=False), shape)


def binary_of(data: np.ndarray[Any, Any], datatype: str) -> bytes:
    """The bytes of `data` in Triton's binary form: row-major, little-endian, no padding.

    BOOL is one byte per element (0 or 1). A BYTES element is its length as a 4-byte
    little-endian unsigned integer, then its bytes (a `str` as UTF-8).
    """
    if datatype == "BYTES":
        return _length_prefixed(data)
    if data.dtype.isnative and _LITTLE_ENDIAN_HOST:
        return data.tobytes()
    return data.astype(data.dtype.newbyteorder("<")).tobytes()


def _length_prefixed(data: np.ndarray[Any, Any]) -> bytes:
    parts: list[bytes] = []
    for value in data.reshape(-1).tolist():
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts += (_LENGTH.pack(len(raw)), raw)
    return b"".join(parts)


_LENGTH = struct.Struct("<I")
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def strings_from_binary(name: str, blob: bytes, shape: list[int]) -> np.ndarray[Any, Any]:
    """A BYTES tensor from Triton's binary form (`binary_of`), or ValidationError.

    Each element is a `str` when it is UTF-8 (as the JSON form gives it), else `bytes`.
    """
    values: list[str | bytes] = []
    cursor, count = 0, math.prod(shape)
    while cursor < len(blob) and len(values) < count:
        if cursor + _LENGTH.size > len(blob):
            break
        (size,) = _LENGTH.unpack_from(blob, cursor)
        cursor += _LENGTH.size
        raw = blob[cursor : cursor + size]
        cursor += size
        try:
            values.append(raw.decode())
        except UnicodeDecodeError:
            values.append(raw)
    if len(values) != count or cursor != len(blob):
        raise ValidationError(f"output {name!r}: its binary data is not {count} length-prefixed BYTES elements")
    return _shaped(name, np.array(values, dtype=object), shape)


def tensor_from_json(
    name: str, datatype: str, shape: list[int], data: Any, parameters: Mapping[str, Any] | None
) -> Tensor:
    """A Tensor from the JSON `data` of an input, checked as `array_from_json` checks it."""
    return Tensor(name, datatype, array_from_json(name, data, shape, datatype), parameters)


def array_from_json(name: str, data: Any, shape: list[int], datatype: str) -> np.ndarray[Any, Any]:
    """The array of an input's JSON `data`, or ValidationError.

    Nesting, count and value types are checked on the JSON values before any array is built, so
    that no array is larger than a small multiple of the values sent: numpy would otherwise make
    one fixed-width string array of count x longest string of `[1, 2, "a" * 500000, ...]`.
    """
    leaves = json_leaves(name, data)
    size = math.prod(shape)
    if len(leaves) != size:
        raise ValidationError(f"input {name!r}: shape {shape} holds {size} values, 'data' has {len(leaves)}")
    array = _strings(name, leaves) if datatype == "BYTES" else _numbers(name, leaves, datatype)
    return _shaped(name, array, shape)


def json_leaves(name: str, data: Any) -> list[Any]:
    """The values of `data` in row-major order, nested lists flattened level by level (ValidationError: ragged).

    Any regular nesting is accepted (`[[1, 2], [3, 4]]` and `[1, 2, 3, 4]` alike); a scalar is one value.
    """
    if type(data) is not list:
        return [data]
    level = data
    while level and type(level[0]) is list:
        width = len(level[0])
        for row in level:
            if type(row) is not list or len(row) != width:
                raise _ragged(name)
        level = [value for row in level for value in row]
    return level


def _ragged(name: str) -> ValidationError:
    return ValidationError(f"input {name!r}: 'data' is ragged (rows of different lengths)")


def _strings(name: str, leaves: list[Any]) -> np.ndarray[Any, Any]:
    """BYTES values: strings only, held as objects (never numpy's fixed-width strings)."""
    if not _STRINGS.issuperset(map(type, leaves)):
        raise _cannot_hold(name, "BYTES", leaves, _STRINGS)
    return np.array(leaves, dtype=object)


def _numbers(name: str, leaves: list[Any], datatype: str) -> np.ndarray[Any, Any]:
    """Numeric values (numbers and booleans only), converted and range-checked as `datatype`."""
    try:
        sum(leaves)  # raises TypeError on a string, null, list or object, at a few ns per value
    except TypeError:
        raise _cannot_hold(name, datatype, leaves, _NUMBERS) from None
    except OverflowError:
        pass  # an integer too large for a float beside floats: numpy holds it as an object, refused below
    raw = np.asarray(leaves)
    if raw.dtype.kind == "f" and datatype == "UINT64":
        raw = _as_uint64(leaves, raw)
    return _cast(name, raw, datatype)


def _cannot_hold(name: str, datatype: str, leaves: list[Any], allowed: frozenset[type]) -> ValidationError:
    found = set(map(type, leaves))
    if list in found:
        return _ragged(name)
    wrong = ", ".join(sorted(_TYPE_NAMES.get(t, t.__name__) for t in found - allowed))
    return ValidationError(f"input {name!r}: datatype {datatype} cannot hold the values sent ({wrong})")


_STRINGS: frozenset[type] = frozenset({str})
_NUMBERS: frozenset[type] = frozenset({int, float, bool})
_TYPE_NAMES: dict[type, str] = {
    str: "strings",
    type(None): "nulls",
    dict: "objects",
    bool: "booleans",
    int: "integers",
    float: "fractional numbers",
}


def _shaped(name: str, array: np.ndarray[Any, Any], shape: list[int]) -> np.ndarray[Any, Any]:
    if array.shape == tuple(shape):
        return array
    try:
        return array.reshape(shape)
    except ValueError as error:  # an empty tensor whose other dimensions are past numpy's limits
        raise ValidationError(f"input {name!r}: shape {shape} cannot be held: {error}") from None


def _as_uint64(values: list[Any], raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # numpy reads [0, 2**63] (an int64 and a uint64 value) as float64; keep such integers exact
    if all(type(v) is int and 0 <= v < 2**64 for v in values):
        return np.array(values, dtype=np.uint64)
    return raw


_KINDS_ACCEPTED = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


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
    return raw.astype(dtype, copy=False)


def _describe_kind(kind: str) -> str:
    return {
        "f": "fractional numbers",
        "i": "integers",
        "u": "integers",
        "b": "booleans",
        "O": "integers too large for 64 bits",
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
