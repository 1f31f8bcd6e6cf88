"""From record to outcome with real tiny ONNX models: signature checks, batch scoring, model store."""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.runtime import InputSpec, LoadedModel, OutputSpec, load_model
from artifacts.signature import check_request
from demo import models as demo
from schemas import headers as h
from schemas.codec import InferenceRequest, Limits, decode_request, decode_response, encode_request
from schemas.errors import InferenceError, InferenceTimeout, ModelNotFoundError, ValidationError
from tests.factories import make_record, v2_input
from worker import pipeline
from worker.deferred import DeferredTensor
from worker.outcomes import DeadLetter, Item, Result
from worker.pipeline import decode, make_item, model_choice, score_batch
from worker.store import ModelStore

FEATURES = 8  # demo.make_mlp's default
CORRELATION = ("traceparent",)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding every demo model (built once for this module)."""
    root = tmp_path_factory.mktemp("models")
    demo.install_model(root, "mlp", "1", demo.make_mlp)
    demo.install_model(root, "mlp", "9", demo.make_mlp, scale=2.0)
    demo.install_model(root, "mlp", "10", demo.make_mlp, scale=3.0)
    demo.install_model(root, "sklearn", "1", demo.make_sklearn_classifier)
    demo.install_model(root, "failing", "1", demo.make_failing_model)
    demo.install_model(root, "fixed", "1", demo.make_fixed_batch_model)
    demo.install_model(root, "ints", "1", demo.make_int_model)
    return root


@pytest.fixture(scope="module")
def store(root: Path) -> ModelStore:
    """A store over the demo repository; the MLP is the default model."""
    return ModelStore(root, default_name="mlp")


def resolve(store: ModelStore, name: str | None, version: str | None) -> tuple[str, str]:
    """The version a request for `name` (pinning `version`) gets when no desired state is set."""
    name = name or store.default_name
    return name, store.check_exists(name, version) if version else store.default_version(name)


def _load(store: ModelStore, name: str, version: str | None = None) -> LoadedModel:
    return store.load(*resolve(store, name, version))


def _item(
    model: LoadedModel,
    inputs: Mapping[str, Any],
    *,
    offset: int = 0,
    outputs: Sequence[str] = (),
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    **record: Any,
) -> Item:
    value = encode_request(inputs, id=request_id, outputs=outputs, parameters=parameters)
    return make_item(make_record(value, offset=offset, **record), decode_request(value), model)


def _rows(count: int, seed: int, features: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, features)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Signature checks


class NoSession:
    """A session that is never run (signature checks only)."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]:
        raise AssertionError("not expected to run")


def _f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


TWO_INPUTS = LoadedModel(
    "two",
    "1",
    "0" * 64,
    NoSession(),
    (InputSpec("a", "FP32", (None, 2)), InputSpec("b", "INT64", (None,))),
    (OutputSpec("y", "tensor", "FP32"),),
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"a": _f32([[1, 2]]), "c": [1]}, "unknown input 'c' for model two", id="unknown-input"),
        pytest.param({"a": _f32([[1, 2]])}, "missing input 'b' for model two", id="missing-input"),
        pytest.param({"a": [[1, 2]], "b": [1]}, "input 'a' is INT64; model two version 1 takes FP32", id="dtype"),
        pytest.param({"a": _f32([[1, 2, 3]]), "b": [1]}, r"shape \[1, 3\]; .* takes \[-1, 2\]", id="shape"),
        pytest.param({"a": _f32([1, 2]), "b": [1, 2]}, r"shape \[2\]; .* takes \[-1, 2\]", id="rank"),
    ],
)
def test_check_request_rejects_what_the_signature_does_not_take(body: dict[str, Any], message: str) -> None:
    """Unknown or missing inputs, wrong datatypes and wrong shapes raise ValidationError."""
    request = decode_request(encode_request(body))

    with pytest.raises(ValidationError, match=message):
        check_request(request, TWO_INPUTS)


def test_check_request_rejects_unknown_requested_outputs() -> None:
    """Asking for an output the model does not give raises ValidationError naming the outputs."""
    request = decode_request(encode_request({"a": _f32([[1, 2]]), "b": [1]}, outputs=["z"]))

    with pytest.raises(ValidationError, match="unknown output 'z'; model two gives 'y'"):
        check_request(request, TWO_INPUTS)


def test_fixed_batch_model_rejects_two_rows(store: ModelStore) -> None:
    """A model whose batch dimension is 1 refuses a request of two rows."""
    request = decode_request(encode_request({"x": np.ones((2, 4), dtype=np.float32)}))

    with pytest.raises(ValidationError, match=r"shape \[2, 4\]; model fixed version 1 takes \[1, 4\]"):
        check_request(request, _load(store, "fixed"))


def test_make_item_checks_the_request(store: ModelStore) -> None:
    """make_item raises ValidationError for a request the model cannot take (INT64 for FP32)."""
    value = encode_request({"x": np.ones((1, FEATURES), dtype=np.int64)})

    with pytest.raises(ValidationError, match="input 'x' is INT64"):
        make_item(make_record(value), decode_request(value), _load(store, "mlp"))


# ---------------------------------------------------------------------------------------------
# Batch scoring


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row_counts=st.lists(st.integers(1, 5), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_batch_scores_like_each_record_alone(store: ModelStore, row_counts: list[int], seed: int) -> None:
    """One Result per item, in order, with the item's id, the model, and its own rows' outputs."""
    model = _load(store, "mlp")
    items = [_item(model, {"x": _rows(n, seed + i)}, offset=i, request_id=f"req-{i}") for i, n in enumerate(row_counts)]

    outcomes = score_batch(items, CORRELATION)

    assert [f"req-{i}" for i in range(len(items))] == [o.request_id for o in outcomes]
    for item, outcome in zip(items, outcomes, strict=True):
        assert isinstance(outcome, Result)
        assert item.record is outcome.record
        assert item.request_id.encode() == outcome.key
        response = decode_response(outcome.value)
        assert (item.request_id, "mlp", "10") == (response.id, response.model_name, response.model_version)
        alone = model.run({"x": item.request.inputs[0].data})["probabilities"].data
        np.testing.assert_allclose(alone, response.output("probabilities").data, rtol=1e-5, atol=1e-7)


def test_request_without_id_uses_the_key_then_the_record_position(store: ModelStore) -> None:
    """An id-less request is answered under its record key, else `<topic>-<partition>-<offset>`."""
    model = _load(store, "mlp")
    keyed = _item(model, {"x": _rows(1, 0)}, key=b"order-17")
    unkeyed = _item(model, {"x": _rows(1, 1)}, topic="in", partition=2, offset=41)

    outcomes = score_batch([keyed, unkeyed], CORRELATION)

    assert ["order-17", "in-2-41"] == [decode_response(o.value).id for o in outcomes]  # type: ignore[union-attr]


def test_one_failing_record_dead_letters_alone(store: ModelStore) -> None:
    """A record that makes the model raise becomes a DeadLetter (stage infer); the others score."""
    model = _load(store, "failing")
    firsts = [1.0, 2.0, 100.0, 3.0, 9.0]  # the failing model raises when a first feature is >= 10
    items = [
        _item(model, {"x": np.array([[f, 0, 0, 0]], dtype=np.float32)}, offset=i, request_id=f"r{i}")
        for i, f in enumerate(firsts)
    ]

    outcomes = score_batch(items, CORRELATION)

    assert [Result, Result, DeadLetter, Result, Result] == [type(o) for o in outcomes]
    bad = outcomes[2]
    assert isinstance(bad, DeadLetter)
    assert isinstance(bad.error, InferenceError)
    assert "infer" == bad.error.stage
    assert ("r2", items[2].record) == (bad.request_id, bad.record)
    assert ("failing", "1", model.sha256) == bad.model
    good = [decode_response(o.value) for o in outcomes if isinstance(o, Result)]
    assert [[[1.0]], [[2.0]], [[3.0]], [[9.0]]] == [r.output("y").data.tolist() for r in good]


def test_a_record_slower_than_the_inference_timeout_is_dead_lettered_alone(tmp_path: Path) -> None:
    """In a batch of five, one record makes the model run for seconds: the run is stopped at the timeout,
    the records are scored one at a time, the slow one is dead-lettered (InferenceTimeout, stage infer)
    and the other four are scored; the whole takes about two timeouts, not one per halving."""
    model = load_model(demo.make_slow_model(tmp_path / "slow.onnx"), "slow", "1")
    model.timeout_s = 0.3
    values = [1.0, 2.0, 1_000_000.0, 3.0, 4.0]
    items = [_item(model, {"x": np.array([[v]], dtype=np.float32)}, offset=i) for i, v in enumerate(values)]

    started = time.monotonic()
    outcomes = score_batch(items, CORRELATION)

    assert [Result, Result, DeadLetter, Result, Result] == [type(o) for o in outcomes]
    assert isinstance(outcomes[2], DeadLetter) and isinstance(outcomes[2].error, InferenceTimeout)
    assert "infer" == outcomes[2].error.stage
    assert time.monotonic() - started < 3 * model.timeout_s + 0.5


def test_fixed_batch_model_scores_a_batch_one_record_at_a_time(store: ModelStore) -> None:
    """A batch the fixed-batch model refuses as a whole is split until every record scores alone."""
    model = _load(store, "fixed")
    items = [_item(model, {"x": np.full((1, 4), i, dtype=np.float32)}, offset=i) for i in range(3)]

    outcomes = score_batch(items, CORRELATION)

    assert all(isinstance(o, Result) for o in outcomes)
    totals = [decode_response(o.value).output("y").data.tolist() for o in outcomes]  # type: ignore[union-attr]
    assert [[[0.0]], [[4.0]], [[8.0]]] == totals


def test_int_model_batch(store: ModelStore) -> None:
    """INT64 inputs of several records are batched and each gets its own row sums."""
    model = _load(store, "ints")
    items = [
        _item(model, {"ids": np.array([[1, 2, 3], [4, 5, 6]])}, offset=0),
        _item(model, {"ids": np.array([[2**40, 1, 1]])}, offset=1),
    ]

    outcomes = score_batch(items, CORRELATION)

    totals = [decode_response(o.value).output("total") for o in outcomes]  # type: ignore[union-attr]
    assert [[[6], [15]], [[2**40 + 2]]] == [t.data.tolist() for t in totals]
    assert ["INT64", "INT64"] == [t.datatype for t in totals]


def test_sklearn_zipmap_becomes_a_labelled_probability_tensor(store: ModelStore) -> None:
    """The ZipMap output is FP32 [rows, 3] with parameters.labels, equal to sklearn's predict_proba."""
    model = _load(store, "sklearn")
    rows = demo.sklearn_sample_rows(7)
    items = [_item(model, {"x": rows[:3]}, offset=0), _item(model, {"x": rows[3:]}, offset=1)]

    outcomes = score_batch(items, CORRELATION)

    responses = [decode_response(o.value) for o in outcomes]  # type: ignore[union-attr]
    probabilities = [r.output("output_probability") for r in responses]
    assert [("FP32", (3, 3)), ("FP32", (4, 3))] == [(p.datatype, p.shape) for p in probabilities]
    assert all({"labels": [0, 1, 2]} == p.parameters for p in probabilities)
    labels, expected = demo.sklearn_reference(rows)
    actual = np.concatenate([p.data for p in probabilities])
    np.testing.assert_allclose(expected, actual, atol=1e-5)
    assert labels.tolist() == np.concatenate([r.output("output_label").data for r in responses]).tolist()


def test_requested_outputs_filter_the_response(store: ModelStore) -> None:
    """An item asking for one output gets only that one; its neighbour asking nothing gets all."""
    model = _load(store, "sklearn")
    rows = demo.sklearn_sample_rows(2)
    only_label = _item(model, {"x": rows[:1]}, outputs=["output_label"], offset=0)
    everything = _item(model, {"x": rows[1:]}, offset=1)

    outcomes = score_batch([only_label, everything], CORRELATION)

    names = [[t.name for t in decode_response(o.value).outputs] for o in outcomes]  # type: ignore[union-attr]
    assert [["output_label"], ["output_label", "output_probability"]] == names


def test_correlation_headers_are_copied_and_others_are_not(store: ModelStore) -> None:
    """A result carries the request's correlation headers and the model headers, nothing else."""
    model = _load(store, "mlp", "9")
    headers = [("traceparent", b"00-abc-def-01"), ("authorization", b"secret"), (h.MODEL_VERSION, b"9")]
    item = _item(model, {"x": _rows(1, 0)}, headers=headers)

    (result,) = score_batch([item], CORRELATION)

    assert isinstance(result, Result)
    assert [("traceparent", b"00-abc-def-01"), (h.MODEL, b"mlp"), (h.MODEL_VERSION, b"9")] == result.headers


@pytest.mark.parametrize("length_header", [h.BINARY_HEADER_LENGTH, "Inference-Header-Content-Length"])
def test_binary_request_scores_like_json(store: ModelStore, length_header: str) -> None:
    """A request sent with binary tensor data (header length in a record header, its name in any
    case, as over HTTP) scores as JSON would."""
    model = _load(store, "mlp")
    rows = _rows(2, 5)
    header = (
        b'{"id": "bin", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8],'
        b' "parameters": {"binary_data_size": 64}}]}'
    )
    record = make_record(
        header + struct.pack("<16f", *rows.reshape(-1)),
        headers=[(length_header, str(len(header)).encode())],
    )
    binary = make_item(record, decode(record, Limits()), model)
    as_json = _item(model, {"x": rows})

    outcomes = score_batch([binary], CORRELATION) + score_batch([as_json], CORRELATION)

    first, second = (decode_response(o.value).output("probabilities").data for o in outcomes)  # type: ignore[union-attr]
    np.testing.assert_array_equal(second, first)


def _body_item(model: LoadedModel, body: dict[str, Any], offset: int = 0, **record: Any) -> Item:
    value = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return make_item(make_record(value, offset=offset, **record), decode_request(value), model)


def test_binary_outputs_carry_the_header_length_after_the_other_headers(store: ModelStore) -> None:
    """A result with binary outputs: correlation headers, model headers, then the JSON header's
    length; the bytes after the header are the scored rows, and they read back as JSON's do."""
    model = _load(store, "mlp", "9")
    rows = _rows(2, 3)
    binary = _item(model, {"x": rows}, parameters={"binary_data_output": True}, headers=[("traceparent", b"00-a-b-01")])
    as_json = _item(model, {"x": rows})

    (result,) = score_batch([binary], CORRELATION)
    (expected,) = score_batch([as_json], CORRELATION)

    assert isinstance(result, Result) and isinstance(expected, Result)
    length = h.header_length(result.headers)
    assert length is not None
    assert [
        ("traceparent", b"00-a-b-01"),
        (h.MODEL, b"mlp"),
        (h.MODEL_VERSION, b"9"),
        (h.BINARY_HEADER_LENGTH, str(length).encode()),
    ] == result.headers
    scored = model.run({"x": rows})["probabilities"].data
    assert scored.astype("<f4").tobytes() == result.value[length:]
    from_binary = decode_response(result.value, header_length=length).output("probabilities").data
    np.testing.assert_array_equal(decode_response(expected.value).output("probabilities").data, from_binary)


def test_a_batch_mixing_binary_and_json_requests_writes_each_as_asked(store: ModelStore) -> None:
    """One batch of three records: all outputs binary, none, and only the label binary. Each gets
    its own rows; the record asking for nothing gets the JSON it gets alone, and no length header."""
    model = _load(store, "sklearn")
    rows = demo.sklearn_sample_rows(5)
    label_only = [{"name": "output_label", "parameters": {"binary_data": True}}, {"name": "output_probability"}]
    items = [
        _item(model, {"x": rows[:2]}, offset=0, parameters={"binary_data_output": True}),
        _item(model, {"x": rows[2:3]}, offset=1),
        _body_item(model, {"inputs": [v2_input("x", "FP32", [2, 4], rows[3:])], "outputs": label_only}, offset=2),
    ]

    outcomes = score_batch(items, CORRELATION)
    (alone,) = score_batch([items[1]], CORRELATION)

    assert all(isinstance(o, Result) for o in [*outcomes, alone])
    values = [o.value for o in outcomes]  # type: ignore[union-attr]
    lengths = [h.header_length(o.headers) for o in outcomes]  # type: ignore[union-attr]
    assert (None, alone.value) == (lengths[1], values[1])  # type: ignore[union-attr]
    labels, _ = demo.sklearn_reference(rows)
    read = [decode_response(values[i], header_length=lengths[i]).output("output_label").data for i in (0, 2)]
    assert [labels[:2].tolist(), labels[3:].tolist()] == [r.tolist() for r in read]
    assert [False, True] == ["data" in o for o in orjson.loads(values[2][: lengths[2]])["outputs"]]


class Unholdable(DeferredTensor):
    """Deferred data whose conversion raises MemoryError, as numpy does when an array cannot be allocated."""

    def __getattr__(self, attribute: str) -> Any:
        raise MemoryError("Unable to allocate 466. GiB for an array with shape (250001,) and data type <U500000")


def _unholdable_item(model: LoadedModel, offset: int) -> Item:
    request = InferenceRequest("huge", (Unholdable("x", "FP32", [1, FEATURES], [0.5] * FEATURES, None),))
    return make_item(make_record(b"{}", offset=offset, key=b"huge-key"), request, model)


def test_a_record_whose_data_cannot_be_held_is_dead_lettered_alone(store: ModelStore) -> None:
    """Scenario: a batch of five, the third record's data raises MemoryError when converted.
    The batch is split: that record is dead-lettered at validate (its key as id, no model), the
    four others are scored, in order."""
    model = _load(store, "mlp")
    items = [_item(model, {"x": _rows(1, i)}, offset=i, request_id=f"r{i}") for i in range(5)]
    items[2] = _unholdable_item(model, 2)

    outcomes = score_batch(items, CORRELATION)

    assert [Result, Result, DeadLetter, Result, Result] == [type(o) for o in outcomes]
    letter = outcomes[2]
    assert isinstance(letter, DeadLetter)
    assert ("validate", "huge-key", None) == (letter.error.stage, letter.request_id, letter.model)  # type: ignore[attr-defined]
    assert str(letter.error).startswith("the request's data could not be converted: MemoryError(")
    assert isinstance(letter.error.__cause__, MemoryError)


def test_an_unexpected_error_encoding_a_batch_splits_it(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: encoding the results of a batch of several records raises MemoryError (encoding one
    record alone does not). Every record is scored alone, and score_batch does not raise."""
    real = pipeline.ResponseEncoder

    def encoder(*args: Any, whole: bool) -> Any:
        if not whole:
            raise MemoryError("the batch's outputs")
        return real(*args, whole=whole)

    monkeypatch.setattr(pipeline, "ResponseEncoder", encoder)
    model = _load(store, "mlp")
    items = [_item(model, {"x": _rows(1, i)}, offset=i, request_id=f"r{i}") for i in range(3)]

    outcomes = score_batch(items, CORRELATION)

    assert ["r0", "r1", "r2"] == [decode_response(o.value).id for o in outcomes]  # type: ignore[union-attr]


def test_a_batch_that_always_raises_dead_letters_each_record_at_infer(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: building the model feeds raises RuntimeError for every batch, a bug of ours.
    score_batch does not raise: each record gets an infer dead letter naming the error and its model."""

    def broken(items: Sequence[Item]) -> dict[str, np.ndarray]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "_concatenate", broken)
    model = _load(store, "mlp")
    items = [_item(model, {"x": _rows(1, i)}, offset=i, request_id=f"r{i}") for i in range(3)]

    outcomes = score_batch(items, CORRELATION)

    assert all(isinstance(o, DeadLetter) for o in outcomes)
    stages = [(o.error.stage, o.request_id, o.model and o.model[0]) for o in outcomes]  # type: ignore[attr-defined]
    assert [("infer", f"r{i}", "mlp") for i in range(3)] == stages
    assert str(outcomes[0].error).startswith("scoring failed: RuntimeError('a bug')")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([("Streamscore-Model", b"mlp"), ("STREAMSCORE-MODEL-VERSION", b"9")], ("mlp", "9"), id="ours"),
        pytest.param([("MLServer-Model", b"sklearn"), ("MLServer-Version", b"1")], ("sklearn", "1"), id="mlserver"),
        pytest.param([("traceparent", b"00-abc"), ("x-streamscore-model", b"no")], (None, None), id="others"),
    ],
)
def test_model_headers_are_read_in_any_case(headers: list[tuple[str, bytes]], expected: tuple[str, str]) -> None:
    """The model and version headers are found whatever the case of their names; other names are not."""
    assert expected == model_choice(make_record(headers=headers))


def test_empty_batch_gives_no_outcomes() -> None:
    """Scoring no items returns no outcomes."""
    assert [] == score_batch([], CORRELATION)


# ---------------------------------------------------------------------------------------------
# Model store


def test_highest_version_is_chosen_by_number(store: ModelStore) -> None:
    """Without a pin, the highest version wins in numeric order ("10" over "9")."""
    assert ["1", "9", "10"] == store.versions("mlp")
    assert ("mlp", "10") == resolve(store, None, None)
    assert ("mlp", "10") == resolve(store, "mlp", None)


def test_a_request_may_pin_a_version(store: ModelStore) -> None:
    """A version asked for is the version served."""
    assert ("mlp", "9") == resolve(store, "mlp", "9")
    assert "9" == _load(store, "mlp", "9").version


def test_pinned_default_version(root: Path) -> None:
    """A store pinned to a version serves it to requests that name no version."""
    pinned = ModelStore(root, default_name="mlp", pinned_version="9")

    assert ("mlp", "9") == resolve(pinned, None, None)
    assert ("mlp", "10") == resolve(pinned, None, "10")


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        pytest.param("nope", None, "unknown model 'nope'", id="unknown-model"),
        pytest.param(
            "mlp", "11", "model 'mlp' has no version '11' on this worker; available: 1, 9, 10", id="unknown-version"
        ),
        pytest.param("../outside", None, "unknown model '../outside'", id="name-traversal"),
        pytest.param("mlp/../sklearn", None, "unknown model", id="name-inner-traversal"),
        pytest.param("mlp", "../9", "not a valid version name", id="version-traversal"),
        pytest.param("mlp", "1/../10", "not a valid version name", id="version-inner-traversal"),
    ],
)
def test_unknown_or_unsafe_models_are_not_found(root: Path, name: str, version: str | None, message: str) -> None:
    """Unknown models and versions, and names that climb out of the root, raise ModelNotFoundError."""
    (root.parent / "outside" / "1").mkdir(parents=True, exist_ok=True)
    (root.parent / "outside" / "1" / "model.onnx").write_bytes((root / "mlp" / "1" / "model.onnx").read_bytes())
    store = ModelStore(root, default_name="mlp")

    with pytest.raises(ModelNotFoundError, match=message):
        resolve(store, name, version)


def test_loading_keeps_one_instance_per_version(store: ModelStore) -> None:
    """Loading the same version twice gives the same model; sha256 is the file's."""
    first = _load(store, "mlp", "1")

    assert first is _load(store, "mlp", "1")
    assert first is store.loaded[("mlp", "1")]
    assert 64 == len(first.sha256)


def test_fixed_batch_is_the_models_own_batch_size(store: ModelStore) -> None:
    """fixed_batch is 1 for the batch-of-one model and None for models with a free batch axis."""
    assert 1 == _load(store, "fixed").fixed_batch
    assert _load(store, "mlp").fixed_batch is None
    assert _load(store, "sklearn").fixed_batch is None
