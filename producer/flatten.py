"""Flattening (pure): a decoded V2 response body as one JSON Lines object or as CSV rows.

The layouts of both formats are described in `producer.collect`; `producer.ledger` spools what these return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FIXED_KEYS = ("id", "model_version")


class FlattenError(ValueError):
    """A result that cannot be read, or does not fit the CSV columns."""


Output = tuple[str, list[int], list[Any]]  # name, shape, flat row-major data


def read_outputs(body: Any) -> list[Output]:
    """The outputs of a decoded V2 response body, checked: shape and data agree."""
    try:
        raw = body["outputs"]
        outputs = [(o["name"], o["shape"], _flat(o["data"])) for o in raw]
    except (KeyError, TypeError) as error:
        raise FlattenError(f"not a V2 response: {error!r}") from None
    for name, shape, data in outputs:
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise FlattenError(f"output {name!r}: bad shape {shape!r}")
        if math.prod(shape) != len(data):
            raise FlattenError(f"output {name!r}: shape {shape} holds {math.prod(shape)} values, data has {len(data)}")
    return outputs


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    return [value for item in data for value in _flat(item)]


def nest(data: list[Any], shape: Sequence[int]) -> Any:
    """Row-major `data` as nested lists of `shape` (a scalar for shape [])."""
    if not shape:
        return data[0]
    if len(shape) == 1 or shape[0] == 0:
        return data
    step = len(data) // shape[0]
    return [nest(data[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def jsonl_object(request_id: str, body: Any) -> dict[str, Any]:
    """One JSON Lines object per request: id, model_version, then each output in its shape."""
    found = {"id": request_id, "model_version": body.get("model_version")}
    for name, shape, data in read_outputs(body):
        found[f"output_{name}" if name in FIXED_KEYS else name] = nest(data, shape)
    return found


def rows_and_width(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, values per row) of an output: its first dimension, and the rest multiplied."""
    return (1, 1) if not shape else (shape[0], math.prod(shape[1:]))


@dataclass(frozen=True)
class Columns:
    """The CSV layout, learned from the first result: each output's name and values per row."""

    outputs: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, outputs: Sequence[Output]) -> Columns:
        return cls(tuple((name, rows_and_width(shape)[1]) for name, shape, _ in outputs))

    def header(self) -> list[str]:
        names = [name if width == 1 else f"{name}_{i}" for name, width in self.outputs for i in range(width)]
        return ["id", "row", "model_version", *names]

    def rows(self, request_id: str, first_row: int, model_version: Any, outputs: Sequence[Output]) -> list[list[Any]]:
        """One CSV row per input row of the request."""
        by_name = {name: (rows_and_width(shape), data) for name, shape, data in outputs}
        if sorted(by_name) != sorted(name for name, _ in self.outputs):
            raise FlattenError(f"outputs {sorted(by_name)} differ from the columns' {[n for n, _ in self.outputs]}")
        count = by_name[self.outputs[0][0]][0][0]
        lines = [[request_id, first_row + i, model_version] for i in range(count)]
        for name, width in self.outputs:
            (rows, got), data = by_name[name]
            if (rows, got) != (count, width):
                raise FlattenError(f"output {name!r}: {rows} rows of {got} values, the columns need {count} of {width}")
            for i, line in enumerate(lines):
                line.extend(data[i * width : (i + 1) * width])
        return lines
