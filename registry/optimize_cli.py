"""The command `streamscore model optimize NAME VERSION`: its flags, and the report it prints (`registry/optimize.py`
does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from artifacts.registry import Registry
from registry.optimize import (
    DEFAULT_BATCH,
    DEFAULT_GRAPH,
    DEFAULT_MIN_LABEL_AGREEMENT,
    DEFAULT_QUANTIZE,
    DEFAULT_QUANTIZED_TOLERANCE,
    DEFAULT_TOLERANCE,
    GRAPH_LEVELS,
    QUANTIZE_MODES,
    OptimizeResult,
    make_options,
    optimize_model,
)
from registry.prune import PRUNE_METHODS
from registry.settings import RegistrySettings

COMMANDS = ("optimize",)


def add_parser(commands: Any) -> None:
    """Add `optimize NAME VERSION` to the `model` subcommands."""
    parser = commands.add_parser("optimize", help="derive an optimized version, measured and gated against its parent")
    parser.add_argument("name")
    parser.add_argument("version", help="the parent version")
    parser.add_argument(
        "--graph",
        choices=list(GRAPH_LEVELS),
        default=DEFAULT_GRAPH,
        help="onnxruntime graph optimizations; 'all' may fit only this CPU (default %(default)s)",
    )
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default=DEFAULT_QUANTIZE, help="int8 weights")
    parser.add_argument("--calibration", type=Path, help="rows (csv, jsonl, npy) to calibrate static quantization")
    parser.add_argument(
        "--prune",
        choices=PRUNE_METHODS,
        default="none",
        help="zero the smallest weights (magnitude) or remove the weakest hidden units and channels (structured)",
    )
    parser.add_argument("--sparsity", type=float, help="with --prune: the share of weights or units to remove")
    parser.add_argument("--sample", type=Path, help="rows to measure on (default: seeded random rows)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per run (default %(default)s)")
    parser.add_argument(
        "--tolerance",
        type=float,
        help=f"max abs difference of float outputs (default {DEFAULT_TOLERANCE:g}, "
        f"{DEFAULT_QUANTIZED_TOLERANCE:g} when quantizing or pruning)",
    )
    parser.add_argument("--min-label-agreement", type=float, default=DEFAULT_MIN_LABEL_AGREEMENT)
    parser.add_argument("--version", dest="new_version", help="the new version (default: the next number)")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Optimize, print the measurements and the outcome; 1 if the candidate was refused."""
    options = make_options(
        args.graph,
        args.quantize,
        args.calibration,
        args.sample,
        args.batch,
        args.tolerance,
        args.min_label_agreement,
        args.prune,
        args.sparsity,
    )
    registry = Registry.at(settings.model_root)
    result = optimize_model(registry, args.name, args.version, options, new_version=args.new_version)
    print(format_report(args.name, args.version, result))
    return 0 if result.accepted else 1


def format_report(name: str, version: str, result: OptimizeResult) -> str:
    """The measurements as a small table, what pruning did, the effect, then the outcome."""
    m = result.measurements
    lines = [
        f"{'':<24}{'parent ' + version:>16}{'candidate ' + (result.version or ''):>16}",
        f"{'size (bytes)':<24}{m['parent_size']:>16}{m['size']:>16}",
        f"{'gzip size (bytes)':<24}{m['parent_gzip_size']:>16}{m['gzip_size']:>16}",
        f"{'latency (us/row)':<24}{m['parent_latency_us_per_row']:>16.3f}{m['latency_us_per_row']:>16.3f}",
        f"{'rows measured':<24}{m['rows']:>16}",
        f"{'output':<24}{'max abs diff':>16}{'mean abs diff':>16}{'label agreement':>18}",
    ]
    for output, found in m["outputs"].items():
        cells = [found.get(key) for key in ("max_abs_diff", "mean_abs_diff", "label_agreement")]
        lines.append(
            f"{output:<24}"
            + "".join(f"{'-' if c is None else f'{c:.3g}':>16}" for c in cells[:2])
            + f"{'-' if cells[2] is None else f'{cells[2]:.4f}':>18}"
        )
    lines += pruning_lines(m.get("prune"))
    lines.append(f"effect: {m['effect']['summary']}")
    verdict = f"registered {name} version {result.version} (parent {version})" if result.accepted else "refused"
    lines.append(f"{verdict}: {result.reason}")
    return "\n".join(lines)


def pruning_lines(record: dict[str, Any] | None) -> list[str]:
    """What pruning did: zeros per tensor (magnitude), or the units removed and the layers skipped (structured)."""
    if not record:
        return []
    if record["method"] == "magnitude":
        zeros = ", ".join(f"{name} {t['zeros']}/{t['size']}" for name, t in record["tensors"].items())
        return [f"pruned (magnitude {record['sparsity']:g}): zeros {zeros}"]
    before, after = record["parameters"]
    lines = [f"pruned (structured {record['sparsity']:g}): weights {before} -> {after}"]
    for layer in record["pruned"]:
        folded = "" if layer["folded"] else " (their constant output not folded into the next bias)"
        lines.append(
            f"  {layer['layer']}: {layer['removed']} of {layer['units']} units removed, "
            f"and their inputs in {layer['next']}{folded}"
        )
    lines += [f"  {skip['layer']}: skipped, {skip['reason']}" for skip in record["skipped"]]
    return lines
