"""`streamscore model optimize NAME VERSION`: derive a version, measure it against its parent, gate it.

`optimize_model` reads as its steps:

    1. transform   quantize (pre-process, then quantize_dynamic or quantize_static), then
                   onnxruntime's offline graph optimization at the chosen level
    2. measure     run parent and candidate with `artifacts.runtime.load_model` (ZipMap outputs become
                   [rows, classes] tensors) on the same sample; sizes, interleaved latency, and per
                   output the max/mean absolute difference and the label agreement (`registry/measure.py`)
    3. judge       pure: refuse if a float output moves more than the tolerance, or a label
                   agreement falls below the minimum
    4. conclude    append the attempt to the parent's history; register the candidate if accepted

Label agreement is measured on outputs that are not floats (int64 labels: the share of rows whose
values all agree) and on probability outputs (a ZipMap, or a [rows, classes] float output whose
rows sum to 1: the share of rows with the same argmax).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from artifacts.manifest import GZIP_FILE, MODEL_FILE, Manifest, check_name
from artifacts.registry import Registry
from artifacts.runtime import load_model
from artifacts.storage import check_key
from registry.measure import SAMPLE_SEED, Clock, Feeds, file_feeds, measure, sample_feeds
from registry.settings import RegistrySettings
from schemas.errors import ConfigError, ModelLoadError

COMMANDS = ("optimize",)

GRAPH_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # may add layouts specific to this CPU
}
QUANTIZE_MODES = ("none", "dynamic", "static")
DEFAULT_GRAPH = "extended"
DEFAULT_QUANTIZE = "none"
DEFAULT_BATCH = 64
DEFAULT_TOLERANCE = 1e-3  # graph rewrites only reorder float arithmetic
DEFAULT_QUANTIZED_TOLERANCE = 0.05  # int8 moves probabilities by ~0.02-0.045 on our MLPs; labels gate the rest
DEFAULT_MIN_LABEL_AGREEMENT = 0.99


@dataclass(frozen=True)
class OptimizeOptions:
    """What to do and how strictly to judge it (checked by `make_options`)."""

    graph: str = DEFAULT_GRAPH
    quantize: str = DEFAULT_QUANTIZE
    calibration: Path | None = None
    sample: Path | None = None
    batch: int = DEFAULT_BATCH
    tolerance: float = DEFAULT_TOLERANCE
    min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT

    def used(self) -> dict[str, Any]:
        """The settings as recorded in measurements (paths as text, the sample named)."""
        body = asdict(self)
        body["calibration"] = str(self.calibration) if self.calibration else None
        body["sample"] = str(self.sample) if self.sample else f"generated (seed {SAMPLE_SEED})"
        return body


@dataclass(frozen=True)
class OptimizeResult:
    """The outcome: accepted with the new version, or refused with the reason."""

    accepted: bool
    version: str | None
    measurements: dict[str, Any]
    reason: str


def make_options(
    graph: str = DEFAULT_GRAPH,
    quantize: str = DEFAULT_QUANTIZE,
    calibration: Path | str | None = None,
    sample: Path | str | None = None,
    batch: int = DEFAULT_BATCH,
    tolerance: float | None = None,
    min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT,
) -> OptimizeOptions:
    """Checked options; ConfigError saying what to change."""
    if graph not in GRAPH_LEVELS or quantize not in QUANTIZE_MODES:
        raise ConfigError(f"use --graph {'|'.join(GRAPH_LEVELS)} and --quantize {'|'.join(QUANTIZE_MODES)}")
    if graph == "none" and quantize == "none":
        raise ConfigError("nothing to do: --graph none with --quantize none would copy the parent")
    if (quantize == "static") != (calibration is not None):
        raise ConfigError("--quantize static needs --calibration FILE, and only static quantization uses one")
    if batch < 1 or not 0.0 <= min_label_agreement <= 1.0 or (tolerance is not None and tolerance < 0):
        raise ConfigError("--batch must be at least 1, --tolerance at least 0, --min-label-agreement in [0, 1]")
    default = DEFAULT_TOLERANCE if quantize == "none" else DEFAULT_QUANTIZED_TOLERANCE
    return OptimizeOptions(
        graph,
        quantize,
        Path(calibration) if calibration is not None else None,
        Path(sample) if sample is not None else None,
        batch,
        default if tolerance is None else tolerance,
        min_label_agreement,
    )


def optimize_model(
    registry: Registry,
    name: str,
    version: str,
    options: OptimizeOptions | None = None,
    *,
    new_version: str | None = None,
    clock: Clock = time.perf_counter_ns,
) -> OptimizeResult:
    """Derive a version of `name` `version`, measure it, and register it only if it passes the gate.

    `options` come checked from `make_options` (default: its defaults).
    """
    options = options or make_options()
    parent = registry.manifest(name, version)
    target = check_name("model version", new_version or registry.next_version(name))
    if registry.has(name, target):
        raise ConfigError(f"model {name} version {target} already exists; pick another with --version")
    with tempfile.TemporaryDirectory(prefix="streamscore-optimize-") as folder:
        workdir = Path(folder)
        parent_path = _write_parent(registry, parent, workdir)
        parent_model = load_model(parent_path, name, version)
        calibration_feeds = file_feeds(parent_model, options.calibration, options.batch) if options.calibration else []
        candidate_path = transform(parent_path, options, workdir, calibration_feeds)
        candidate_model = load_model(candidate_path, name, target)
        content = candidate_path.read_bytes()
        feeds = sample_feeds(parent_model, options.sample, options.batch)
        measured = measure(parent_model, candidate_model, feeds, clock)
    measurements = {"parent_size": parent.size, "size": len(content), **measured, "settings": options.used()}
    reason = judge(measurements["outputs"], options.tolerance, options.min_label_agreement)
    return _conclude(registry, parent, target, content, options, measurements, reason)


# ---------------------------------------------------------------------------------------------
# 1. transform


def transform(source: Path, options: OptimizeOptions, workdir: Path, calibration: Sequence[Feeds]) -> Path:
    """The candidate model file: quantized (if asked), then graph-optimized (if asked)."""
    current = source
    if options.quantize != "none":
        current = quantize_model(current, options.quantize, workdir, calibration)
    if options.graph != "none":
        current = optimize_graph(current, options.graph, workdir / "optimized.onnx")
    return current


def optimize_graph(source: Path, level: str, target: Path) -> Path:
    """Let onnxruntime apply its graph optimizations at `level` and save the result."""
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_LEVELS[level]
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3  # "all" warns that its layouts suit this CPU; --help says so
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises plain RuntimeError subclasses
        raise ModelLoadError(f"onnxruntime could not optimize the graph at level {level}: {error}") from error
    return target


def quantize_model(source: Path, mode: str, workdir: Path, calibration: Sequence[Feeds]) -> Path:
    """Pre-process (shape inference, basic fusions) and quantize weights to int8."""
    from onnxruntime import quantization as q  # heavy: imported only when quantizing
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, target = workdir / "prepared.onnx", workdir / "quantized.onnx"
    try:
        # symbolic shape inference needs sympy and is for dynamic transformer shapes; onnx's is enough here
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        if mode == "dynamic":
            q.quantize_dynamic(prepared, target, weight_type=q.QuantType.QInt8)
        else:  # U8S8 in QDQ format is what onnxruntime recommends on x86-64 CPUs
            q.quantize_static(
                prepared,
                target,
                _Calibration(calibration),
                quant_format=q.QuantFormat.QDQ,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,  # histogram methods fail on ZipMap outputs
            )
    except Exception as error:
        raise ModelLoadError(f"onnxruntime could not apply {mode} quantization: {error}") from error
    return target


class _Calibration:
    """onnxruntime's CalibrationDataReader over prepared batches (duck-typed: it only calls get_next)."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds: Iterator[Feeds] = iter(feeds)

    def get_next(self) -> Feeds | None:
        return next(self._feeds, None)


# ---------------------------------------------------------------------------------------------
# 3. judge, 4. conclude


def judge(outputs: dict[str, dict[str, Any]], tolerance: float, min_label_agreement: float) -> str | None:
    """Why the candidate is refused (every failing output, with its numbers), or None if it passes."""
    failures = []
    for name, found in outputs.items():
        if "shape" in found:
            failures.append(f"output {name!r}: shape {found['shape'][1]} where the parent gives {found['shape'][0]}")
        if found.get("max_abs_diff", 0.0) > tolerance:
            failures.append(f"output {name!r}: max abs diff {found['max_abs_diff']:.3g} > tolerance {tolerance:g}")
        if found.get("label_agreement", 1.0) < min_label_agreement:
            failures.append(
                f"output {name!r}: label agreement {found['label_agreement']:.4f} < minimum {min_label_agreement:g}"
            )
    return "; ".join(failures) or None


def _conclude(
    registry: Registry,
    parent: Manifest,
    target: str,
    content: bytes,
    options: OptimizeOptions,
    measurements: dict[str, Any],
    reason: str | None,
) -> OptimizeResult:
    at = _now()
    accepted = reason is None
    if reason is None:
        reason = (
            f"every float output within {options.tolerance:g}, label agreement at least {options.min_label_agreement:g}"
        )
        manifest = candidate_manifest(parent, target, content, options, measurements, at)
        registry.add(manifest, gzip.compress(content) if manifest.compression == "gzip" else content)
    result = f"registered {target}" if accepted else "refused"
    registry.record(
        parent.name, parent.version, {"event": "optimize", "at": at, "result": result, "reason": reason, **measurements}
    )
    return OptimizeResult(accepted, target if accepted else None, measurements, reason)


def candidate_manifest(
    parent: Manifest, version: str, content: bytes, options: OptimizeOptions, measurements: dict[str, Any], at: str
) -> Manifest:
    """The new version's manifest: the parent's signature and metadata, its own digest, size and opsets."""
    model = onnx.load_model_from_string(content)
    used = {node.domain for node in model.graph.node} | {""}
    default = "ai.onnx" if "ai.onnx" in parent.opset and "" not in parent.opset else ""
    return replace(
        parent,
        version=version,
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        artifact=GZIP_FILE if parent.compression == "gzip" else MODEL_FILE,
        opset={(o.domain or default): o.version for o in model.opset_import if o.domain in used},
        created_at=at,
        source=f"optimize {parent.name} {parent.version}: graph={options.graph}, quantize={options.quantize}",
        metadata=dict(parent.metadata),
        external_data=[],
        parent=parent.version,
        measurements=measurements,
        history=[],
        files={},  # Registry.add records the digests of the files it stores
    )


def _write_parent(registry: Registry, parent: Manifest, workdir: Path) -> Path:
    """The parent's model and external data files (each checked against its sha256), in `workdir`."""
    stored = registry.read_version(parent.name, parent.version)
    for relative, data in stored.external.items():
        extra = workdir.joinpath(*check_key(relative).parts)
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_bytes(data)
    path = workdir / "parent.onnx"
    path.write_bytes(stored.model)
    return path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")  # as `model push` writes created_at


# ---------------------------------------------------------------------------------------------
# CLI


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
    parser.add_argument("--sample", type=Path, help="rows to measure on (default: seeded random rows)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per run (default %(default)s)")
    parser.add_argument(
        "--tolerance",
        type=float,
        help=f"max abs difference of float outputs (default {DEFAULT_TOLERANCE:g}, "
        f"{DEFAULT_QUANTIZED_TOLERANCE:g} when quantizing)",
    )
    parser.add_argument("--min-label-agreement", type=float, default=DEFAULT_MIN_LABEL_AGREEMENT)
    parser.add_argument("--version", dest="new_version", help="the new version (default: the next number)")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """Optimize, print the measurements and the outcome; 1 if the candidate was refused."""
    options = make_options(
        args.graph, args.quantize, args.calibration, args.sample, args.batch, args.tolerance, args.min_label_agreement
    )
    registry = Registry.at(settings.model_root)
    result = optimize_model(registry, args.name, args.version, options, new_version=args.new_version)
    print(format_report(args.name, args.version, result))
    return 0 if result.accepted else 1


def format_report(name: str, version: str, result: OptimizeResult) -> str:
    """The measurements as a small table, then the outcome."""
    m = result.measurements
    lines = [
        f"{'':<24}{'parent ' + version:>16}{'candidate ' + (result.version or ''):>16}",
        f"{'size (bytes)':<24}{m['parent_size']:>16}{m['size']:>16}",
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
    verdict = f"registered {name} version {result.version} (parent {version})" if result.accepted else "refused"
    lines.append(f"{verdict}: {result.reason}")
    return "\n".join(lines)
