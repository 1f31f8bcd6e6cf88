"""Deferred JSON conversion: a batch converts at once, and gives what converting each record alone gives."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.runtime import LoadedModel
from demo import models as demo
from schemas.codec import Limits, decode_request
from schemas.errors import ValidationError
from schemas.records import InputRecord
from schemas.tensors import Tensor, array_from_json, nonfinite_error
from tests.factories import make_record, v2_input
from worker.deferred import MAX_DEFERRED_VALUES, DeferredTensor, from_json, stack
from worker.outcomes import DeadLetter, Item, Outcome, Result
from worker.pipeline import decode, fallback_id, make_item, score_batch
from worker.store import ModelStore

CORRELATION = ("traceparent",)

# JSON values a client may send where numbers belong, the awkward ones included
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(-1e300, 1e300),
    st.integers(-300, 300),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 1.5, -0.0]),
    st.booleans(),
    st.sampled_from(["1.5", "a", None, [1.0], {}]),
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A repository with the MLP (FP32 x [N, 8]) and the integer model (INT64 ids [N, 3])."""
    root: Path = tmp_path_factory.mktemp("models")
    demo.install_model(root, "mlp", "1", demo.make_mlp)
    demo.install_model(root, "ints", "1", demo.make_int_model)
    return ModelStore(root, default_name="mlp")


def _model(store: ModelStore, name: str) -> LoadedModel:
    return store.load(name, store.default_version(name))


def _value(name: str, datatype: str, shape: list[int], data: Any, rid: str) -> bytes:
    return json.dumps({"id": rid, "inputs": [v2_input(name, datatype, shape, data)]}).encode()  # ints past 64 bits


def _deferred(datatype: str, shape: list[int], data: list[Any]) -> Tensor | None:
    try:
        tensor = from_json("x", datatype, shape, data, None)
    except ValidationError:
        return None
    return tensor if isinstance(tensor, DeferredTensor) else None


def _strict(tensor: Tensor) -> np.ndarray[Any, Any] | ValidationError:
    try:
        return array_from_json(tensor.name, tensor.raw, list(tensor.shape), tensor.datatype)  # type: ignore[attr-defined]
    except ValidationError as error:
        return error


# ---------------------------------------------------------------------------------------------
# Decoding


def test_flat_numeric_data_is_deferred_and_checked_on_its_declared_shape() -> None:
    """The worker keeps a flat numeric list as sent; shape and rows are the declared ones."""
    value = _value("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6.5], "r")

    request = decode(make_record(value), Limits())

    (tensor,) = request.inputs
    assert isinstance(tensor, DeferredTensor)
    assert ((2, 3), 2, [1, 2, 3, 4, 5, 6.5]) == (tensor.shape, request.rows, tensor.raw)
    np.testing.assert_array_equal(np.array([[1, 2, 3], [4, 5, 6.5]], dtype=np.float32), tensor.data)
    assert np.float32 == tensor.data.dtype


@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        pytest.param("BYTES", [1, 2], ["a", "b"], id="bytes"),
        pytest.param("FP32", [1, 2], [[1.0, 2.0]], id="nested"),
        pytest.param("FP32", [], 1.0, id="scalar"),
        pytest.param("FP32", [0, 2], [], id="empty"),
    ],
)
def test_other_json_data_is_converted_at_once(datatype: str, shape: list[int], data: Any) -> None:
    """BYTES, nested lists, scalars and empty tensors keep the strict conversion at decode time."""
    tensor = from_json("x", datatype, shape, data, None)

    assert type(tensor) is Tensor
    assert tuple(shape) == tensor.shape


def test_the_codec_stays_strict() -> None:
    """decode_request (without the worker's from_json) still refuses bad data when decoding."""
    value = _value("x", "FP32", [1, 2], [1.0, "a"], "r")

    with pytest.raises(ValidationError, match="cannot hold the values sent"):
        decode_request(value)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        pytest.param("FP32", [1, 2], [1.0, "a"], r"datatype FP32 cannot hold the values sent \(strings\)", id="str"),
        pytest.param("FP32", [1, 2], [1.0, None], r"cannot hold the values sent \(nulls\)", id="null"),
        pytest.param("FP32", [1, 2], [1.0, {}], r"cannot hold the values sent \(objects\)", id="object"),
        pytest.param("INT64", [1, 2], [1, 2.5], r"cannot hold the values sent \(fractional numbers\)", id="float"),
        pytest.param("BOOL", [1, 2], [True, 1], r"cannot hold the values sent \(integers\)", id="int-as-bool"),
        pytest.param("FP32", [1, 3], [1.0, 2.0], r"shape \[1, 3\] holds 3 values, 'data' has 2", id="size"),
        pytest.param("FP32", [1, 10**12], [1.0, 2.0], r"shape \[1, 1000000000000\] holds", id="huge-shape"),
        pytest.param("FP32", [1, 2], [1.0, [2.0]], "ragged", id="ragged"),
    ],
)
def test_data_of_the_wrong_count_or_type_is_refused_at_decode(
    datatype: str, shape: list[int], data: Any, message: str
) -> None:
    """A flat list whose count or value types do not fit its input raises the strict ValidationError
    when decoded, not when its batch is scored."""
    with pytest.raises(ValidationError, match=message):
        from_json("x", datatype, shape, data, None)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        pytest.param("FP32", [1, 2], [True, False], r"cannot hold the values sent \(booleans\)", id="bools"),
        pytest.param("INT8", [1, 2], [1, 300], "values from 1 to 300 do not fit INT8", id="range"),
        pytest.param("INT64", [1, 2], [1, 2**70], r"cannot hold the values sent \(integers too large", id="big"),
    ],
)
def test_deferred_data_raises_the_strict_error_when_read(
    datatype: str, shape: list[int], data: Any, message: str
) -> None:
    """What only numpy tells (range, booleans alone) is deferred, and reading `data` raises the
    ValidationError decoding would have raised."""
    tensor = from_json("x", datatype, shape, data, None)

    assert isinstance(tensor, DeferredTensor)
    with pytest.raises(ValidationError, match=message):
        tensor.data  # noqa: B018


def test_large_numeric_data_is_converted_at_decode() -> None:
    """A list of more than MAX_DEFERRED_VALUES values is held as a compact array from decode on,
    a list of exactly that many stays deferred."""
    size = MAX_DEFERRED_VALUES
    small = from_json("x", "FP32", [1, size], [0.5] * size, None)
    large = from_json("x", "FP32", [1, size + 1], [0.5] * (size + 1), None)

    assert (DeferredTensor, Tensor) == (type(small), type(large))
    assert (np.dtype(np.float32), (1, size + 1)) == (large.data.dtype, large.data.shape)


# ---------------------------------------------------------------------------------------------
# Stacking one input of a batch


@settings(max_examples=300, deadline=None)
@given(
    datatype=st.sampled_from(["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL"]),
    records=st.lists(
        st.tuples(st.integers(1, 3), st.lists(VALUES, min_size=1, max_size=6), st.booleans()),
        min_size=1,
        max_size=5,
    ),
)
def test_stack_equals_each_record_converted_alone(datatype: str, records: list[tuple[int, list[Any], bool]]) -> None:
    """A stacked batch is the concatenation of every record's strict conversion, dtype included;
    when some record does not convert, stack declines (None)."""
    tensors = [
        _deferred(datatype, [rows, 2], data[:1] * (rows * 2) if uniform else data) for rows, data, uniform in records
    ]
    if not all(tensors):
        return  # a nested list first: converted (or refused) at decode time, never stacked

    with np.errstate(over="ignore"):  # FP16 overflows to inf (the batch's finiteness check refuses it)
        stacked = stack(tensors)
        alone = [_strict(t) for t in tensors]

    if stacked is not None:
        assert all(isinstance(a, np.ndarray) for a in alone)
        expected = np.concatenate(alone)  # type: ignore[arg-type]
        assert expected.dtype == stacked.dtype
        np.testing.assert_array_equal(expected, stacked)


def test_stack_takes_records_of_different_row_counts() -> None:
    """Records of one, two and three rows stack into one [6, 2] array in record order."""
    tensors = [
        from_json("x", "FP32", [n, 2], list(range(start, start + 2 * n)), None) for start, n in [(0, 1), (2, 2), (6, 3)]
    ]

    stacked = stack(tensors)

    assert stacked is not None
    np.testing.assert_array_equal(np.arange(12, dtype=np.float32).reshape(6, 2), stacked)


# ---------------------------------------------------------------------------------------------
# Scoring batches that hold bad records

MLP_DATA = st.one_of(
    st.lists(st.floats(-10, 10, width=32), min_size=8, max_size=8),
    st.lists(st.integers(-5, 5), min_size=8, max_size=8),
    st.lists(st.one_of(st.floats(-10, 10, width=32), st.integers(-5, 5)), min_size=8, max_size=8),
    st.lists(VALUES, min_size=1, max_size=9),
)
INT_DATA = st.one_of(
    st.lists(st.integers(-(2**40), 2**40), min_size=3, max_size=3),
    st.lists(VALUES, min_size=1, max_size=4),
)


def _expect_alone(value: bytes, item: Item, outcome: Outcome, model: LoadedModel) -> None:
    """The outcome of `item` in a batch is what strict decoding and scoring it alone give."""
    try:
        strict = decode_request(value, check_finite=False)
    except ValidationError as error:  # the dead letter decoding gives: the record's id, and the model it was for
        assert isinstance(outcome, DeadLetter)
        assert (type(error), str(error)) == (type(outcome.error), str(outcome.error))
        info = (model.name, model.version, model.sha256)
        assert (fallback_id(item.record), info, item.shadow) == (outcome.request_id, outcome.model, outcome.shadow)
        return
    (tensor,) = strict.inputs
    if not np.isfinite(tensor.data).all():  # out of FP32's range: refused by the batch's finiteness check
        assert isinstance(outcome, DeadLetter)
        assert (str(nonfinite_error(tensor.name)), item.request_id) == (str(outcome.error), outcome.request_id)
        return
    assert isinstance(outcome, Result)
    (name,) = model.output_names[:1]
    alone = model.run({t.name: t.data for t in strict.inputs})[name].data
    response = orjson.loads(outcome.value)["outputs"][0]
    np.testing.assert_allclose(alone.reshape(-1), np.array(response["data"]), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["mlp", "ints"]), shadow=st.booleans())
def test_batch_with_bad_records_gives_each_record_its_own_outcome(
    store: ModelStore, data: st.DataObject, name: str, shadow: bool
) -> None:
    """Random batches mixing valid and invalid data: each record ends as strict decoding alone says,
    a result with its own outputs or a validate dead letter with the strict message, in order."""
    model = _model(store, name)
    input_name, datatype, width, values = ("x", "FP32", 8, MLP_DATA) if name == "mlp" else ("ids", "INT64", 3, INT_DATA)
    bodies = data.draw(st.lists(values, min_size=1, max_size=8))
    records = [
        make_record(_value(input_name, datatype, [1, width], body, f"r{i}"), offset=i, key=f"k{i}".encode())
        for i, body in enumerate(bodies)
    ]
    items = [item for record in records if (item := _decoded(record, model, shadow)) is not None]

    with np.errstate(over="ignore"):  # numbers past FP32's range become inf (and are refused)
        outcomes = score_batch(items, CORRELATION)

        assert [item.record for item in items] == [outcome.record for outcome in outcomes]
        for item, outcome in zip(items, outcomes, strict=True):
            assert item.record.value is not None
            _expect_alone(item.record.value, item, outcome, model)


def _decoded(record: InputRecord, model: LoadedModel, shadow: bool) -> Item | None:
    """The record's item, or None when decoding refuses it at once (as strict decoding does)."""
    assert record.value is not None
    try:
        request = decode(record, Limits())
    except ValidationError as error:
        with pytest.raises(ValidationError, match=re.escape(str(error))), np.errstate(over="ignore"):
            decode_request(record.value)
        return None
    item = make_item(record, request, model)
    item.shadow = shadow
    return item


def test_one_bad_record_alone_is_dead_lettered(store: ModelStore) -> None:
    """A batch of one record whose deferred data does not convert gives one validate dead letter."""
    record = make_record(_value("x", "FP32", [1, 8], [True] * 8, "bools"), key=b"bools-key")
    item = make_item(record, decode(record, Limits()), _model(store, "mlp"))

    (outcome,) = score_batch([item], CORRELATION)

    assert isinstance(outcome, DeadLetter)
    assert ("validate", "bools-key") == (outcome.error.stage, outcome.request_id)  # type: ignore[attr-defined]
    assert "input 'x': datatype FP32 cannot hold the values sent (booleans)" == str(outcome.error)
