"""`streamscore model evaluate NAME [VERSIONS...] --data labelled.csv --label COLUMN`: choose between versions offline.

1. read     the labelled CSV (`registry/labelled.py`) and its sha256
2. score    each version (default: every pushed one) loaded as a worker loads it (its verified
            bytes, `load_verified`, one intra-op thread), the rows in batches of its tuned
            max_batch_rows for one thread (`model tune`), else the worker's default; then its
            runs timed for --seconds: microseconds per row (median run) and rows/s
3. judge    pure: every metric that applies (`registry/metrics.py`), and the share of rows whose
            label agrees with the current version's (the control topic's, else the highest)
4. record   an `evaluate` event in each version's manifest history: the metrics, the data's path,
            sha256 and rows, the timing. `model promote --require-better METRIC` compares the
            candidate's latest record with the current version's on the same data (`require_better`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from artifacts.manifest import DEFAULT_MAX_BATCH_ROWS, Manifest, check_name
from artifacts.registry import Registry
from artifacts.runtime import CPU, load_verified
from registry import bus
from registry.labelled import LabelledRows, Prediction, agreement, read_labelled, read_prediction, score
from registry.measure import Clock, Feeds, run_all, split_batches, time_runs
from registry.metrics import METRICS, is_worse
from registry.settings import RegistrySettings
from schemas.errors import ConfigError
from schemas.tensors import DATATYPES

COMMANDS = ("evaluate",)
EVALUATE_EVENT = "evaluate"
DEFAULT_SECONDS = 1.0
CONTROL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Evaluation:
    """One version on the labelled rows: its metrics, its speed at its batch size, its agreement with current."""

    version: str
    metrics: dict[str, float]
    batch: int
    batch_source: str  # "tuned" or "default"
    latency_us_per_row: float
    rows_per_s: float
    size: int
    agreement: float | None


def evaluate_versions(
    registry: Registry,
    name: str,
    versions: Sequence[str],
    data: LabelledRows,
    current: str | None,
    *,
    seconds: float = DEFAULT_SECONDS,
    clock: Clock = time.perf_counter_ns,
) -> list[Evaluation]:
    """Score `versions` of `name` (and `current`, for the agreement) on `data`; record each in its history."""
    wanted = list(dict.fromkeys(versions or registry.versions(name)))
    for version in {*wanted, *([current] if current else [])}:
        _require_pushed(registry, name, version)
    runs = {version: run_version(registry, name, version, data, seconds, clock) for version in wanted}
    if current and current not in runs:
        runs[current] = run_version(registry, name, current, data, seconds, clock)
    reference = runs[current][0] if current else None
    found = [judge(version, *runs[version], data, reference) for version in wanted]
    for evaluation in found:
        registry.record(name, evaluation.version, evaluate_event(evaluation, data, current))
    return found


def run_version(
    registry: Registry, name: str, version: str, data: LabelledRows, seconds: float, clock: Clock
) -> tuple[Prediction, Manifest, int, str, list[int], list[Feeds]]:
    """A version's prediction for every row, and the timing of its runs at its batch size."""
    stored = registry.read_version(name, version)
    m = stored.manifest
    model = load_verified(stored.model, stored.external, name, version, sha256=m.sha256)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 2:
        raise ConfigError(
            f"model {name} version {version}: evaluate fits one [rows, features] input, not {model.inputs}"
        )
    spec = model.inputs[0]
    if spec.shape[1] is not None and spec.shape[1] != data.features.shape[1]:
        raise ConfigError(
            f"{data.path} has {data.features.shape[1]} feature columns; input {spec.name!r} of {name} {version} "
            f"takes {spec.shape[1]}"
        )
    tuned = m.tuned_batch_rows(1, CPU[0])
    batch = tuned or DEFAULT_MAX_BATCH_ROWS
    feeds = split_batches({spec.name: data.features.astype(DATATYPES[spec.datatype])}, model.fixed_batch, batch)
    prediction = read_prediction(run_all(model, feeds))
    spent = time_runs(model, feeds, seconds, clock)
    return prediction, m, model.fixed_batch or batch, "tuned" if tuned else "default", spent, feeds


def judge(
    version: str,
    prediction: Prediction,
    manifest: Manifest,
    batch: int,
    source: str,
    spent: list[int],
    feeds: list[Feeds],
    data: LabelledRows,
    reference: Prediction | None,
) -> Evaluation:
    """Pure: the metrics, the speed from the timed runs (run i ran feeds[i % len(feeds)]), the agreement.

    Speed is the median run's time per row (rows/s its inverse): on a shared machine a mean is mostly
    what other processes took."""
    rows = np.array([len(next(iter(feeds[i % len(feeds)].values()))) for i in range(len(spent))])
    per_row_ns = float(np.median(np.array(spent, dtype=np.float64) / rows))
    return Evaluation(
        version=version,
        metrics=score(prediction, data),
        batch=batch,
        batch_source=source,
        latency_us_per_row=round(per_row_ns / 1000, 3),
        rows_per_s=round(1e9 / per_row_ns, 1),
        size=manifest.size,
        agreement=None if reference is None else agreement(prediction, reference),
    )


def evaluate_event(evaluation: Evaluation, data: LabelledRows, current: str | None) -> dict[str, Any]:
    """The history event `model promote --require-better` reads."""
    shown = ", ".join(f"{metric} {value:.4f}" for metric, value in evaluation.metrics.items())
    return {
        "event": EVALUATE_EVENT,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "result": f"{shown or 'no metric applies'} on {data.path.name}",
        "data": data.describe(),
        "current": current,
        **{k: v for k, v in asdict(evaluation).items() if k != "version"},
    }


def _require_pushed(registry: Registry, name: str, version: str) -> None:
    if not registry.has(name, check_name("model version", version)):
        available = ", ".join(registry.versions(name)) or "none"
        raise ConfigError(f"model {name} has no pushed version {version} (pushed: {available})")


# ---------------------------------------------------------------------------------------------
# promote --require-better


def latest_evaluation(manifest: Manifest, metric: str, sha256: str | None = None) -> dict[str, Any] | None:
    """The latest evaluate event of `manifest` that has `metric` (on the data of `sha256`, if given)."""
    for event in reversed(manifest.history):
        if event.get("event") != EVALUATE_EVENT or metric not in (event.get("metrics") or {}):
            continue
        if sha256 is None or (event.get("data") or {}).get("sha256") == sha256:
            return dict(event)
    return None


def require_better(registry: Registry, name: str, candidate: str, current: str | None, metric: str) -> None:
    """ConfigError unless `candidate`'s recorded `metric` is at least as good as `current`'s on the same data."""
    if metric not in METRICS:
        raise ConfigError(f"--require-better {metric}: use one of {', '.join(METRICS)}")
    if current is None or current == candidate:
        return
    run = f"streamscore model evaluate {name} {candidate} {current} --data FILE --label COLUMN --metric {metric}"
    found = latest_evaluation(registry.manifest(name, candidate), metric)
    if found is None:
        raise ConfigError(
            f"--require-better {metric}: version {candidate} of {name} has no recorded {metric}; run `{run}`"
        )
    data = found["data"]
    theirs = latest_evaluation(registry.manifest(name, current), metric, data["sha256"])
    if theirs is None:
        raise ConfigError(
            f"--require-better {metric}: current version {current} of {name} has no {metric} recorded on the data "
            f"version {candidate} was evaluated on ({data['path']}, sha256 {data['sha256'][:12]}); run `{run}` "
            f"with that file"
        )
    mine, other = found["metrics"][metric], theirs["metrics"][metric]
    if is_worse(metric, mine, other):
        raise ConfigError(
            f"refusing to promote {name} {candidate}: its {metric} {mine:.4f} is worse than current version "
            f"{current}'s {other:.4f} (both on {data['path']}, sha256 {data['sha256'][:12]}); keep {current}, or "
            "promote without --require-better to override"
        )


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(commands: Any) -> None:
    """Add `evaluate NAME [VERSIONS...]` to the `model` subcommands."""
    parser = commands.add_parser(
        "evaluate", help="score labelled rows offline with each version: a metric, speed, size, agreement"
    )
    parser.add_argument("name")
    parser.add_argument("versions", nargs="*", help="default: every pushed version")
    parser.add_argument("--data", type=Path, required=True, help="a CSV with a header: features and the label column")
    parser.add_argument("--label", required=True, help="the label column")
    parser.add_argument("--metric", choices=METRICS, help="the metric shown (default accuracy, rmse for regressions)")
    parser.add_argument("--current", help="the version to agree with (default: the control topic's, else the highest)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="timing per version (%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the evaluations as JSON")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Evaluate, print the table (or JSON)."""
    registry = Registry.at(settings.model_root)
    name = check_name("model name", args.name)
    data = read_labelled(args.data, args.label)
    current = args.current or current_version(registry, settings, name)
    found = evaluate_versions(registry, name, args.versions, data, current, seconds=args.seconds)
    metric = args.metric or ("accuracy" if any("accuracy" in e.metrics for e in found) else "rmse")
    print(render_json(found, data, current) if args.json else render_table(found, data, current, metric))
    return 0


def current_version(registry: Registry, settings: RegistrySettings, name: str) -> str | None:
    """The version the control topic says serves, else the highest pushed (what workers serve without one)."""
    try:
        states = asyncio.run(asyncio.wait_for(bus.read_states(settings, settings.control_topic), CONTROL_TIMEOUT_S))
    except Exception:  # no broker, no topic: what workers serve without a control record
        states = {}
    state = states.get(name)
    versions = registry.versions(name)
    return state.current if state and state.current else (versions[-1] if versions else None)


def render_table(found: Sequence[Evaluation], data: LabelledRows, current: str | None, metric: str) -> str:
    """One line per version: the metric, us/row at its batch, rows/s, size, agreement with current."""
    lines = [
        f"{data.path.name}: {len(data.labels)} rows, label {data.label!r}, sha256 {data.sha256[:12]}; "
        f"current version {current or '-'}",
        f"{'version':<10}{metric:>10}{'batch':>12}{'us/row':>10}{'rows/s':>12}{'size':>10}{'agree':>9}",
    ]
    for e in found:
        value = e.metrics.get(metric)
        mark = " *" if e.version == current else ""
        lines.append(
            f"{e.version + mark:<10}{'-' if value is None else f'{value:.4f}':>10}"
            f"{f'{e.batch} {e.batch_source}':>12}{e.latency_us_per_row:>10.3f}{e.rows_per_s:>12,.0f}{e.size:>10}"
            f"{'-' if e.agreement is None else f'{e.agreement:.4f}':>9}"
        )
    lines.append("(* current; agree: share of rows whose label is the current version's; recorded in each manifest)")
    return "\n".join(lines)


def render_json(found: Sequence[Evaluation], data: LabelledRows, current: str | None) -> str:
    body = {"data": data.describe(), "current": current, "versions": [asdict(e) for e in found]}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
