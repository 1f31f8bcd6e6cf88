"""Pure steps from a record to an outcome: decode, check, batch-score, encode. No broker here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from artifacts.runtime import LoadedModel
from artifacts.signature import check_request
from schemas import headers as h
from schemas.binary import NO_BINARY
from schemas.codec import InferenceRequest, Limits, ResponseEncoder, decode_request
from schemas.errors import (
    DecodeError,
    InferenceError,
    InferenceTimeout,
    RecordError,
    ResultRejectedError,
    ValidationError,
)
from schemas.records import Record, delivery_count_of
from schemas.tensors import Tensor, nonfinite_error
from worker.deferred import from_json, stack
from worker.outcomes import DeadLetter, Item, Outcome, Result

MAX_REMEMBERED_LAYOUTS = 1024


def fallback_id(record: Record) -> str:
    """The id of a record whose body has none: its key, else `<topic>-<partition>-<offset>`."""
    if record.key:
        return record.key.decode("utf-8", errors="replace")
    return f"{record.topic}-{record.partition}-{record.offset}"


def decode(record: Record, limits: Limits) -> InferenceRequest:
    """Decode the record value (JSON, or JSON plus binary tensors) into a V2 request.

    Small numeric JSON data stays a list until its batch is scored (`worker.deferred`).
    """
    try:
        header_length = h.header_length(record.headers)
    except ValueError as error:
        raise DecodeError(str(error)) from None
    try:
        return decode_request(
            record.value, limits=limits, header_length=header_length, check_finite=False, from_json=from_json
        )
    except RecordError:
        raise
    except Exception as error:  # a bug of ours must not turn one record into a crash loop
        raise DecodeError(f"the request could not be decoded: {error!r}") from error


def model_choice(record: Record) -> tuple[str | None, str | None]:
    """The model and version a record asks for in its headers (None: the default)."""
    return h.first(record.headers, h.MODEL_ALIASES), h.first(record.headers, h.MODEL_VERSION_ALIASES)


def make_item(record: Record, request: InferenceRequest, model: LoadedModel) -> Item:
    """An item for the batcher, once the request fits the model (else ValidationError).

    The item's batch key is its input layout: items with equal keys concatenate along the
    first axis. A layout the model accepted once is not checked again.
    """
    layout = (id(model), request.outputs, *((t.name, t.datatype, t.shape) for t in request.inputs))
    key = model.accepted.get(layout)
    if key is None:
        check_request(request, model)
        key = (id(model), *((t.name, t.datatype, t.shape[1:]) for t in request.inputs))
        if len(model.accepted) < MAX_REMEMBERED_LAYOUTS:
            model.accepted[layout] = key
    return Item(record, request, request.id or fallback_id(record), model, key, request.rows)


def dead_letter(record: Record, error: Exception, model: LoadedModel | None = None) -> DeadLetter:
    """A dead letter for `record`; its id is the best one known without decoding."""
    info = None if model is None else (model.name, model.version, model.sha256)
    return DeadLetter(record, error, fallback_id(record), info)


def score_batch(items: Sequence[Item], correlation: Sequence[str], *, check_finite: bool = True) -> list[Outcome]:
    """Score items that share a model; a failing batch is split until only bad records fail.

    `check_finite`: refuse NaN and Infinity, checked once over the batch (a batch that holds
    some is searched for the records that sent them). Deferred JSON data that does not convert
    is dead-lettered as decoding would have (stage validate). Never raises: an unexpected error
    (a MemoryError, a bug of ours) splits the batch too, and the records that cause it are
    dead-lettered (`failed`). Blocking (onnxruntime runs here): call it from a worker thread.
    """
    if not items:
        return []
    try:
        return _score_batch(items, correlation, check_finite)
    except Exception as error:  # nothing a record causes may stop the score loop
        if len(items) == 1:
            return [failed(items[0], error)]
        middle = len(items) // 2
        return score_batch(items[:middle], correlation, check_finite=check_finite) + score_batch(
            items[middle:], correlation, check_finite=check_finite
        )


def failed(item: Item, error: Exception) -> DeadLetter:
    """The dead letter of a record whose scoring raised `error`, which is not a RecordError.

    Stage validate when the record's own data does not convert (decoding's dead letter: its id,
    no model), else infer (its request id and model).
    """
    problem = _conversion_error(item, Exception)
    if problem is None:
        return unscored(item, error)
    letter = ValidationError(f"the request's data could not be converted: {problem!r}; send smaller requests")
    letter.__cause__ = problem
    return DeadLetter(item.record, letter, fallback_id(item.record), shadow=item.shadow)


def unscored(item: Item, error: Exception) -> DeadLetter:
    """The dead letter (stage infer, with its model) of a record whose batch failed with `error`."""
    scoring = InferenceError(f"scoring failed: {error!r}; the record was dead-lettered, the records beside it go on")
    scoring.__cause__ = error
    return DeadLetter(item.record, scoring, item.request_id, _info(item.model), shadow=item.shadow)


def _score_batch(items: Sequence[Item], correlation: Sequence[str], check_finite: bool) -> list[Outcome]:
    try:
        feeds = _concatenate(items)
    except ValidationError:
        return _without_unconvertible(items, correlation, check_finite)
    if check_finite and not all(np.isfinite(a).all() for a in feeds.values() if a.dtype.kind == "f"):
        return _without_nonfinite(items, correlation)
    return _score(items, feeds, correlation)


def _without_unconvertible(items: Sequence[Item], correlation: Sequence[str], check_finite: bool) -> list[Outcome]:
    # the dead letter decoding would have given (the record's id), naming the model it was meant for
    letters = {
        i: DeadLetter(item.record, error, fallback_id(item.record), _info(item.model), shadow=item.shadow)
        for i, item in enumerate(items)
        if (error := _conversion_error(item, ValidationError)) is not None
    }
    clean = [item for i, item in enumerate(items) if i not in letters]
    return _merge(letters, score_batch(clean, correlation, check_finite=check_finite), len(items))


def _conversion_error(item: Item, expected: type[Exception]) -> Exception | None:
    """The error of type `expected` converting the item's data raises, or None."""
    try:
        for tensor in item.request.inputs:
            tensor.data  # noqa: B018 (a deferred tensor converts on first read)
    except expected as error:
        return error
    return None


def _without_nonfinite(items: Sequence[Item], correlation: Sequence[str]) -> list[Outcome]:
    letters = {
        i: DeadLetter(item.record, nonfinite_error(name), item.request_id, _info(item.model), shadow=item.shadow)
        for i, item in enumerate(items)
        if (name := _nonfinite_input(item)) is not None
    }
    clean = [item for i, item in enumerate(items) if i not in letters]
    return _merge(letters, score_batch(clean, correlation, check_finite=False), len(items))


def _merge(letters: dict[int, DeadLetter], scored: list[Outcome], count: int) -> list[Outcome]:
    """The outcomes of a batch in order: `letters` at their positions, `scored` in the others."""
    rest = iter(scored)
    return [letters[i] if i in letters else next(rest) for i in range(count)]


def _nonfinite_input(item: Item) -> str | None:
    for tensor in item.request.inputs:
        if tensor.data.dtype.kind == "f" and not np.isfinite(tensor.data).all():
            return tensor.name
    return None


def _score(items: Sequence[Item], feeds: dict[str, np.ndarray[Any, Any]], correlation: Sequence[str]) -> list[Outcome]:
    """Run the model on a batch whose feeds converted (and are finite, when that is checked)."""
    model = items[0].model
    try:
        outputs = model.run(feeds)
    except InferenceTimeout as error:  # one record too slow: find it in one run each, not by halving
        if len(items) == 1:
            return [DeadLetter(items[0].record, error, items[0].request_id, _info(model), shadow=items[0].shadow)]
        return [outcome for item in items for outcome in score_batch([item], correlation, check_finite=False)]
    except InferenceError as error:
        if len(items) == 1:
            return [DeadLetter(items[0].record, error, items[0].request_id, _info(model), shadow=items[0].shadow)]
        middle = len(items) // 2
        return score_batch(items[:middle], correlation, check_finite=False) + score_batch(
            items[middle:], correlation, check_finite=False
        )
    total = sum(item.rows for item in items)
    if len(items) > 1 and any(_rows_of(t) != total for t in outputs.values()):
        # Outputs that do not follow the batch axis cannot be split by record: one at a time.
        return [outcome for item in items for outcome in score_batch([item], correlation, check_finite=False)]
    return _encode_results(items, outputs, correlation)


def _info(model: LoadedModel) -> tuple[str, str, str]:
    return (model.name, model.version, model.sha256)


def _rows_of(tensor: Tensor) -> int:
    return int(tensor.data.shape[0]) if tensor.data.ndim else -1


def _concatenate(items: Sequence[Item]) -> dict[str, np.ndarray[Any, Any]]:
    """The model feeds of a batch (items of one key: the same inputs in the same order).

    Raises ValidationError when some item's deferred data does not convert.
    """
    if len(items) == 1:
        return {t.name: t.data for t in items[0].request.inputs}
    feeds = {}
    for column in zip(*(item.request.inputs for item in items), strict=True):
        stacked = stack(column)
        feeds[column[0].name] = np.concatenate([t.data for t in column]) if stacked is None else stacked
    return feeds


def _encode_results(items: Sequence[Item], outputs: dict[str, Tensor], correlation: Sequence[str]) -> list[Outcome]:
    model = items[0].model
    encoder = ResponseEncoder(model.name, model.version, outputs, whole=len(items) == 1)
    model_headers = [(h.MODEL, model.name.encode()), (h.MODEL_VERSION, model.version.encode())]
    results: list[Outcome] = []
    start = 0
    for item in items:
        rows = item.rows
        try:
            value, header_length = _encode(encoder, item, start, model.output_names)
            result_key = item.request_id.encode()
        except Exception as error:  # an output we cannot write must not stop the worker
            rejected = ResultRejectedError(f"the result could not be encoded: {error!r}")
            rejected.__cause__ = error
            results.append(DeadLetter(item.record, rejected, item.request_id, _info(model), shadow=item.shadow))
            start += rows
            continue
        start += rows
        headers = model_headers
        if item.record.headers:
            headers = [(key, val) for key, val in item.record.headers if key in correlation] + model_headers
        if header_length is not None:  # some outputs are binary: the JSON header's length, as on requests
            headers = [*headers, (h.BINARY_HEADER_LENGTH, str(header_length).encode())]
        if (deliveries := delivery_count_of(item.record)) is not None:  # read through a share group
            headers = [*headers, (h.DELIVERY_COUNT, str(deliveries).encode())]
        results.append(Result(item.record, item.request_id, result_key, value, headers, item.shadow))
    return results


def _encode(encoder: ResponseEncoder, item: Item, start: int, all_outputs: Sequence[str]) -> tuple[bytes, int | None]:
    """The result value of an item's rows, and its JSON header's length when some outputs are binary."""
    names = item.request.outputs or all_outputs
    if item.request.binary is NO_BINARY:
        return encoder.encode(item.request_id, start, item.rows, names), None
    return encoder.encode_binary(item.request_id, start, item.rows, names, item.request.binary)
