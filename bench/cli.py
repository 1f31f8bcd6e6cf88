"""The command line of `python -m bench`: flags, the broker's lifecycle, the report."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.cluster import running_broker
from bench.config import (
    QUICK_TRICKLE_SECONDS,
    RESULTS_PATH,
    SCENARIOS,
    BenchConfig,
)
from bench.report import ScenarioResult, format_table, results_document
from bench.scenario import measure
from bench.stages import format_profile

_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since start."""
    print(f"[bench {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--records", type=int, help="requests per scenario (default: 100000 single-row, 25000 32-row)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: a fiftieth of the records, short phases")
    parser.add_argument("--naive-records", type=int, help="records the naive loop is timed on (default 5000)")
    parser.add_argument("--partitions", type=int, help="partitions of every topic (default 3)")
    parser.add_argument(
        "--profile", type=Path, help="cProfile the single-row streamscore run: PATH.{loop,thread}.pstats"
    )
    parser.add_argument(
        "--no-stages", dest="stages", action="store_false", help="leave out the per-stage timing (to see its cost)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where results.json goes")
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run's configuration from parsed flags."""
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    values: dict[str, Any] = {
        "scenarios": tuple(SCENARIOS[n] for n in names),
        "output": args.output,
        "stages": args.stages,
    }
    if args.quick:
        values |= {
            "quick": True,
            "naive_records": 1000,
            "ort_seconds": 0.5,
            "trickle_seconds": QUICK_TRICKLE_SECONDS,
        }
    for name in ("records", "naive_records", "partitions", "profile"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return BenchConfig(**values)


async def run(config: BenchConfig, bootstrap: str) -> list[ScenarioResult]:
    """Measure every scenario of `config` against the broker at `bootstrap`."""
    with tempfile.TemporaryDirectory(prefix="streamscore-bench-models-") as root:
        return [await measure(s, config, bootstrap, Path(root), progress) for s in config.scenarios]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table on stdout and write results.json."""
    from worker.logs import configure_logging

    config = config_from(make_parser().parse_args(argv))
    configure_logging("json", "warning")  # the worker's logs go to stderr, the table to stdout
    progress("starting a broker")
    with running_broker() as bootstrap:
        progress(f"broker on {bootstrap}")
        results = asyncio.run(run(config, bootstrap))
    print(format_table(results))
    for result in results:
        if "stages" in result.extra:
            print(format_profile(result.name, result.extra["stages"]))
    config.output.write_bytes(orjson.dumps(results_document(results, machine()), option=orjson.OPT_INDENT_2) + b"\n")
    progress(f"wrote {config.output}")
    return 0
