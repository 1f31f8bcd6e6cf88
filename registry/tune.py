"""`streamscore model tune NAME VERSION`: on this machine, rows per batch against throughput and latency.

`tune_model` reads as its steps (as Triton's model analyzer does for its server, with onnxruntime alone):

    1. plan      the batch sizes (1, 8, 32, 64, ... up to --max-batch; only its own batch for a model
                 that fixes one) and the intra-op thread counts (1, 2, 4, ... and the CPU count)
    2. measure   for each thread count, the version's verified bytes loaded as a worker loads them;
                 each batch run for --seconds on sample rows (--sample FILE, or generated from the
                 signature): rows/s, and p50 and p99 milliseconds per run; a line per point on stderr
    3. choose    pure, per thread count (`choose`): of the batches whose p99 fits --max-latency-ms,
                 the smallest whose rows/s is within --tolerance (5 %) of the best. Past that knee a
                 bigger batch buys next to no throughput, and costs latency: it waits longer to fill
                 and runs longer
    4. record    a `tune` event in the version's manifest history: the choice per thread count, every
                 point, the machine. A worker reads it at load (`Manifest.tuned_batch_rows`) when
                 STREAMSCORE_MAX_BATCH_ROWS is not set

Why a history event: the manifest records the sha256 of the version's files but no digest covers the
manifest itself, and its history is already the append-only record of what was done to a version
(`Registry.record`, as `model optimize` appends its attempts). A new field would make manifests that
workers predating tuning refuse to read; a file beside the manifest would be a second place to look.
The files and their digests are untouched, so loading verifies exactly as before.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from artifacts.manifest import TUNE_EVENT
from artifacts.registry import Registry, StoredVersion
from artifacts.runtime import CPU, LoadedModel, load_verified
from registry.measure import SAMPLE_SEED, Clock, Feeds, sample_feeds, time_runs
from registry.settings import RegistrySettings
from schemas.errors import ConfigError

COMMANDS = ("tune",)

BATCH_LADDER = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_MAX_BATCH = 512
DEFAULT_SECONDS = 1.0  # per point: enough runs for a p99 on small models
DEFAULT_TOLERANCE = 0.05
FEED_BATCHES = 4  # generated batches per size, run in turn


@dataclass(frozen=True)
class Point:
    """One measured combination: rows per batch and intra-op threads."""

    threads: int
    batch: int
    runs: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Choice:
    """The batch chosen at one thread count, and the point with the best rows/s it was judged against."""

    chosen: Point
    best: Point


@dataclass(frozen=True)
class TuneOptions:
    """What to measure and how to choose (checked by `make_options`)."""

    batches: tuple[int, ...] = tuple(b for b in BATCH_LADDER if b <= DEFAULT_MAX_BATCH)
    threads: tuple[int, ...] = (1,)
    seconds: float = DEFAULT_SECONDS
    tolerance: float = DEFAULT_TOLERANCE
    max_latency_ms: float | None = None
    sample: Path | None = None

    def used(self) -> dict[str, Any]:
        """The options as recorded in the tune event (the sample named)."""
        return {
            "batches": list(self.batches),
            "threads": list(self.threads),
            "seconds": self.seconds,
            "tolerance": self.tolerance,
            "max_latency_ms": self.max_latency_ms,
            "sample": str(self.sample) if self.sample else f"generated (seed {SAMPLE_SEED})",
        }


@dataclass(frozen=True)
class TuneResult:
    """Every point measured, the choice per thread count (None: no batch fits the budget), and if it was recorded."""

    points: list[Point]
    choices: dict[int, Choice | None]
    recorded: bool


def make_options(
    batches: Sequence[int] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: Sequence[int] | None = None,
    seconds: float = DEFAULT_SECONDS,
    tolerance: float = DEFAULT_TOLERANCE,
    max_latency_ms: float | None = None,
    sample: Path | str | None = None,
) -> TuneOptions:
    """Checked options; ConfigError saying what to change."""
    chosen = sorted(set(batches or [*(b for b in BATCH_LADDER if b < max_batch), max_batch]))
    counts = sorted(set(threads or default_threads(cpu_count())))
    if chosen[0] < 1 or counts[0] < 1:
        raise ConfigError("--batches, --max-batch and --threads must be at least 1")
    if seconds <= 0 or not 0 <= tolerance < 1 or (max_latency_ms is not None and max_latency_ms <= 0):
        raise ConfigError("--seconds and --max-latency-ms must be more than 0, --tolerance in [0, 1)")
    return TuneOptions(
        tuple(chosen), tuple(counts), seconds, tolerance, max_latency_ms, Path(sample) if sample else None
    )


def cpu_count() -> int:
    """The CPUs this process may run on (a container's share, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cpus: int) -> list[int]:
    """A small set of intra-op thread counts: powers of two below the CPU count, and the count."""
    return sorted({2**k for k in range(cpus.bit_length()) if 2**k < cpus} | {cpus})


def tune_model(
    registry: Registry,
    name: str,
    version: str,
    options: TuneOptions | None = None,
    *,
    record: bool = True,
    clock: Clock = time.perf_counter_ns,
    progress: Callable[[str], None] = lambda line: None,
) -> TuneResult:
    """Measure `name` `version` here at every batch and thread count of `options`, choose max_batch_rows
    per thread count, and (`record`) append the choice to the version's manifest history."""
    options = options or make_options()
    stored = registry.read_version(name, _require_manifest(registry, name, version))  # checked as workers check
    points = measure_points(stored, options, clock, progress)
    choices = {
        t: choose([p for p in points if p.threads == t], options.tolerance, options.max_latency_ms)
        for t in options.threads
    }
    recorded = record and any(choices.values())
    if recorded:
        registry.record(name, version, tune_event(points, choices, options))
    return TuneResult(points, choices, recorded)


def _require_manifest(registry: Registry, name: str, version: str) -> str:
    if not registry.has(name, version):
        available = ", ".join(registry.versions(name)) or "none"
        raise ConfigError(
            f"model {name} has no pushed version {version} in the registry (pushed: {available}); tuning is "
            "recorded in a version's manifest: push the model with `streamscore model push` first"
        )
    return version


# ---------------------------------------------------------------------------------------------
# 1. plan, 2. measure


def measure_points(
    stored: StoredVersion, options: TuneOptions, clock: Clock, progress: Callable[[str], None]
) -> list[Point]:
    """Every (threads, batch) point, thread count by thread count; a line per point to `progress`."""
    points: list[Point] = []
    feeds: dict[int, list[Feeds]] = {}
    m = stored.manifest
    for threads in options.threads:
        model = load_verified(
            stored.model, stored.external, m.name, m.version, sha256=m.sha256, intra_op_threads=threads
        )
        for batch in batch_sizes(model, options.batches):
            if batch not in feeds:
                feeds[batch] = batch_feeds(model, options.sample, batch)
            point = measure_point(model, threads, batch, feeds[batch], options.seconds, clock)
            progress(
                f"tune {m.name} {m.version}: {_threads(threads)}, batch {batch}: {point.rows_per_s:,.0f} rows/s, "
                f"p50 {point.p50_ms:.3f} ms, p99 {point.p99_ms:.3f} ms ({point.runs} runs)"
            )
            points.append(point)
    return points


def batch_sizes(model: LoadedModel, wanted: Sequence[int]) -> list[int]:
    """The batch sizes to measure: `wanted`, or only the model's own for a model that fixes it."""
    return [model.fixed_batch] if model.fixed_batch else list(wanted)


def batch_feeds(model: LoadedModel, sample: Path | None, batch: int) -> list[Feeds]:
    """Batches of exactly `batch` rows: from the sample (its rows repeated when it holds fewer) or generated."""
    feeds = sample_feeds(model, sample, batch, FEED_BATCHES)
    whole = [feed for feed in feeds if _rows(feed) == batch]
    return whole or [{k: np.resize(a, (batch, *a.shape[1:])) for k, a in feeds[0].items()}]


def measure_point(
    model: LoadedModel, threads: int, batch: int, feeds: Sequence[Feeds], seconds: float, clock: Clock
) -> Point:
    """Rows/s and per-run p50/p99 of `model` on `feeds` for about `seconds`."""
    spent = np.array(time_runs(model, feeds, seconds, clock), dtype=np.float64)
    total_s = max(float(spent.sum()) / 1e9, 1e-9)
    p50, p99 = np.percentile(spent, [50, 99]) / 1e6
    return Point(threads, batch, len(spent), batch * len(spent) / total_s, float(p50), float(p99))


def _rows(feed: Feeds) -> int:
    return len(next(iter(feed.values())))


# ---------------------------------------------------------------------------------------------
# 3. choose, 4. record


def choose(points: Sequence[Point], tolerance: float, max_latency_ms: float | None = None) -> Choice | None:
    """Of the points whose p99 fits `max_latency_ms` (None: any), the smallest batch whose rows/s is within
    `tolerance` of the best of them; None when no point fits."""
    fitting = [p for p in points if max_latency_ms is None or p.p99_ms <= max_latency_ms]
    if not fitting:
        return None
    best = max(fitting, key=lambda p: p.rows_per_s)
    near = [p for p in fitting if p.rows_per_s >= (1 - tolerance) * best.rows_per_s]
    return Choice(min(near, key=lambda p: p.batch), best)


def tune_event(points: Sequence[Point], choices: dict[int, Choice | None], options: TuneOptions) -> dict[str, Any]:
    """The history event a worker reads its max_batch_rows from (keys of `max_batch_rows`: thread counts)."""
    chosen = {str(t): c.chosen.batch for t, c in choices.items() if c is not None}
    return {
        "event": TUNE_EVENT,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "result": "max_batch_rows " + ", ".join(f"{rows} at {_threads(int(t))}" for t, rows in chosen.items()),
        "max_batch_rows": chosen,
        "provider": CPU[0],
        "machine": {
            "host": socket.gethostname(),
            "cpus": cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__,
        },
        "options": options.used(),
        "points": [vars(p) for p in points],
    }


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(commands: Any) -> None:
    """Add `tune NAME VERSION` to the `model` subcommands."""
    parser = commands.add_parser(
        "tune", help="measure rows/s and latency against batch size and threads here; record max_batch_rows"
    )
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument(
        "--batches", type=_ints, help="batch sizes to measure, e.g. 1,8,64 (default 1,8,32,... up to --max-batch)"
    )
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch (default %(default)s)")
    parser.add_argument(
        "--threads", type=_ints, help="intra-op thread counts, e.g. 1,2 (default 1,2,4,... and the CPUs)"
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per point (default %(default)s)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="share of the best rows/s to give up for a smaller batch (default %(default)s)",
    )
    parser.add_argument("--max-latency-ms", type=float, help="only batches whose p99 per run fits this")
    parser.add_argument("--sample", type=Path, help="rows to measure on (csv, jsonl, npy; default: seeded random rows)")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, record nothing")


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas, e.g. 1,8,64") from None


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Tune, print the table and the choice; 1 if no batch fits the latency budget."""
    options = make_options(
        args.batches, args.max_batch, args.threads, args.seconds, args.tolerance, args.max_latency_ms, args.sample
    )
    registry = Registry.at(settings.model_root)
    result = tune_model(
        registry,
        args.name,
        args.version,
        options,
        record=not args.dry_run,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(format_report(args.name, args.version, result, options))
    return 0 if any(result.choices.values()) else 1


def format_report(name: str, version: str, result: TuneResult, options: TuneOptions) -> str:
    """The points as a table (* marks each thread count's choice), then the choice per thread count."""
    picked = {(c.chosen.threads, c.chosen.batch) for c in result.choices.values() if c is not None}
    lines = [f"{'threads':>7} {'batch':>6} {'rows/s':>12} {'p50 ms':>9} {'p99 ms':>9} {'runs':>7}"]
    for p in result.points:
        mark = "  *" if (p.threads, p.batch) in picked else ""
        lines.append(
            f"{p.threads:>7} {p.batch:>6} {p.rows_per_s:>12,.0f} {p.p50_ms:>9.3f} {p.p99_ms:>9.3f} {p.runs:>7}{mark}"
        )
    for threads, choice in result.choices.items():
        lines.append(_conclusion(threads, choice, options))
    if result.recorded:
        lines.append(
            f"recorded in the manifest of {name} version {version}: workers without STREAMSCORE_MAX_BATCH_ROWS "
            "use the value for their STREAMSCORE_INTRA_OP_THREADS (or the nearest thread count measured)"
        )
    return "\n".join(lines)


def _conclusion(threads: int, choice: Choice | None, options: TuneOptions) -> str:
    if choice is None:
        return (
            f"{_threads(threads)}: no batch runs within --max-latency-ms {options.max_latency_ms:g} at p99; "
            "raise the budget, measure smaller batches (--batches), or use a faster machine"
        )
    c, best = choice.chosen, choice.best
    within = f"within {options.tolerance:.0%} of the best, {best.rows_per_s:,.0f} rows/s at batch {best.batch}"
    budget = f", p99 within {options.max_latency_ms:g} ms" if options.max_latency_ms is not None else ""
    return f"{_threads(threads)}: max_batch_rows {c.batch} ({c.rows_per_s:,.0f} rows/s, {within}{budget})"


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"
