"""No request body, however strange, makes the worker's decoder raise anything but a record error."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Limits, decode_request
from schemas.errors import RecordError
from tests.factories import make_record
from worker.pipeline import decode

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values | st.just("x"),
        "shape": json_values | st.lists(st.integers(-1, 4), max_size=3),
        "datatype": json_values | st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "UINT8", "FP16"]),
        "data": json_values,
        "parameters": json_values,
    },
)
bodies = st.fixed_dictionaries({}, optional={"id": json_values, "inputs": st.lists(fields, max_size=3) | json_values})


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_the_codec_raises_only_record_errors(body: dict[str, Any]) -> None:
    """The strict codec either decodes a body or raises DecodeError / ValidationError."""
    with contextlib.suppress(RecordError):
        decode_request(json.dumps(body).encode())


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_the_worker_decoder_raises_only_record_errors(body: dict[str, Any]) -> None:
    """The worker's decoding, and the conversion it defers, raise a RecordError or succeed."""
    record = make_record(json.dumps(body).encode())
    with contextlib.suppress(RecordError):
        request = decode(record, Limits())
        for tensor in request.inputs:
            _ = tensor.data  # deferred conversion happens here
