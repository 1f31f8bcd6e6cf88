"""Binary outputs (Triton's binary tensor data extension on results): asked for, written, read back."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.binary import NO_BINARY, BinaryOutputs, load_response_body
from schemas.codec import ResponseEncoder, decode_request, decode_response
from schemas.errors import DecodeError
from schemas.tensors import DATATYPES, Tensor, binary_of
from tests.factories import v2_body, v2_input

ALL = BinaryOutputs(default=True)
X = v2_input("x", "FP32", [1, 1], [0.5])
BINARY_TYPES = ["FP32", "INT64", "BOOL", "BYTES", "FP16", "UINT8"]


def _elements(datatype: str) -> st.SearchStrategy[Any]:
    if datatype in ("FP32", "FP16"):
        return st.floats(width=16 if datatype == "FP16" else 32, allow_nan=False, allow_infinity=False)
    if datatype == "BOOL":
        return st.booleans()
    info = np.iinfo(DATATYPES[datatype])
    return st.integers(int(info.min), int(info.max))


@st.composite
def batch_outputs(draw: st.DrawFn, rows: int) -> Tensor:
    """An output of `rows` rows, of a datatype the binary form carries, with a random inner shape."""
    datatype = draw(st.sampled_from(BINARY_TYPES))
    shape = (rows, *draw(st.lists(st.integers(1, 3), max_size=2)))
    if datatype == "BYTES":
        values = draw(st.lists(st.text(max_size=6), min_size=math.prod(shape), max_size=math.prod(shape)))
        return Tensor("y", datatype, np.array(values, dtype=object).reshape(shape))
    return Tensor("y", datatype, draw(hnp.arrays(DATATYPES[datatype], shape, elements=_elements(datatype))))


def _split(value: bytes, length: int | None) -> tuple[Any, bytes]:
    assert length is not None
    return orjson.loads(value[:length]), value[length:]


def _same(expected: Tensor, actual: Tensor) -> None:
    assert (expected.name, expected.datatype, expected.shape) == (actual.name, actual.datatype, actual.shape)
    assert expected.data.tolist() == actual.data.tolist()


# ---------------------------------------------------------------------------------------------
# What a request asks for


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"parameters": {"binary_data_output": True}}, {"a": True, "b": True}, id="all"),
        pytest.param(
            {"outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]},
            {"a": True, "b": False},
            id="one-output",
        ),
        pytest.param(
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
            },
            {"a": False, "b": True},
            id="output-overrides-request",
        ),
    ],
)
def test_requests_ask_for_binary_outputs_as_triton_reads_them(extra: dict[str, Any], expected: dict[str, bool]) -> None:
    """binary_data_output asks for every output, binary_data for one, and binary_data overrides it."""
    request = decode_request(v2_body(X, **extra))

    assert expected == {name: request.binary.wants(name) for name in expected}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"outputs": [{"name": "a"}]},
        {"parameters": {"binary_data_output": False}, "outputs": [{"name": "a", "parameters": {"binary_data": False}}]},
    ],
)
def test_requests_without_a_true_flag_ask_for_no_binary(extra: dict[str, Any]) -> None:
    """No flag, or only false ones: the request holds NO_BINARY, and its output names as before."""
    request = decode_request(v2_body(X, **extra))

    assert request.binary is NO_BINARY
    assert tuple(o["name"] for o in extra.get("outputs", [])) == request.outputs


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"parameters": {"binary_data_output": "true"}}, "'binary_data_output' must be true or false"),
        ({"outputs": [{"name": "a", "parameters": {"binary_data": 1}}]}, "'binary_data' of requested output 'a'"),
        ({"outputs": [{"name": "a", "parameters": []}]}, "'parameters' of requested output 'a' must be an object"),
    ],
)
def test_binary_flags_that_are_not_booleans_are_decode_errors(extra: dict[str, Any], message: str) -> None:
    """A flag that is not a JSON boolean (or output parameters that are not an object) is a DecodeError."""
    with pytest.raises(DecodeError, match=message):
        decode_request(v2_body(X, **extra))


# ---------------------------------------------------------------------------------------------
# Writing: the exact bytes


def test_a_binary_output_is_triton_s_layout() -> None:
    """The JSON lists the output with binary_data_size and no data; its little-endian bytes follow."""
    outputs = {"y": Tensor("y", "FP32", np.array([[0.5, -2.0]], dtype=np.float32))}

    value, length = ResponseEncoder("m", "1", outputs, whole=True).encode_binary("r", 0, 1, ["y"], ALL)

    body, data = _split(value, length)
    assert [{"name": "y", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}] == body[
        "outputs"
    ]
    assert struct.pack("<2f", 0.5, -2.0) == data


def test_bool_and_bytes_outputs_use_triton_s_element_encoding() -> None:
    """BOOL is one byte (1 or 0); a BYTES element is a 4-byte little-endian length, then its UTF-8 bytes."""
    outputs = {
        "flag": Tensor("flag", "BOOL", np.array([True, False, True])),
        "label": Tensor("label", "BYTES", np.array(["cat", "", "été"], dtype=object)),
    }

    value, length = ResponseEncoder("m", "1", outputs, whole=True).encode_binary("r", 0, 3, ["flag", "label"], ALL)

    _, data = _split(value, length)
    word = "été".encode()
    assert b"\x01\x00\x01" + b"\x03\x00\x00\x00cat" + b"\x00\x00\x00\x00" + struct.pack("<I", len(word)) + word == data


def test_multi_row_records_take_their_rows_straight_from_the_batch() -> None:
    """Records of 2, 1 and 3 rows cut from one batch of 6: each gets the bytes of exactly its rows."""
    batch = np.arange(6 * 4, dtype=np.int64).reshape(6, 2, 2)
    encoder = ResponseEncoder("m", "1", {"y": Tensor("y", "INT64", batch)}, whole=False)

    values = [encoder.encode_binary("r", start, count, ["y"], ALL) for start, count in [(0, 2), (2, 1), (3, 3)]]

    split = [_split(value, length) for value, length in values]
    assert [batch[0:2].tobytes(), batch[2:3].tobytes(), batch[3:6].tobytes()] == [data for _, data in split]
    assert [[2, 2, 2], [1, 2, 2], [3, 2, 2]] == [body["outputs"][0]["shape"] for body, _ in split]


def test_outputs_of_another_byte_order_are_written_little_endian() -> None:
    """A big-endian array's values go out as little-endian bytes."""
    big = np.array([1.5, 2.5], dtype=">f8")

    assert struct.pack("<2d", 1.5, 2.5) == binary_of(big, "FP64")


def test_binary_and_json_outputs_mix_in_one_response() -> None:
    """Only the outputs asked for are binary; the JSON ones keep their data; bytes follow in output order."""
    outputs = {
        "a": Tensor("a", "FP32", np.array([[1.0], [2.0]], dtype=np.float32)),
        "b": Tensor("b", "INT64", np.array([7, 8], dtype=np.int64), {"labels": ["x", "y"]}),
        "c": Tensor("c", "BOOL", np.array([True, False])),
    }
    wanted = BinaryOutputs(default=False, chosen={"a": True, "c": True})
    encoder = ResponseEncoder("m", "1", outputs, whole=False)

    value, length = encoder.encode_binary("r", 1, 1, ["a", "b", "c"], wanted)

    body, data = _split(value, length)
    assert [
        {"name": "a", "shape": [1, 1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
        {"name": "b", "shape": [1], "datatype": "INT64", "data": [8], "parameters": {"labels": ["x", "y"]}},
        {"name": "c", "shape": [1], "datatype": "BOOL", "parameters": {"binary_data_size": 1}},
    ] == body["outputs"]
    assert struct.pack("<f", 2.0) + b"\x00" == data


def test_binary_outputs_keep_their_other_parameters() -> None:
    """An output's own parameters (class labels) are written beside binary_data_size, and read back without it."""
    outputs = {"p": Tensor("p", "FP32", np.array([[0.25, 0.75]], dtype=np.float32), {"labels": [0, 1]})}

    value, length = ResponseEncoder("m", "1", outputs, whole=True).encode_binary("r", 0, 1, ["p"], ALL)

    assert {"labels": [0, 1], "binary_data_size": 8} == _split(value, length)[0]["outputs"][0]["parameters"]
    assert {"labels": [0, 1]} == decode_response(value, header_length=length).output("p").parameters


def test_without_binary_outputs_the_value_is_today_s_json_byte_for_byte() -> None:
    """No output asked for as binary: the same JSON bytes as before binary outputs existed, and no length."""
    outputs = {"y": Tensor("y", "FP32", np.array([[0.5, 0.25], [1.0, 2.0]], dtype=np.float32))}
    encoder = ResponseEncoder("m", "1", outputs, whole=False)
    today = (
        b'{"id":"r","model_name":"m","model_version":"1",'
        b'"outputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":[1.0,2.0]}]}'
    )

    assert today == encoder.encode("r", 1, 1, ["y"])
    assert (today, None) == encoder.encode_binary("r", 1, 1, ["y"], BinaryOutputs(False, {"y": False}))


# ---------------------------------------------------------------------------------------------
# Reading back


@given(st.integers(1, 5).flatmap(lambda rows: st.tuples(batch_outputs(rows), st.integers(0, rows - 1))))
def test_binary_outputs_decode_like_their_json_form(case: tuple[Tensor, int]) -> None:
    """For FP32, INT64, BOOL, BYTES, FP16 and UINT8: a record's rows read back from the binary form
    equal those of the JSON form, whole batch or cut from it."""
    output, start = case
    for whole, count in [(True, output.shape[0]), (False, output.shape[0] - start)]:
        first = 0 if whole else start
        encoder = ResponseEncoder("m", "1", {"y": output}, whole=whole)

        value, length = encoder.encode_binary("r", first, count, ["y"], ALL)

        as_json = decode_response(encoder.encode("r", first, count, ["y"])).output("y")
        as_binary = decode_response(value, header_length=length).output("y")
        _same(as_json, as_binary)
        assert as_json.data.dtype == as_binary.data.dtype


def test_nonfinite_values_survive_the_binary_form() -> None:
    """NaN and Infinity, null in the JSON form, read back as themselves from the binary form."""
    outputs = {"y": Tensor("y", "FP32", np.array([np.nan, np.inf, -np.inf], dtype=np.float32))}

    value, length = ResponseEncoder("m", "1", outputs, whole=True).encode_binary("r", 0, 3, ["y"], ALL)

    np.testing.assert_array_equal(outputs["y"].data, decode_response(value, header_length=length).output("y").data)


def test_load_response_body_gives_the_json_form_of_binary_outputs() -> None:
    """A reader of JSON (collect) gets the same body from the binary form as from the JSON form:
    FP32 values as JSON writes them, non-finite ones as null."""
    outputs = {
        "p": Tensor("p", "FP32", np.array([[0.1, np.nan], [0.3, 0.7]], dtype=np.float32)),
        "s": Tensor("s", "BYTES", np.array(["a", "b"], dtype=object)),
    }
    encoder = ResponseEncoder("m", "1", outputs, whole=False)

    value, length = encoder.encode_binary("r", 0, 2, ["p", "s"], ALL)

    assert orjson.loads(encoder.encode("r", 0, 2, ["p", "s"])) == load_response_body(value, header_length=length)


def test_bytes_elements_that_are_not_utf8_read_back_as_bytes() -> None:
    """A BYTES element that is not UTF-8 decodes to `bytes` (text to `str`); JSON readers refuse it."""
    outputs = {"s": Tensor("s", "BYTES", np.array([b"\xff\x00", "ok"], dtype=object))}

    value, length = ResponseEncoder("m", "1", outputs, whole=True).encode_binary("r", 0, 2, ["s"], ALL)

    assert [b"\xff\x00", "ok"] == decode_response(value, header_length=length).output("s").data.tolist()
    with pytest.raises(DecodeError, match="not UTF-8 text"):
        load_response_body(value, header_length=length)


def _binary_response(
    size: int, data: bytes, datatype: str = "FP32", shape: tuple[int, ...] = (2,)
) -> tuple[bytes, int]:
    output = {"name": "y", "shape": list(shape), "datatype": datatype, "parameters": {"binary_data_size": size}}
    header = orjson.dumps({"id": "r", "model_name": "m", "outputs": [output]})
    return header + data, len(header)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(_binary_response(12, struct.pack("<2f", 1, 2)), "overruns the binary data", id="overrun"),
        pytest.param(_binary_response(8, struct.pack("<3f", 1, 2, 3)), "4 bytes of binary data follow", id="extra"),
        pytest.param(_binary_response(4, struct.pack("<f", 1)), r"shape \[2\] of FP32 needs 8 bytes", id="short"),
        pytest.param(_binary_response(5, b"\x09\x00\x00\x00a", "BYTES", (1,)), "length-prefixed", id="bytes"),
    ],
)
def test_binary_data_that_does_not_fit_the_header_is_a_decode_error(value: tuple[bytes, int], message: str) -> None:
    """Sizes that overrun, bytes left over, a size that does not fit the shape, a bad BYTES length: DecodeError."""
    with pytest.raises(DecodeError, match=message):
        decode_response(value[0], header_length=value[1])


@pytest.mark.parametrize("length", [0, 10_000])
def test_a_header_length_outside_the_value_is_a_decode_error(length: int) -> None:
    """A length header of 0 or past the end of the value cannot split it."""
    value, _ = _binary_response(8, struct.pack("<2f", 1, 2))

    with pytest.raises(DecodeError, match="does not fit"):
        decode_response(value, header_length=length)
