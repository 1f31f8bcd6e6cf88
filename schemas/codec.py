"""The wire codec: Open Inference Protocol (KServe V2) requests and responses as Kafka values.

A request value is the V2 JSON object. With Triton's binary extension, an input whose
`parameters` has `binary_data_size: N` takes its data from N raw little-endian bytes that follow
the JSON header, inputs in order; the header's length travels in the record header
`inference-header-content-length` (the name Triton uses over HTTP).

Results use the same extension when the request asks for it (`binary_data_output`, or
`binary_data` on a requested output): see `schemas.binary`.

Decoding checks what the request says about itself (JSON, names, shapes, datatypes, limits);
checking it against a model's signature is `artifacts.signature`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import orjson

from schemas.binary import NO_BINARY, BinaryOutputs, binary_arrays, decode_binary_outputs, split_binary, without_size
from schemas.errors import DecodeError, ValidationError
from schemas.jsontext import load_json
from schemas.tensors import (
    DATATYPES,
    Tensor,
    array_from_binary,
    array_from_json,
    as_tensor,
    binary_of,
    nonfinite_error,
    tensor_from_json,
    tensor_json,
)

#: Builds the Tensor of an input sent as JSON data: (name, datatype, shape, data, parameters).
TensorFromJson = Callable[[str, str, list[int], Any, Mapping[str, Any] | None], Tensor]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one record may ask for."""

    max_record_bytes: int = 1_048_576
    max_request_rows: int = 4096
    allow_nonfinite: bool = False


@dataclass(slots=True)
class InferenceRequest:
    """A decoded V2 request. `outputs` lists the requested output names (empty: all)."""

    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    binary: BinaryOutputs = NO_BINARY

    @property
    def rows(self) -> int:
        """The batch size: the first dimension shared by the inputs (1 for scalars)."""
        shape = self.inputs[0].shape
        return int(shape[0]) if shape else 1


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """A decoded V2 response (what a consumer of the results topic reads)."""

    id: str
    model_name: str
    model_version: str | None
    outputs: tuple[Tensor, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> Tensor:
        """The output called `name`."""
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(f"response {self.id!r} has no output {name!r}")


# ---------------------------------------------------------------------------------------------
# Requests


def decode_request(
    value: bytes | None,
    *,
    limits: Limits = Limits(),
    header_length: int | None = None,
    check_finite: bool = True,
    from_json: TensorFromJson = tensor_from_json,
) -> InferenceRequest:
    """Decode a record value into a request, or raise DecodeError / ValidationError.

    `check_finite=False` leaves the NaN/Infinity check of the tensors to the caller (the
    worker checks a whole batch at once, see `worker.pipeline`); NaN literals in the JSON
    text are refused here either way unless `limits.allow_nonfinite`. `from_json` builds the
    tensors sent as JSON data (the worker's defers the numeric conversion, see `worker.deferred`).
    """
    if value is None or len(value) == 0:
        raise DecodeError("the record value is empty (null or zero bytes); send a V2 request")
    if len(value) > limits.max_record_bytes:
        raise DecodeError(
            f"the record value is {len(value)} bytes, over the limit of {limits.max_record_bytes}"
            " (setting STREAMSCORE_MAX_RECORD_BYTES)"
        )
    header, binary = (value, b"") if header_length is None else split_binary(value, header_length)
    body = load_json(header, allow_nonfinite=limits.allow_nonfinite, binary=header_length is not None)
    if not isinstance(body, dict):
        raise DecodeError(f"a V2 request is a JSON object, got a JSON {type(body).__name__}")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise DecodeError("a V2 request needs a non-empty 'inputs' list")
    inputs = _decode_inputs(raw_inputs, binary, limits, check_finite and not limits.allow_nonfinite, from_json)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise DecodeError(f"'id' must be a string, got {type(request_id).__name__}")
    raw_outputs = body.get("outputs")
    outputs = _decode_requested_outputs(raw_outputs)
    parameters = _decode_parameters(body.get("parameters"), "request")
    wanted = decode_binary_outputs(raw_outputs, parameters) if raw_outputs or parameters else NO_BINARY
    return InferenceRequest(request_id, inputs, outputs, parameters, wanted)  # positional: half the cost


def _decode_requested_outputs(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise DecodeError("'outputs' must be a list of objects with a 'name'")
    names = tuple(o["name"] for o in raw)
    twice = _first_repeated(names)  # an output listed n times would be written n times in the result
    if twice is not None:
        raise DecodeError(f"output {twice!r} requested twice; name each output once")
    return names


def _first_repeated(names: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _decode_parameters(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DecodeError(f"'parameters' of the {where} must be an object")
    return raw


def _decode_inputs(
    raw_inputs: list[Any], binary: bytes, limits: Limits, check_finite: bool, from_json: TensorFromJson
) -> tuple[Tensor, ...]:
    inputs: list[Tensor] = []
    names: set[str] = set()
    cursor = 0
    for position, raw in enumerate(raw_inputs):
        tensor, cursor = _decode_input(raw, position, binary, cursor, check_finite, from_json)
        if tensor.name in names:
            raise DecodeError(f"input {tensor.name!r} appears twice")
        names.add(tensor.name)
        inputs.append(tensor)
    if cursor != len(binary):
        raise DecodeError(f"{len(binary) - cursor} bytes of binary data follow the inputs unused")
    rows = {t.shape[0] if t.shape else 1 for t in inputs} if len(inputs) > 1 else None
    if rows is not None and len(rows) > 1:
        raise ValidationError(f"inputs disagree on the batch size (first dimension): {sorted(rows)}")
    first = inputs[0].shape
    count = first[0] if first else 1
    if count > limits.max_request_rows:
        raise ValidationError(
            f"the request has {count} rows, over the limit of {limits.max_request_rows}"
            " (setting STREAMSCORE_MAX_REQUEST_ROWS); split it into smaller requests"
        )
    return tuple(inputs)


def _decode_input(
    raw: Any, position: int, binary: bytes, cursor: int, check_finite: bool, from_json: TensorFromJson
) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise DecodeError(f"inputs[{position}] must be an object with name, shape, datatype, data")
    name, shape, datatype = raw.get("name"), raw.get("shape"), raw.get("datatype")
    if not isinstance(name, str) or not name:
        raise DecodeError(f"inputs[{position}] has no 'name'")
    if not _is_shape(shape):
        raise DecodeError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise DecodeError(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    parameters = raw.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise DecodeError(f"'parameters' of input {name!r} must be an object")
    size = parameters.get("binary_data_size") if parameters else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or cursor + size > len(binary):
            raise DecodeError(f"input {name!r}: binary_data_size={size!r} overruns the binary data")
        array = array_from_binary(name, binary[cursor : cursor + size], shape, datatype)
        tensor = Tensor(name, datatype, array, parameters)
        cursor += size
    else:
        if "data" not in raw:
            raise DecodeError(f"input {name!r} has no 'data'")
        tensor = from_json(name, datatype, shape, raw["data"], parameters or None)
    if check_finite and tensor.data.dtype.kind == "f" and not np.isfinite(tensor.data).all():
        raise nonfinite_error(name)
    return tensor, cursor


def _is_shape(shape: Any) -> TypeGuard[list[int]]:
    """True for a list of non-negative integers."""
    if not isinstance(shape, list):
        return False
    for dimension in shape:  # noqa: SIM110 (all() on a generator costs twice as much, per record)
        if type(dimension) is not int or dimension < 0:
            return False
    return True


def encode_request(
    inputs: Mapping[str, Any] | Sequence[Tensor],
    *,
    id: str | None = None,
    outputs: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """A V2 request as JSON bytes, from `{name: array-like}` or from Tensors."""
    tensors = (
        [as_tensor(name, value) for name, value in inputs.items()] if isinstance(inputs, Mapping) else list(inputs)
    )
    body: dict[str, Any] = {"inputs": [tensor_json(t) for t in tensors]}
    if id is not None:
        body["id"] = id
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    if parameters:
        body["parameters"] = dict(parameters)
    return _dumps(body)


# ---------------------------------------------------------------------------------------------
# Responses


def encode_response(
    *,
    id: str,
    model_name: str,
    model_version: str,
    outputs: Sequence[Tensor],
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """A V2 response as JSON bytes. Non-finite output values are written as null."""
    body: dict[str, Any] = {
        "id": id,
        "model_name": model_name,
        "model_version": model_version,
        "outputs": [tensor_json(t) for t in outputs],
    }
    if parameters:
        body["parameters"] = dict(parameters)
    return _dumps(body)


class ResponseEncoder:
    """Encodes the responses of one batch: each record gets its rows of every output.

    Faster than `encode_response` per record: outputs are cut into row views once, and each
    response is one `orjson.dumps` of numpy views; a binary output is the `tobytes()` of the
    record's slice of those views (the binary form: `schemas.binary`).
    """

    def __init__(self, model_name: str, model_version: str, outputs: Mapping[str, Tensor], *, whole: bool) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.whole = whole  # one record takes every row, whatever the output shapes
        self.outputs = outputs
        self.parts = {
            name: (t.datatype, t.data.reshape(t.data.shape[0], -1), list(t.data.shape[1:]), t.parameters)
            for name, t in outputs.items()
            if not whole
        }

    def encode(self, request_id: str, start: int, count: int, names: Sequence[str]) -> bytes:
        """The response of the record whose rows are `start` .. `start + count`."""
        if self.whole:
            outputs = [tensor_json(self.outputs[name]) for name in names]
        else:
            outputs = [self._output(name, start, count) for name in names]
        return _dumps(self._body(request_id, outputs))

    def encode_binary(
        self, request_id: str, start: int, count: int, names: Sequence[str], binary: BinaryOutputs
    ) -> tuple[bytes, int | None]:
        """As `encode`, with the outputs `binary` wants as binary data: (value, JSON header length).

        The length is None when no output is binary (the value is then what `encode` gives).
        """
        wanted = [binary.wants(name) for name in names]
        if not any(wanted):
            return self.encode(request_id, start, count, names), None
        outputs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, as_binary in zip(names, wanted, strict=True):
            if not as_binary:
                outputs.append(tensor_json(self.outputs[name]) if self.whole else self._output(name, start, count))
                continue
            output, blob = self._binary_output(name, start, count)
            outputs.append(output)
            blobs.append(blob)
        header = _dumps(self._body(request_id, outputs))
        return b"".join([header, *blobs]), len(header)

    def _body(self, request_id: str, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": request_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": outputs,
        }

    def _output(self, name: str, start: int, count: int) -> dict[str, Any]:
        datatype, rows, tail, parameters = self.parts[name]
        data: Any = rows[start] if count == 1 else rows[start : start + count].reshape(-1)
        if datatype == "BYTES":
            data = [v.decode() if isinstance(v, bytes) else v for v in data.tolist()]
        out = {"name": name, "shape": [count, *tail], "datatype": datatype, "data": data}
        if parameters:
            out["parameters"] = parameters
        return out

    def _binary_output(self, name: str, start: int, count: int) -> tuple[dict[str, Any], bytes]:
        """The JSON entry of a binary output (no `data`) and its bytes: the record's rows, straight from the batch."""
        if self.whole:
            tensor = self.outputs[name]
            datatype, block, shape, parameters = (
                tensor.datatype,
                tensor.data,
                list(tensor.data.shape),
                tensor.parameters,
            )
        else:
            datatype, rows, tail, parameters = self.parts[name]
            block, shape = rows[start : start + count], [count, *tail]
        blob = binary_of(block, datatype)
        entry = {"binary_data_size": len(blob)} if not parameters else {**parameters, "binary_data_size": len(blob)}
        return {"name": name, "shape": shape, "datatype": datatype, "parameters": entry}, blob


def decode_response(value: bytes, *, header_length: int | None = None) -> InferenceResponse:
    """Decode a V2 response (as a consumer of the results topic would).

    `header_length`: the record header `inference-header-content-length` of a result with binary
    outputs (`schemas.headers.header_length`). A binary output decodes to the array its JSON form
    would give (a BYTES element: `str` when UTF-8, else `bytes`), its parameters without
    `binary_data_size`.
    """
    header, binary = (value, b"") if header_length is None else split_binary(value, header_length)
    try:
        body = orjson.loads(header)
        arrays = binary_arrays(body["outputs"], binary)
        outputs = tuple(
            Tensor(o["name"], o["datatype"], arrays[i], without_size(o["parameters"]))
            if i in arrays
            else Tensor(o["name"], o["datatype"], _json_array(o), o.get("parameters"))
            for i, o in enumerate(body["outputs"])
        )
        return InferenceResponse(
            id=body["id"],
            model_name=body["model_name"],
            model_version=body.get("model_version"),
            outputs=outputs,
            parameters=body.get("parameters") or {},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise DecodeError(f"not a V2 response: {error!r}") from None


def _json_array(output: dict[str, Any]) -> np.ndarray[Any, Any]:
    if output["datatype"] == "BYTES":
        return np.array(output["data"], dtype=object).reshape(output["shape"])
    return array_from_json(output["name"], output["data"], output["shape"], output["datatype"])


def _dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
