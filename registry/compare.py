"""`streamscore model compare NAME`: how often, and by how much, the shadow version disagrees.

While a shadow version is set, the worker scores every request twice: the current version's
result goes to the results topic, the shadow version's to the shadow topic, both keyed by the
request id and headed `streamscore-model`. This command reads both topics from the beginning to
their end offsets as of the start, keeps the model's records, pairs them by request id and
compares each pair output by output:

    float outputs        agree when every value is within --atol; max, mean and p99 abs diff
    probabilities        a [rows, classes] float output with `parameters.labels`, or whose rows
                         look like probabilities: as floats, plus the label (argmax) of each row
    labels               int, bool and BYTES outputs: compared exactly, value by value

Deciding is pure (`collect`, `pair_up`, `compare`); `read_side` is the only Kafka I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artifacts.manifest import check_name, version_key
from registry.compare_render import render_json, render_table
from registry.settings import RegistrySettings
from schemas import headers as h
from schemas.codec import InferenceResponse, decode_response
from schemas.errors import ConfigError, DecodeError
from schemas.records import Message
from schemas.tensors import Tensor
from transport.connection import Connection
from transport.reading import TopicReader, read_to_end

COMMANDS = ("compare",)

DEFAULT_ATOL = 1e-6
DEFAULT_TIMEOUT_S = 5.0
PROBABILITY_SUM_TOLERANCE = 1e-3  # rows of a probability matrix sum to 1 within this

FLOAT, PROBABILITIES, LABELS = "float", "probabilities", "labels"


@dataclass(frozen=True)
class Side:
    """One topic's responses of the model, by request id (the last one wins), and what failed to decode."""

    responses: Mapping[str, InferenceResponse]
    unreadable: int = 0


@dataclass(frozen=True)
class Pairs:
    """Responses of the same requests, as (current, shadow), and those found on one side only."""

    matched: Sequence[tuple[InferenceResponse, InferenceResponse]]
    only_current: Sequence[InferenceResponse] = ()
    only_shadow: Sequence[InferenceResponse] = ()
    unreadable_current: int = 0
    unreadable_shadow: int = 0


@dataclass(frozen=True)
class OutputReport:
    """How one output differs: in how many requests, by how much, and how often labels agree."""

    name: str
    kind: str  # float, probabilities, labels
    requests: int  # pairs in which either side has this output
    disagreeing: int  # of those, pairs beyond atol, with a different label, or mismatched
    mismatched: int  # missing on one side, or shapes or kinds differ
    max_abs_diff: float | None
    mean_abs_diff: float | None
    p99_abs_diff: float | None
    labels: int  # labels compared (values of label outputs, rows of probabilities)
    labels_agreeing: int

    @property
    def label_agreement(self) -> float | None:
        """The share of labels that agree, or None when the output carries no labels."""
        return self.labels_agreeing / self.labels if self.labels else None


@dataclass(frozen=True)
class Report:
    """The comparison of a shadow version with the current one."""

    atol: float
    pairs: int
    disagreeing: int  # pairs in which any output disagrees
    unpaired_current: int
    unpaired_shadow: int
    unreadable_current: int
    unreadable_shadow: int
    current_versions: tuple[str, ...]
    shadow_versions: tuple[str, ...]
    outputs: tuple[OutputReport, ...]

    @property
    def disagreement(self) -> float:
        """The share of pairs that disagree (0 without pairs)."""
        return self.disagreeing / self.pairs if self.pairs else 0.0


# ---------------------------------------------------------------------------------------------
# Deciding: pure


def collect(records: Iterable[Message], model: str) -> Side:
    """The model's responses among result records, by request id (the key, else the body's id)."""
    responses: dict[str, InferenceResponse] = {}
    unreadable = 0
    for record in records:
        if h.first(record.headers, (h.MODEL,)) != model or record.value is None:
            continue
        try:
            response = decode_response(record.value, header_length=h.header_length(record.headers))
        except (DecodeError, ValueError):  # ValueError: a length header that is not a number
            unreadable += 1
            continue
        key = record.key.decode("utf-8", errors="replace") if record.key is not None else response.id
        responses[key] = response  # a redelivered request was scored again: keep the latest
    return Side(responses, unreadable)


def pair_up(current: Side, shadow: Side, limit: int | None = None) -> Pairs:
    """Pair responses by request id, in the current side's order; at most `limit` pairs."""
    matched = [(r, shadow.responses[k]) for k, r in current.responses.items() if k in shadow.responses]
    return Pairs(
        matched=matched[:limit] if limit is not None else matched,
        only_current=[r for k, r in current.responses.items() if k not in shadow.responses],
        only_shadow=[r for k, r in shadow.responses.items() if k not in current.responses],
        unreadable_current=current.unreadable,
        unreadable_shadow=shadow.unreadable,
    )


def compare(pairs: Pairs, *, atol: float = DEFAULT_ATOL) -> Report:
    """Compare every pair output by output; a pair disagrees when any of its outputs does."""
    tallies: dict[str, _Tally] = {}
    disagreeing = 0
    for current, shadow in pairs.matched:
        names = dict.fromkeys([t.name for t in current.outputs] + [t.name for t in shadow.outputs])
        verdicts = [
            tallies.setdefault(name, _Tally(name)).add(_find(current, name), _find(shadow, name), atol)
            for name in names
        ]
        disagreeing += any(verdicts)
    return Report(
        atol=atol,
        pairs=len(pairs.matched),
        disagreeing=disagreeing,
        unpaired_current=len(pairs.only_current),
        unpaired_shadow=len(pairs.only_shadow),
        unreadable_current=pairs.unreadable_current,
        unreadable_shadow=pairs.unreadable_shadow,
        current_versions=_versions([c for c, _ in pairs.matched], pairs.only_current),
        shadow_versions=_versions([s for _, s in pairs.matched], pairs.only_shadow),
        outputs=tuple(t.report() for t in tallies.values()),
    )


def _find(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.outputs if t.name == name), None)


def _versions(*groups: Sequence[InferenceResponse]) -> tuple[str, ...]:
    found = {r.model_version or "unknown" for group in groups for r in group}
    return tuple(sorted(found, key=version_key))


def kind_of(tensor: Tensor) -> str:
    """How an output is compared: float, probabilities or labels."""
    data = tensor.data
    if data.dtype.kind != "f":
        return LABELS
    if data.ndim == 2 and data.shape[1] >= 2 and (_labels(tensor) is not None or _looks_like_probabilities(data)):
        return PROBABILITIES
    return FLOAT


def _labels(tensor: Tensor) -> list[Any] | None:
    labels = (tensor.parameters or {}).get("labels")
    return labels if isinstance(labels, list) and len(labels) == tensor.data.shape[-1] else None


def _looks_like_probabilities(data: np.ndarray[Any, Any]) -> bool:
    if data.size == 0 or not np.isfinite(data).all() or data.min() < 0 or data.max() > 1:
        return False
    return bool(np.allclose(data.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE))


def _row_labels(tensor: Tensor) -> list[Any]:
    """The label of each row of a probability matrix: its name when the output names them, else its index."""
    best = np.argmax(tensor.data, axis=1).tolist()
    names = _labels(tensor)
    return [names[i] for i in best] if names is not None else best


def _abs_diff(current: np.ndarray[Any, Any], shadow: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    a, b = current.astype(np.float64).reshape(-1), shadow.astype(np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b))  # equal infinities differ by 0
    return np.where(np.isnan(a) & np.isnan(b), 0.0, np.nan_to_num(diff, nan=np.inf))


@dataclass
class _Tally:
    """What `compare` has seen of one output so far."""

    name: str
    kinds: set[str] = field(default_factory=set)
    requests: int = 0
    disagreeing: int = 0
    mismatched: int = 0
    diffs: list[np.ndarray[Any, Any]] = field(default_factory=list)
    labels: int = 0
    labels_agreeing: int = 0

    def add(self, current: Tensor | None, shadow: Tensor | None, atol: float) -> bool:
        """Count one pair's output; True when the two versions disagree on it."""
        self.requests += 1
        disagrees = self._compare(current, shadow, atol)
        self.disagreeing += disagrees
        return disagrees

    def _compare(self, current: Tensor | None, shadow: Tensor | None, atol: float) -> bool:
        if current is None or shadow is None or current.shape != shadow.shape:
            self.mismatched += 1
            self.kinds.update(kind_of(t) for t in (current, shadow) if t is not None)
            return True
        kinds = {kind_of(current), kind_of(shadow)}
        if LABELS in kinds and len(kinds) > 1:  # numbers against labels
            self.mismatched += 1
            self.kinds.update(kinds)
            return True
        if kinds == {LABELS}:
            self.kinds.add(LABELS)
            return self._count_labels(current.data.reshape(-1).tolist(), shadow.data.reshape(-1).tolist())
        diff = _abs_diff(current.data, shadow.data)
        self.diffs.append(diff)
        beyond = bool(diff.size) and bool(diff.max() > atol)
        if PROBABILITIES in kinds:
            self.kinds.add(PROBABILITIES)
            return self._count_labels(_row_labels(current), _row_labels(shadow)) or beyond
        self.kinds.add(FLOAT)
        return beyond

    def _count_labels(self, current: list[Any], shadow: list[Any]) -> bool:
        agreeing = sum(1 for a, b in zip(current, shadow, strict=True) if a == b)
        self.labels += len(current)
        self.labels_agreeing += agreeing
        return agreeing != len(current)

    def report(self) -> OutputReport:
        diffs = np.concatenate(self.diffs) if self.diffs else np.empty(0)
        some = diffs.size > 0
        return OutputReport(
            name=self.name,
            kind=next((k for k in (PROBABILITIES, FLOAT, LABELS) if k in self.kinds), FLOAT),
            requests=self.requests,
            disagreeing=self.disagreeing,
            mismatched=self.mismatched,
            max_abs_diff=float(diffs.max()) if some else None,
            mean_abs_diff=float(diffs.mean()) if some else None,
            # "higher": an observed difference, never an interpolation below it
            p99_abs_diff=float(np.percentile(diffs, 99, method="higher")) if some else None,
            labels=self.labels,
            labels_agreeing=self.labels_agreeing,
        )


# ---------------------------------------------------------------------------------------------
# Acting: Kafka and the command line


async def read_side(connection: Connection, topic: str, model: str, idle_s: float) -> tuple[Side, bool]:
    """The model's responses on `topic`, read up to its end offsets as of now, and whether it got there."""
    records: list[Message] = []
    reader = TopicReader(connection.kafka_options(), isolation_level="read_committed")
    await reader.start()
    try:
        ending = await read_to_end(reader, topic, records.extend, idle_s=idle_s)
    finally:
        await reader.stop()
    return collect(records, model), ending != "idle"


def add_parser(commands: Any) -> None:
    """Add `compare` to the `model` subcommands."""
    parser = commands.add_parser("compare", help="how often and by how much the shadow version disagrees")
    parser.add_argument("name")
    parser.add_argument("--results-topic", help="the current version's results (default: the setting)")
    parser.add_argument("--shadow-topic", help="the shadow version's results (default: <results-topic>.shadow)")
    parser.add_argument("--limit", type=int, help="compare at most N pairs")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="float outputs agree within this")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="stop reading after S seconds without new records"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Read both topics, compare, print; 2 when there is nothing to compare."""
    name = check_name("model name", args.name)
    _check_numbers(args)
    results_topic = args.results_topic or settings.results_topic
    shadow_topic = args.shadow_topic or settings.replace(results_topic=results_topic).shadow_topic_name
    current, shadow = asyncio.run(_read_both(settings, results_topic, shadow_topic, name, args.timeout))
    report = compare(pair_up(current, shadow, args.limit), atol=args.atol)
    if report.pairs == 0:
        print(
            f"streamscore model compare: no pairs to compare: {len(current.responses)} results of model {name} "
            f"on {results_topic}, {len(shadow.responses)} on {shadow_topic}, none for the same request id. "
            f"A shadow must be set with `streamscore model shadow {name} VERSION`, and requests scored since.",
            file=sys.stderr,
        )
        return 2
    render = render_json if args.json else render_table
    print(render(report, name, results_topic, shadow_topic))
    return 0


def _check_numbers(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.atol < 0:
        raise ConfigError(f"--atol must not be negative, got {args.atol}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout}")


async def _read_both(
    connection: Connection, results_topic: str, shadow_topic: str, model: str, idle_s: float
) -> tuple[Side, Side]:
    (current, current_done), (shadow, shadow_done) = await asyncio.gather(
        read_side(connection, results_topic, model, idle_s), read_side(connection, shadow_topic, model, idle_s)
    )
    for topic, done in ((results_topic, current_done), (shadow_topic, shadow_done)):
        if not done:
            print(
                f"streamscore model compare: {topic}: no records for {idle_s:g} s, stopped before its end",
                file=sys.stderr,
            )
    return current, shadow
