"""Triton's binary tensor data extension on results: which outputs a request wants as binary, and reading them.

Followed as Triton documents it (triton-inference-server/server, docs/protocol/extension_binary_data.md):

- request `parameters.binary_data_output: true` asks for every output as binary data;
  `parameters.binary_data` (true or false) on an entry of the request's `outputs` decides for
  that output and overrides `binary_data_output`;
- a binary output is listed in the response's JSON with `parameters: {binary_data_size: N}`
  and no `data`; its N bytes follow the JSON, outputs in the order the JSON lists them;
- the bytes are row-major and little-endian, without stride or padding; BOOL is one byte (1 or
  0); a BYTES element is its length as a 4-byte little-endian unsigned integer, then its bytes;
- when any binary data is present the JSON's length travels beside the body: over HTTP the
  `Inference-Header-Content-Length` header, here the record header `inference-header-content-length`
  (`schemas.headers.BINARY_HEADER_LENGTH`), as for requests. A result with no binary output is
  plain JSON without that header.

Requests decode in `schemas.codec`, results are written by its `ResponseEncoder`; this module
holds what both directions share (splitting a value at its header length) and the readers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from schemas.errors import DecodeError, ValidationError
from schemas.headers import BINARY_HEADER_LENGTH
from schemas.tensors import DATATYPES, array_from_binary, strings_from_binary

BINARY_DATA_SIZE = "binary_data_size"


@dataclass(frozen=True, slots=True)
class BinaryOutputs:
    """Which outputs a request wants as binary data: `default` for all, `chosen` per output name.

    `chosen` holds the outputs whose `binary_data` the request set (true or false); it overrides
    `default` (the request's `binary_data_output`), as in Triton.
    """

    default: bool = False
    chosen: Mapping[str, bool] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        """Whether output `name` goes out as binary data."""
        return self.chosen.get(name, self.default)


#: A request that asks for no binary output (the usual case: nothing to look up per output).
NO_BINARY = BinaryOutputs()


def decode_binary_outputs(raw_outputs: list[dict[str, Any]] | None, parameters: Mapping[str, Any]) -> BinaryOutputs:
    """What a request's `binary_data_output` and its outputs' `binary_data` ask for, or DecodeError.

    `raw_outputs` is the request's `outputs` list, already checked to hold objects with a `name`.
    """
    default = _flag(parameters.get("binary_data_output", False), "request parameter 'binary_data_output'")
    chosen: dict[str, bool] = {}
    for raw in raw_outputs or ():
        own = raw.get("parameters")
        if own is None:
            continue
        if not isinstance(own, dict):
            raise DecodeError(f"'parameters' of requested output {raw['name']!r} must be an object")
        if "binary_data" in own:
            chosen[raw["name"]] = _flag(own["binary_data"], f"'binary_data' of requested output {raw['name']!r}")
    return BinaryOutputs(default, chosen) if default or any(chosen.values()) else NO_BINARY


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"{what} must be true or false, got {value!r}")
    return value


def split_binary(value: bytes, header_length: int) -> tuple[bytes, bytes]:
    """(JSON header, binary data) of a value whose header is `header_length` bytes, or DecodeError."""
    if not 0 < header_length <= len(value):
        raise DecodeError(f"header {BINARY_HEADER_LENGTH}={header_length} does not fit a value of {len(value)} bytes")
    return value[:header_length], value[header_length:]


def binary_arrays(outputs: list[dict[str, Any]], binary: bytes) -> dict[int, np.ndarray[Any, Any]]:
    """The arrays of a response's binary outputs, by position in `outputs`, or DecodeError.

    The bytes are taken in the order the outputs are listed; every byte must be taken. A BYTES
    element is a `str` when it is UTF-8 (as the JSON form gives it), else `bytes`.
    """
    arrays: dict[int, np.ndarray[Any, Any]] = {}
    cursor = 0
    for i, output in enumerate(outputs):
        size = (output.get("parameters") or {}).get(BINARY_DATA_SIZE)
        if size is None:
            continue
        name, shape, datatype = output["name"], output["shape"], output["datatype"]
        if type(size) is not int or size < 0 or cursor + size > len(binary):
            raise DecodeError(f"output {name!r}: binary_data_size={size!r} overruns the binary data")
        arrays[i] = _array(name, binary[cursor : cursor + size], shape, datatype)
        cursor += size
    if cursor != len(binary):
        raise DecodeError(f"{len(binary) - cursor} bytes of binary data follow the outputs unused")
    return arrays


def _array(name: str, blob: bytes, shape: list[int], datatype: str) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        try:
            return strings_from_binary(name, blob, shape)
        except ValidationError as error:
            raise DecodeError(str(error)) from None
    expected = math.prod(shape) * DATATYPES[datatype].itemsize
    if len(blob) != expected:
        raise DecodeError(f"output {name!r}: shape {shape} of {datatype} needs {expected} bytes, got {len(blob)}")
    return array_from_binary(name, blob, shape, datatype)


def without_size(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """An output's parameters without `binary_data_size` (None when nothing else is left)."""
    rest = {key: value for key, value in parameters.items() if key != BINARY_DATA_SIZE}
    return rest or None


def load_response_body(value: bytes, *, header_length: int | None = None) -> Any:
    """The JSON body of a V2 response, its binary outputs given the `data` their JSON form holds.

    For readers of the JSON form (`streamscore collect`): a binary FP32 value reads as the same
    number its JSON form gives, a non-finite one as null; BYTES elements must be UTF-8 text.
    DecodeError (orjson.JSONDecodeError without `header_length`) for what is not a response.
    """
    if header_length is None:
        return orjson.loads(value)
    header, binary = split_binary(value, header_length)
    try:
        body = orjson.loads(header)
        for i, array in binary_arrays(body["outputs"], binary).items():
            output = body["outputs"][i]
            flat = array.reshape(-1)
            output["data"] = [_text(output["name"], v) for v in flat.tolist()] if flat.dtype.kind == "O" else flat
            rest = without_size(output.pop("parameters"))
            if rest:
                output["parameters"] = rest
        return orjson.loads(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise DecodeError(f"not a V2 response: {error!r}") from None


def _text(name: str, value: str | bytes) -> str:
    if isinstance(value, bytes):
        raise DecodeError(f"output {name!r}: a BYTES element is not UTF-8 text")
    return value
