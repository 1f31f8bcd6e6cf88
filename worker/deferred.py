"""Deferred conversion of JSON tensors: decode a record without numpy, convert a whole batch at once.

Turning each record's JSON numbers into a numpy array costs a few microseconds of Python per
record. The worker instead keeps a small numeric input's JSON list as sent (`DeferredTensor`),
checks the request against the model on its declared shape and datatype, and builds the batch's
array in one pass (`stack`).

Decoding defers a list only when it is flat, holds exactly its shape's values, and every value
is a number (a boolean, for BOOL; no fractions, for integer datatypes), so that a record's count
and value types are known good when it is decoded; anything else is converted at once by
`schemas.tensors.array_from_json`, which raises the precise ValidationError of a bad record. What
only numpy can tell (integers out of an integer datatype's range, a record of booleans alone for
a numeric datatype) is found when the batch converts that record alone.

Lists of more than `MAX_DEFERRED_VALUES` values are converted at decode too. Deferring saves
about a microsecond a record, which matters for the one-row requests of 8 to 32 floats that make
up most traffic; past about a hundred values a record's own conversion at decode costs less than
its share of the batch's (measured, decode plus batch per record: 64 FP32 values 6.7 us deferred,
7.2 at decode; 128 values 10.3 and 9.3; 1024 values 66 and 49), and a Python list of floats held
until the batch takes 32 bytes a value (8 for the pointer, 24 for the float) where FP32 takes 4.

The batch array is used only when it is certainly what converting each record alone would give:
nothing whose conversion depends on its neighbours (a record of booleans beside floats, integers
past float64's exact range). Otherwise each record is converted alone (`DeferredTensor.data`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from schemas.tensors import DATATYPES, Tensor, array_from_json, tensor_from_json

#: Python types of the values each numpy kind takes (bool is not an int here, as in `tensors._cast`).
_VALUE_TYPES: dict[str, frozenset[type]] = {
    "f": frozenset({float, int}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "b": frozenset({bool}),
}
_EXACT_INTEGERS = 2**53  # integers up to here are exact in float64, so int -> float32 rounds once
_BOOLEANS = frozenset({bool})
_KINDS = {name: dtype.kind for name, dtype in DATATYPES.items() if name != "BYTES"}  # numeric datatype -> kind

#: A numeric input of more values than this is converted to numpy at decode (see the module docstring).
MAX_DEFERRED_VALUES = 64


class DeferredTensor(Tensor):
    """A numeric input sent as a flat JSON list, converted to an array on first use of `data`.

    `shape` is the declared shape, and `raw` holds exactly its values (numbers, see `from_json`).
    Reading `data` converts the list as `array_from_json` does and raises its ValidationError
    when a value does not fit the datatype (an integer out of range).
    """

    __slots__ = ("declared", "raw")

    def __init__(
        self, name: str, datatype: str, shape: list[int], raw: list[Any], parameters: Mapping[str, Any] | None
    ) -> None:
        # `data` is left unset: the slot's AttributeError sends its first read to __getattr__
        self.name = name
        self.datatype = datatype
        self.parameters = parameters
        self.raw = raw
        self.declared = tuple(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.declared

    def __getattr__(self, attribute: str) -> Any:
        if attribute != "data":
            raise AttributeError(attribute)
        self.data = array_from_json(self.name, self.raw, list(self.declared), self.datatype)
        return self.data


def from_json(name: str, datatype: str, shape: list[int], data: Any, parameters: Mapping[str, Any] | None) -> Tensor:
    """The worker's tensor for JSON data: small flat numeric lists deferred, anything else converted now.

    Converted now, or refused with the strict ValidationError: BYTES, nested lists, scalars,
    empty tensors, large lists, and a list whose count or values do not fit the input.
    """
    if type(data) is not list or not data or not shape or len(data) > MAX_DEFERRED_VALUES:
        return tensor_from_json(name, datatype, shape, data, parameters)
    if len(data) != math.prod(shape) or not _plain_numbers(data, _KINDS.get(datatype)):  # nested lists: not numbers
        return tensor_from_json(name, datatype, shape, data, parameters)
    return DeferredTensor(name, datatype, shape, data, parameters)


def _plain_numbers(data: list[Any], kind: str | None) -> bool:
    """True if every value is a number a datatype of numpy `kind` may take (booleans for BOOL, integers
    for integer types); False for BYTES (kind None).

    `sum` raises TypeError on a string, null, list or object (all that JSON holds besides numbers
    and booleans) at a few nanoseconds a value, and gives an int only when no value is a float.
    """
    if kind == "b":
        return _BOOLEANS.issuperset(map(type, data))
    try:
        total = sum(data, 0.0) if kind == "f" else sum(data)  # 0.0: sum's float loop from the start
    except (TypeError, OverflowError):  # OverflowError: an integer too large for a float, beside floats
        return False
    return kind == "f" or (kind is not None and type(total) is int)


def stack(tensors: Sequence[Tensor]) -> np.ndarray[Any, Any] | None:
    """One input of every record of a batch as one array, or None: convert record by record.

    Not None only when the array equals the concatenation of each record's own conversion.
    """
    first = tensors[0]
    if type(first) is not DeferredTensor:
        return None
    tail = first.declared[1:]
    values: list[Any] = []
    rows = 0
    for tensor in tensors:  # one plain loop: this runs for every record of every batch
        if type(tensor) is not DeferredTensor or tensor.declared[1:] != tail:
            return None
        values += tensor.raw
        rows += tensor.declared[0]
    dtype = DATATYPES[first.datatype]
    types = set(map(type, values))
    if not types <= _VALUE_TYPES.get(dtype.kind, frozenset()):
        return None
    array = np.array(values)
    if not _exact(array, types, dtype):
        return None
    return array.astype(dtype, copy=False).reshape(rows, *tail)


def _exact(array: np.ndarray[Any, Any], types: set[type], dtype: np.dtype[Any]) -> bool:
    """True if `array` (of values of `types`) converts to `dtype` as each record alone would."""
    if dtype.kind == "b":
        return True
    if types == {int}:  # all int64, as each record's own array: no float64 promotion, no uint64
        if array.dtype.kind != "i":
            return False
        if dtype.kind == "f":
            return True
        info = np.iinfo(dtype)
        return bool(info.min <= array.min() and array.max() <= info.max)
    # floats, maybe beside integers: a record of integers alone would be int64, exact only up to 2**53
    return array.dtype.kind == "f" and (int not in types or bool(np.abs(array).max() <= _EXACT_INTEGERS))
