"""Pure steps from a record to an outcome: decode, check, batch-score, encode. No broker here."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from schemas import headers as h
from schemas.codec import InferenceRequest, Limits, Tensor, decode_request, encode_response
from schemas.errors import DecodeError, InferenceError, RecordError
from worker.model import LoadedModel
from worker.records import DeadLetter, Item, Outcome, Record, Result
from worker.signature import check_request


def fallback_id(record: Record) -> str:
    """The id of a record whose body has none: its key, else `<topic>-<partition>-<offset>`."""
    if record.key:
        return record.key.decode("utf-8", errors="replace")
    return f"{record.topic}-{record.partition}-{record.offset}"


def decode(record: Record, limits: Limits) -> InferenceRequest:
    """Decode the record value (JSON, or JSON plus binary tensors) into a V2 request."""
    raw_length = h.first(record.headers, (h.BINARY_HEADER_LENGTH,))
    header_length = None
    if raw_length is not None:
        try:
            header_length = int(raw_length)
        except ValueError:
            raise DecodeError(f"header {h.BINARY_HEADER_LENGTH}={raw_length!r} is not an integer") from None
    return decode_request(record.value, limits=limits, header_length=header_length)


def model_choice(record: Record) -> tuple[str | None, str | None]:
    """The model and version a record asks for in its headers (None: the default)."""
    return h.first(record.headers, h.MODEL_ALIASES), h.first(record.headers, h.MODEL_VERSION_ALIASES)


def make_item(record: Record, request: InferenceRequest, model: LoadedModel) -> Item:
    """An item for the batcher, once the request fits the model (else ValidationError)."""
    check_request(request, model)
    return Item(record, request, request.id or fallback_id(record), model)


def batch_key(item: Item) -> Hashable:
    """Items with the same key can be concatenated along the first axis."""
    layout = tuple((t.name, t.datatype, t.shape[1:]) for t in item.request.inputs)
    return (item.model.name, item.model.version, id(item.model), layout)


def dead_letter(record: Record, error: Exception, model: LoadedModel | None = None) -> DeadLetter:
    """A dead letter for `record`; its id is the best one known without decoding."""
    info = None if model is None else (model.name, model.version, model.sha256)
    return DeadLetter(record, error, fallback_id(record), info)


def score_batch(items: Sequence[Item], correlation: Sequence[str]) -> list[Outcome]:
    """Score items that share a model; a failing batch is split until only bad records fail.

    Blocking (onnxruntime runs here): call it from a worker thread.
    """
    if not items:
        return []
    model = items[0].model
    try:
        outputs = model.run(_concatenate(items))
    except InferenceError as error:
        if len(items) == 1:
            return [DeadLetter(items[0].record, error, items[0].request_id, _info(model))]
        middle = len(items) // 2
        return score_batch(items[:middle], correlation) + score_batch(items[middle:], correlation)
    total = sum(item.rows for item in items)
    if len(items) > 1 and any(_rows_of(t) != total for t in outputs.values()):
        # Outputs that do not follow the batch axis cannot be split by record: one at a time.
        return [outcome for item in items for outcome in score_batch([item], correlation)]
    return _split(items, outputs, correlation)


def _info(model: LoadedModel) -> tuple[str, str, str]:
    return (model.name, model.version, model.sha256)


def _rows_of(tensor: Tensor) -> int:
    return int(tensor.data.shape[0]) if tensor.data.ndim else -1


def _concatenate(items: Sequence[Item]) -> dict[str, np.ndarray[Any, Any]]:
    if len(items) == 1:
        return {t.name: t.data for t in items[0].request.inputs}
    names = [t.name for t in items[0].request.inputs]
    columns: dict[str, list[np.ndarray[Any, Any]]] = {name: [] for name in names}
    for item in items:
        for tensor in item.request.inputs:
            columns[tensor.name].append(tensor.data)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def _split(items: Sequence[Item], outputs: dict[str, Tensor], correlation: Sequence[str]) -> list[Outcome]:
    results: list[Outcome] = []
    start = 0
    single = len(items) == 1
    for item in items:
        stop = start + item.rows
        wanted = item.request.outputs or item.model.output_names
        sliced = [
            outputs[name]
            if single
            else Tensor(
                name, outputs[name].datatype, outputs[name].data[start:stop], outputs[name].parameters
            )
            for name in wanted
        ]
        results.append(encode_result(item, sliced, correlation))
        start = stop
    return results


def encode_result(item: Item, outputs: Sequence[Tensor], correlation: Sequence[str]) -> Result:
    """The result record of one item: V2 response keyed by request id, correlation headers copied."""
    model = item.model
    value = encode_response(
        id=item.request_id, model_name=model.name, model_version=model.version, outputs=outputs
    )
    headers = [(key, val) for key, val in item.record.headers if key in correlation]
    headers += [(h.MODEL, model.name.encode()), (h.MODEL_VERSION, model.version.encode())]
    return Result(item.record, item.request_id, item.request_id.encode(), value, headers)


def describe(error: Exception) -> str:
    """The stage of a failure, for logs and dead-letter headers."""
    return error.stage if isinstance(error, RecordError) else "infer"
