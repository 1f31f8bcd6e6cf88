"""The V2 wire codec: round trips, and every bad input rejected with the right error class."""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.codec import Limits, decode_request, decode_response, encode_request, encode_response
from schemas.errors import DecodeError, ValidationError
from schemas.tensors import DATATYPES, Tensor, as_tensor
from tests.factories import v2_body, v2_input

ROUND_TRIP_TYPES = ["INT64", "INT32", "INT8", "UINT8", "UINT64", "FP32", "FP64", "BOOL", "BYTES"]


def _elements(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "FP32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if datatype == "FP64":
        return st.floats(allow_nan=False, allow_infinity=False)
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=8)
    info = np.iinfo(DATATYPES[datatype])
    return st.integers(int(info.min), int(info.max))


@st.composite
def tensors(draw: st.DrawFn, name: str, rows: int) -> Tensor:
    """A tensor of `rows` rows, a random datatype and a random inner shape."""
    datatype = draw(st.sampled_from(ROUND_TRIP_TYPES))
    shape = (rows, *draw(st.lists(st.integers(1, 3), max_size=2)))
    if datatype == "BYTES":
        values = draw(st.lists(_elements(datatype), min_size=math.prod(shape), max_size=math.prod(shape)))
        array = np.array(values, dtype=object).reshape(shape)
    else:
        array = draw(hnp.arrays(DATATYPES[datatype], shape, elements=_elements(datatype)))
    return Tensor(name, datatype, array)


@st.composite
def requests(draw: st.DrawFn) -> list[Tensor]:
    """One to three tensors that agree on the batch size."""
    rows = draw(st.integers(1, 4))
    count = draw(st.integers(1, 3))
    return [draw(tensors(f"in{i}", rows)) for i in range(count)]


def _assert_same(expected: Tensor, actual: Tensor) -> None:
    assert expected.name == actual.name
    assert expected.datatype == actual.datatype
    assert expected.shape == actual.shape
    assert expected.data.tolist() == actual.data.tolist()
    if expected.datatype != "BYTES":
        assert expected.data.dtype == actual.data.dtype


# ---------------------------------------------------------------------------------------------
# Round trips


@given(requests(), st.one_of(st.none(), st.text(max_size=10)))
def test_decode_request_inverts_encode_request(inputs: list[Tensor], request_id: str | None) -> None:
    """Decoding an encoded request gives back its id, tensors, datatypes and shapes."""
    decoded = decode_request(encode_request(inputs, id=request_id))

    assert request_id == decoded.id
    assert len(inputs) == len(decoded.inputs)
    for expected, actual in zip(inputs, decoded.inputs, strict=True):
        _assert_same(expected, actual)


@given(requests())
def test_nested_data_decodes_like_flat_data(inputs: list[Tensor]) -> None:
    """A request whose `data` is nested row-major lists decodes to the same tensors as flat data."""
    body = {
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": t.data.tolist()} for t in inputs
        ]
    }

    decoded = decode_request(json.dumps(body).encode())

    for expected, actual in zip(inputs, decoded.inputs, strict=True):
        _assert_same(expected, actual)


def test_request_outputs_and_parameters_round_trip() -> None:
    """Requested outputs and request parameters survive encoding."""
    value = encode_request({"x": [[1.0, 2.0]]}, id="r1", outputs=["y", "z"], parameters={"p": 1})

    decoded = decode_request(value)

    assert ("y", "z") == decoded.outputs
    assert {"p": 1} == decoded.parameters
    assert decoded.rows == 1


def test_uint64_values_past_int64_stay_exact() -> None:
    """UINT64 data mixing small values and values >= 2**63 decodes exactly (numpy alone reads floats)."""
    decoded = decode_request(v2_body(v2_input("x", "UINT64", [3], [0, 2**63, 2**64 - 1])))

    assert [0, 2**63, 2**64 - 1] == decoded.inputs[0].data.tolist()
    assert np.dtype(np.uint64) == decoded.inputs[0].data.dtype


def test_uint64_rejects_negative_and_fractional_values() -> None:
    """The exact UINT64 path still refuses values UINT64 cannot hold."""
    with pytest.raises(ValidationError, match="UINT64 cannot hold"):
        decode_request(v2_body(v2_input("x", "UINT64", [2], [2**63, 0.5])))
    with pytest.raises(ValidationError, match="UINT64 cannot hold"):
        decode_request(v2_body(v2_input("x", "UINT64", [2], [2**63, -1])))


def test_scalar_input_counts_as_one_row() -> None:
    """A scalar input (shape []) decodes to a 0-d array and a batch of one."""
    decoded = decode_request(v2_body(v2_input("x", "INT64", [], 7)))

    assert () == decoded.inputs[0].shape
    assert decoded.rows == 1


@given(requests(), st.text(min_size=1, max_size=10), st.text(max_size=5))
def test_decode_response_inverts_encode_response(outputs: list[Tensor], rid: str, version: str) -> None:
    """Decoding an encoded response gives back its id, model, version and outputs."""
    value = encode_response(id=rid, model_name="m", model_version=version, outputs=outputs)

    decoded = decode_response(value)

    assert (rid, "m", version) == (decoded.id, decoded.model_name, decoded.model_version)
    for expected, actual in zip(outputs, decoded.outputs, strict=True):
        _assert_same(expected, actual)


def test_response_output_parameters_round_trip() -> None:
    """Output parameters (e.g. class labels) survive the response codec."""
    labels = Tensor("p", "FP32", np.array([[0.25, 0.75]], dtype=np.float32), {"labels": [0, 1]})

    decoded = decode_response(encode_response(id="a", model_name="m", model_version="1", outputs=[labels]))

    assert {"labels": [0, 1]} == decoded.output("p").parameters


def test_nonfinite_outputs_are_written_as_null() -> None:
    """NaN and Infinity in an output become JSON null (JSON has no literal for them)."""
    output = as_tensor("y", np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32))

    body = orjson.loads(encode_response(id="a", model_name="m", model_version="1", outputs=[output]))

    assert [None, None, None, 1.5] == body["outputs"][0]["data"]


def test_decode_response_rejects_non_responses() -> None:
    """A value that is not a V2 response is a DecodeError naming what is wrong."""
    with pytest.raises(DecodeError, match="not a V2 response"):
        decode_response(b'{"id": "a"}')


# ---------------------------------------------------------------------------------------------
# Bad inputs: DecodeError (not a readable request) vs ValidationError (readable, not acceptable)

GOOD_INPUT = v2_input("x", "FP32", [1, 2], [1.0, 2.0])

DECODE_ERRORS = [
    pytest.param(None, "empty", id="none"),
    pytest.param(b"", "empty", id="zero-bytes"),
    pytest.param(b"\x00\xff\x10binary", "not valid JSON", id="not-json"),
    pytest.param(b"hello world", "not valid JSON", id="plain-text"),
    pytest.param(v2_body(GOOD_INPUT)[:-5], "not valid JSON", id="truncated"),
    pytest.param(b"[1, 2, 3]", "JSON object, got a JSON list", id="array"),
    pytest.param(b'"text"', "JSON object, got a JSON str", id="string"),
    pytest.param(b"{}", "non-empty 'inputs'", id="no-inputs"),
    pytest.param(b'{"inputs": []}', "non-empty 'inputs'", id="empty-inputs"),
    pytest.param(b'{"inputs": {"x": 1}}', "non-empty 'inputs'", id="inputs-not-list"),
    pytest.param(v2_body(v2_input("x", "FP128", [1], [1.0])), "unknown datatype 'FP128'", id="datatype"),
    pytest.param(v2_body(v2_input("x", "FP32", [-1], [1.0])), "non-negative integers", id="neg-shape"),
    pytest.param(v2_body({"name": "x", "datatype": "FP32", "shape": [1]}), "has no 'data'", id="no-data"),
    pytest.param(v2_body({"datatype": "FP32", "shape": [1], "data": [1]}), "no 'name'", id="no-name"),
    pytest.param(v2_body(GOOD_INPUT, GOOD_INPUT), "appears twice", id="duplicate-name"),
    pytest.param(v2_body(GOOD_INPUT, id=7), "'id' must be a string", id="id-not-string"),
    pytest.param(v2_body(GOOD_INPUT, outputs=["y"]), "'outputs' must be a list", id="outputs-form"),
    pytest.param(
        v2_body(GOOD_INPUT, outputs=[{"name": "y"}, {"name": "z"}, {"name": "y"}]),
        r"^output 'y' requested twice; name each output once$",
        id="duplicate-output",
    ),
    pytest.param(b'\xef\xbb\xbf{"inputs": []}', "not valid JSON", id="utf8-bom"),
    pytest.param(b'{"inputs": [], "id": "\\ud800"}', "not valid JSON", id="lone-surrogate"),
]


@pytest.mark.parametrize(("value", "message"), DECODE_ERRORS)
def test_unreadable_values_raise_decode_error(value: bytes | None, message: str) -> None:
    """A value that is not a readable V2 request raises DecodeError saying why."""
    with pytest.raises(DecodeError, match=message):
        decode_request(value)


VALIDATION_ERRORS = [
    pytest.param(v2_input("x", "FP32", [2, 2], [1.0, 2.0, 3.0]), "holds 4 values, 'data' has 3", id="size"),
    pytest.param(v2_input("x", "FP32", [2, 2], [[1.0, 2.0], [3.0]]), "ragged", id="ragged"),
    pytest.param(v2_input("x", "INT64", [2], [1, 2.5]), "INT64 cannot hold .*fractional", id="fraction"),
    pytest.param(v2_input("x", "UINT8", [2], [1, 256]), "from 1 to 256 do not fit UINT8", id="uint8-high"),
    pytest.param(v2_input("x", "UINT8", [2], [-1, 3]), "from -1 to 3 do not fit UINT8", id="uint8-low"),
    pytest.param(v2_input("x", "FP32", [2], ["a", "b"]), "FP32 cannot hold .*strings", id="strings"),
    pytest.param(v2_input("x", "BOOL", [2], [0, 1]), "BOOL cannot hold .*integers", id="ints-as-bool"),
    pytest.param(v2_input("x", "FP32", [2], [1.0, None]), "FP32 cannot hold", id="null-value"),
]


@pytest.mark.parametrize(("tensor", "message"), VALIDATION_ERRORS)
def test_unacceptable_tensors_raise_validation_error(tensor: dict[str, Any], message: str) -> None:
    """A readable request whose data does not fit its shape or datatype raises ValidationError."""
    with pytest.raises(ValidationError, match=message):
        decode_request(v2_body(tensor))


def test_decode_and_validation_errors_are_distinct_stages() -> None:
    """DecodeError and ValidationError are siblings: neither is caught as the other."""
    assert not issubclass(DecodeError, ValidationError)
    assert not issubclass(ValidationError, DecodeError)
    assert ("decode", "validate") == (DecodeError.stage, ValidationError.stage)


def test_inputs_disagreeing_on_batch_size_are_rejected() -> None:
    """Inputs with different first dimensions raise ValidationError naming both sizes."""
    value = v2_body(v2_input("a", "FP32", [2, 1], [1.0, 2.0]), v2_input("b", "FP32", [3, 1], [1.0, 2.0, 3.0]))

    with pytest.raises(ValidationError, match=r"disagree on the batch size.*\[2, 3\]"):
        decode_request(value)


def test_rows_over_the_limit_are_rejected() -> None:
    """A request with more rows than max_request_rows raises ValidationError naming the setting."""
    value = v2_body(v2_input("x", "INT64", [5], [1, 2, 3, 4, 5]))

    with pytest.raises(ValidationError, match=r"5 rows, over the limit of 4.*MAX_REQUEST_ROWS"):
        decode_request(value, limits=Limits(max_request_rows=4))
    assert decode_request(value, limits=Limits(max_request_rows=5)).rows == 5


def test_values_over_max_record_bytes_are_rejected() -> None:
    """A value larger than max_record_bytes raises DecodeError before it is parsed."""
    value = v2_body(GOOD_INPUT)

    with pytest.raises(DecodeError, match=f"{len(value)} bytes, over the limit.*MAX_RECORD_BYTES"):
        decode_request(value, limits=Limits(max_record_bytes=len(value) - 1))
    assert decode_request(value, limits=Limits(max_record_bytes=len(value))).rows == 1


# ---------------------------------------------------------------------------------------------
# NaN and Infinity


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nonfinite_json_literals_are_rejected_by_default(number: float) -> None:
    """NaN/Infinity literals (as Python's json.dumps writes them) raise ValidationError."""
    value = json.dumps({"inputs": [v2_input("x", "FP64", [2], [1.0, number])]}).encode()

    with pytest.raises(ValidationError, match=r"NaN or Infinity.*ALLOW_NONFINITE"):
        decode_request(value)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nonfinite_json_literals_are_accepted_when_allowed(number: float) -> None:
    """With allow_nonfinite, NaN/Infinity literals decode to the same float."""
    value = json.dumps({"inputs": [v2_input("x", "FP64", [2], [1.0, number])]}).encode()

    data = decode_request(value, limits=Limits(allow_nonfinite=True)).inputs[0].data

    assert 1.0 == data[0]
    np.testing.assert_array_equal(np.array([number]), data[1:])


def test_json_overflowing_to_infinity_is_rejected() -> None:
    """A number too large for a double (1e400) is Infinity, rejected like the literal."""
    value = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}'

    with pytest.raises(ValidationError, match="NaN or Infinity"):
        decode_request(value)


@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_nonfinite_binary_data_is_rejected_unless_allowed(number: float) -> None:
    """NaN/Infinity sent as binary FP32 raise ValidationError, and decode when allowed."""
    blob = struct.pack("<2f", 1.0, number)
    value, length = _binary_request([("x", "FP32", [2], blob)])

    with pytest.raises(ValidationError, match="input 'x' holds NaN or Infinity"):
        decode_request(value, header_length=length)
    data = decode_request(value, header_length=length, limits=Limits(allow_nonfinite=True)).inputs[0].data
    np.testing.assert_array_equal(np.array([1.0, number], dtype=np.float32), data)


# ---------------------------------------------------------------------------------------------
# Text that UTF-8 cannot encode (read only by the NaN fallback parser)

NAN_INPUT = v2_input("x", "FP32", [1], [math.nan])


def _with_nan(**members: Any) -> bytes:
    """A request holding NaN, as Python's json writes it: a lone surrogate as the escape \\ud800."""
    return json.dumps({"inputs": [NAN_INPUT], **members}).encode()


@pytest.mark.parametrize(
    ("value", "member"),
    [
        pytest.param(_with_nan(id="\ud800"), "id", id="id"),
        pytest.param(_with_nan(inputs=[NAN_INPUT, v2_input("a\udfff", "FP32", [1], [1])]), "inputs", id="input-name"),
        pytest.param(_with_nan(inputs=[NAN_INPUT, v2_input("s", "BYTES", [1], ["\ud800"])]), "inputs", id="bytes-data"),
        pytest.param(_with_nan(parameters={"p": ["\udc00"]}), "parameters", id="parameter"),
        pytest.param(_with_nan(parameters={"\ud800": 1}), "parameters", id="parameter-key"),
        pytest.param(_with_nan(outputs=[{"name": "\ud800"}]), "outputs", id="output-name"),
        pytest.param(_with_nan(**{"\ud800": 1}), "\\ud800", id="unknown-member"),
    ],
)
def test_text_utf8_cannot_encode_is_a_decode_error(value: bytes, member: str) -> None:
    """With allow_nonfinite (Python's json reads the NaN), a lone surrogate anywhere in the request
    is a DecodeError naming the top-level member that holds it."""
    with pytest.raises(DecodeError, match=f"^'{re.escape(member)}' holds text that cannot be encoded as UTF-8"):
        decode_request(value, limits=Limits(allow_nonfinite=True))


def test_a_surrogate_pair_is_text() -> None:
    """The escapes of a surrogate pair (one character past U+FFFF) decode to that character."""
    value = _with_nan(id="\U0001f600")

    assert b"\\ud83d\\ude00" in value
    assert "\U0001f600" == decode_request(value, limits=Limits(allow_nonfinite=True)).id


def test_encoded_surrogates_are_not_valid_utf8() -> None:
    """A surrogate written as raw UTF-8 bytes (ED A0 80) is refused even where NaN is allowed."""
    value = _with_nan(id="-").replace(b'"-"', b'"\xed\xa0\x80"')

    with pytest.raises(DecodeError, match="'id' holds text that cannot be encoded as UTF-8"):
        decode_request(value, limits=Limits(allow_nonfinite=True))


# ---------------------------------------------------------------------------------------------
# Binary extension


def _binary_request(inputs: list[tuple[str, str, list[int], bytes]], **extra: Any) -> tuple[bytes, int]:
    header = v2_body(
        *[{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}} for n, d, s, b in inputs],
        **extra,
    )
    return header + b"".join(b for *_, b in inputs), len(header)


def test_binary_tensors_decode_from_little_endian_bytes() -> None:
    """Inputs with binary_data_size take their values from the raw bytes after the header, in order."""
    floats = np.array([[1.5, -2.0], [3.25, 4.0]], dtype="<f4")
    ints = np.array([[1], [-(2**40)]], dtype="<i8")
    value, length = _binary_request(
        [("f", "FP32", [2, 2], floats.tobytes()), ("i", "INT64", [2, 1], ints.tobytes())], id="b1"
    )

    decoded = decode_request(value, header_length=length)

    assert "b1" == decoded.id
    np.testing.assert_array_equal(floats, decoded.inputs[0].data)
    np.testing.assert_array_equal(ints, decoded.inputs[1].data)
    assert (np.dtype(np.float32), np.dtype(np.int64)) == (
        decoded.inputs[0].data.dtype,
        decoded.inputs[1].data.dtype,
    )


def test_binary_and_json_inputs_mix() -> None:
    """A JSON input beside a binary one takes no binary bytes."""
    header = v2_body(
        v2_input("j", "INT64", [1], [5]),
        {"name": "b", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
    )

    decoded = decode_request(header + struct.pack("<d", 0.5), header_length=len(header))

    assert [[5], [0.5]] == [t.data.tolist() for t in decoded.inputs]


@given(st.integers(1, 4), st.integers(1, 3), st.sampled_from(["FP32", "FP64", "INT64", "INT8", "UINT16", "BOOL"]))
@settings(max_examples=30)
def test_binary_size_must_match_the_shape(rows: int, cols: int, datatype: str) -> None:
    """binary_data_size one byte short of shape x itemsize raises ValidationError; exact decodes."""
    dtype = DATATYPES[datatype].newbyteorder("<")
    blob = np.zeros((rows, cols), dtype=dtype).tobytes()

    value, length = _binary_request([("x", datatype, [rows, cols], blob)])
    assert (rows, cols) == decode_request(value, header_length=length).inputs[0].shape

    short, length = _binary_request([("x", datatype, [rows, cols], blob[:-1])])
    with pytest.raises(ValidationError, match=f"needs {len(blob)} bytes, got {len(blob) - 1}"):
        decode_request(short, header_length=length)


def test_binary_size_overrunning_the_value_is_rejected() -> None:
    """A binary_data_size larger than the bytes that follow raises DecodeError."""
    value, length = _binary_request([("x", "FP32", [2], struct.pack("<2f", 1, 2))])

    with pytest.raises(DecodeError, match="overruns the binary data"):
        decode_request(value[:-1], header_length=length)


def test_unused_trailing_binary_bytes_are_rejected() -> None:
    """Bytes after the last binary input raise DecodeError."""
    value, length = _binary_request([("x", "FP32", [2], struct.pack("<2f", 1, 2))])

    with pytest.raises(DecodeError, match="3 bytes of binary data follow the inputs unused"):
        decode_request(value + b"abc", header_length=length)


@pytest.mark.parametrize("length", [0, -1, 10_000])
def test_header_length_outside_the_value_is_rejected(length: int) -> None:
    """A header length that is zero, negative or past the end raises DecodeError."""
    with pytest.raises(DecodeError, match="inference-header-content-length"):
        decode_request(v2_body(GOOD_INPUT), header_length=length)


def test_a_binary_request_without_its_length_header_names_the_header() -> None:
    """A binary request decoded as plain JSON is a DecodeError that names the header it needs."""
    value, _ = _binary_request([("x", "FP32", [2], struct.pack("<2f", 1.5, 2.5))])

    with pytest.raises(DecodeError, match=r"looks binary: .* needs the record header inference-header-content-length"):
        decode_request(value)


@pytest.mark.parametrize("value", [b"hello world", b'{"inputs": [', b"\xef\xbb\xbf{}"])
def test_text_that_is_not_json_gets_no_binary_hint(value: bytes) -> None:
    """Text that is not JSON (no control bytes, valid UTF-8) is not said to look binary."""
    with pytest.raises(DecodeError, match="not valid JSON") as raised:
        decode_request(value)

    assert "binary" not in str(raised.value)


def test_bytes_tensors_cannot_be_binary() -> None:
    """BYTES tensors sent as binary raise ValidationError (their length prefixes are not supported)."""
    value, length = _binary_request([("s", "BYTES", [1], b"\x01\x00\x00\x00a")])

    with pytest.raises(ValidationError, match="BYTES tensors must be sent as JSON"):
        decode_request(value, header_length=length)
