"""Memory bombs: no record makes decoding allocate more than a small multiple of its own size.

Parsing JSON into Python objects alone takes up to about 33 times the text (a list of empty
lists: 64 bytes of objects for each 3-byte `[],`); decoding may add the arrays (at most 8 bytes a
value), never numpy's fixed-width strings of count x longest string.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from schemas.codec import Limits, decode_request
from schemas.errors import RecordError, ValidationError
from tests.factories import make_record, v2_body, v2_input
from worker.pipeline import decode

PARSE_FACTOR = 48  # bytes of Python objects per byte of JSON text, with room to spare
FIXED_BYTES = 65_536  # what any decoding allocates, however small the record


def _deep(depth: int) -> Any:
    return json.loads("[" * depth + "1" + "]" * depth)


HOSTILE = [
    pytest.param(v2_body(v2_input("x", "FP32", [1, 2001], [1] * 2000 + ["a" * 2000])), id="number-beside-string"),
    pytest.param(v2_body(v2_input("x", "BYTES", [1, 2001], ["a" * 2000] + ["b"] * 2000)), id="long-and-short-strings"),
    pytest.param(v2_body(v2_input("x", "INT64", [2000, 1], [[1]] * 1999 + [["a" * 2000]])), id="nested-beside-string"),
    pytest.param(v2_body(v2_input("x", "FP32", [1, 300_000], [1] * 300_000)), id="many-small-numbers"),
    pytest.param(v2_body(v2_input("x", "BYTES", [1, 200_000], ["b"] * 200_000)), id="many-short-strings"),
    pytest.param(v2_body(v2_input("x", "FP32", [0], [[]] * 200_000)), id="many-empty-lists"),
    pytest.param(v2_body(v2_input("x", "FP32", [10**12], [1.0, 2.0])), id="shape-far-over-the-data"),
    pytest.param(v2_body(v2_input("x", "FP32", [1], _deep(200))), id="deep-nesting"),
    pytest.param(v2_body(v2_input("x", "FP32", [0, 2**62, 2**62], [])), id="empty-past-numpy-limits"),
]

DECODERS: dict[str, Callable[[bytes], object]] = {
    "codec": lambda value: decode_request(value),
    "worker": lambda value: decode(make_record(value), Limits()),
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("value", HOSTILE)
def test_decoding_allocates_a_small_multiple_of_the_record(value: bytes, decoder: str) -> None:
    """Decoding a hostile record (accepted or refused with a RecordError) allocates at most
    PARSE_FACTOR times its size, plus a fixed amount."""
    tracemalloc.start()
    try:
        DECODERS[decoder](value)
    except RecordError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    assert peak <= PARSE_FACTOR * len(value) + FIXED_BYTES, f"{peak} bytes for a record of {len(value)}"


def test_numbers_beside_a_long_string_are_refused_before_any_array_is_built() -> None:
    """250 000 numbers and one string of 400 000 characters (a 900 KB record) are refused as
    strings FP32 cannot hold; a fixed-width array of them would take 400 GB."""
    data: list[Any] = [1] * 250_001
    data[7] = "a" * 400_000
    value = v2_body(v2_input("x", "FP32", [1, len(data)], data))

    with pytest.raises(ValidationError, match=r"^input 'x': datatype FP32 cannot hold the values sent \(strings\)$"):
        decode_request(value)


def test_strings_of_very_different_lengths_are_held_as_objects() -> None:
    """One string of 400 000 characters beside 100 000 short ones decodes to an object array
    holding the strings as sent (160 GB as fixed-width strings)."""
    data = ["a" * 400_000] + ["b"] * 100_000 + ["c\x00"]  # numpy's fixed-width strings would drop the NUL
    value = v2_body(v2_input("x", "BYTES", [1, len(data)], data))

    array = decode_request(value).inputs[0].data

    assert (np.dtype(object), (1, len(data))) == (array.dtype, array.shape)
    assert data == array.reshape(-1).tolist()


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        pytest.param(["a", 1], "BYTES", r"BYTES cannot hold the values sent \(integers\)", id="bytes-number"),
        pytest.param(["a", None], "BYTES", r"BYTES cannot hold the values sent \(nulls\)", id="bytes-null"),
        pytest.param([{}, "a"], "BYTES", r"BYTES cannot hold the values sent \(objects\)", id="bytes-object"),
        pytest.param([1.0, None, "a"], "FP32", r"FP32 cannot hold the values sent \(nulls, strings\)", id="several"),
        pytest.param([[1.0], [2.0, 3.0]], "FP32", "ragged", id="ragged-rows"),
        pytest.param([[[1.0]], [2.0]], "FP32", "ragged", id="ragged-depth"),
        pytest.param([1.0, [2.0]], "FP32", "ragged", id="list-beside-number"),
    ],
)
def test_values_are_checked_against_the_datatype_before_conversion(data: Any, datatype: str, message: str) -> None:
    """Values of a type the datatype never takes, and ragged nesting, are refused by name."""
    value = v2_body(v2_input("x", datatype, [len(data)], data))

    with pytest.raises(ValidationError, match=message):
        decode_request(value)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        pytest.param([[1, 2], [3, 4]], [4], id="nested-as-flat"),
        pytest.param([1, 2, 3, 4], [2, 2], id="flat-as-nested"),
        pytest.param([[1, 2, 3, 4]], [2, 2], id="other-nesting"),
        pytest.param(_deep(200), [1], id="deep"),
        pytest.param([[], []], [2, 0], id="empty-rows"),
    ],
)
def test_any_regular_nesting_of_the_right_count_decodes(data: Any, shape: list[int]) -> None:
    """Row-major values in any regular nesting decode to the declared shape, as numpy reshapes them."""
    array = decode_request(v2_body(v2_input("x", "INT64", shape, data))).inputs[0].data

    assert tuple(shape) == array.shape
    assert _flat(data) == array.reshape(-1).tolist()


def _flat(data: Any) -> list[Any]:
    return [leaf for item in data for leaf in _flat(item)] if isinstance(data, list) else [data]


@pytest.mark.parametrize("shape", [[0, 2**63 - 1], [0, 2**62, 2**62], [1] * 65])
def test_shapes_numpy_cannot_hold_are_validation_errors(shape: list[int]) -> None:
    """A shape past numpy's limits (dimensions too large, more than 64 of them) is a ValidationError."""
    data: Any = [] if 0 in shape else 1.0

    with pytest.raises(ValidationError, match=r"cannot be held"):
        decode_request(v2_body(v2_input("x", "FP32", shape, data)))
