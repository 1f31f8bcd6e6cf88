"""`streamscore model optimize NAME VERSION`: derive a version, measure it against its parent, gate it.

`optimize_model` reads as its steps:

    1. transform   prune (magnitude or structured, `registry/prune.py`), then quantize (pre-process,
                   then quantize_dynamic or quantize_static), then onnxruntime's offline graph
                   optimization at the chosen level
    2. measure     run parent and candidate with `artifacts.runtime.load_model` (ZipMap outputs become
                   [rows, classes] tensors) on the same sample; sizes, interleaved latency, and per
                   output the max/mean absolute difference and the label agreement (`registry/measure.py`);
                   the size of both as they are and gzip-compressed
    3. judge       pure: refuse if a float output moves more than the tolerance, or a label
                   agreement falls below the minimum; say whether the candidate is smaller and
                   faster (`effect`): a version that is neither says so, in its record and output
    4. conclude    append the attempt to the parent's history; register the candidate if accepted,
                   gzip-compressed when its parent is or when that saves 5 % (as `model push` decides)

Label agreement is measured on outputs that are not floats (int64 labels: the share of rows whose
values all agree) and on probability outputs (a ZipMap, or a [rows, classes] float output whose
rows sum to 1: the share of rows with the same argmax).
"""

from __future__ import annotations

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
from registry.prune import PRUNE_METHODS, prune
from registry.push import stored_form
from schemas.errors import ConfigError, ModelLoadError

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
FASTER = 0.95  # a candidate is faster when it takes less than 95 % of the parent's time per row (timing noise)


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
    prune: str = "none"
    sparsity: float = 0.0

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
    prune: str = "none",
    sparsity: float | None = None,
) -> OptimizeOptions:
    """Checked options; ConfigError saying what to change."""
    if graph not in GRAPH_LEVELS or quantize not in QUANTIZE_MODES or prune not in PRUNE_METHODS:
        raise ConfigError(
            f"use --graph {'|'.join(GRAPH_LEVELS)}, --quantize {'|'.join(QUANTIZE_MODES)} "
            f"and --prune {'|'.join(PRUNE_METHODS)}"
        )
    if graph == "none" and quantize == "none" and prune == "none":
        raise ConfigError("nothing to do: --graph none with --quantize none and no --prune would copy the parent")
    if (prune != "none") != (sparsity is not None) or (sparsity is not None and not 0 < sparsity < 1):
        raise ConfigError("--prune needs --sparsity S with 0 < S < 1 (the share of weights or units to remove)")
    if (quantize == "static") != (calibration is not None):
        raise ConfigError("--quantize static needs --calibration FILE, and only static quantization uses one")
    if batch < 1 or not 0.0 <= min_label_agreement <= 1.0 or (tolerance is not None and tolerance < 0):
        raise ConfigError("--batch must be at least 1, --tolerance at least 0, --min-label-agreement in [0, 1]")
    default = DEFAULT_TOLERANCE if quantize == prune == "none" else DEFAULT_QUANTIZED_TOLERANCE
    return OptimizeOptions(
        graph,
        quantize,
        Path(calibration) if calibration is not None else None,
        Path(sample) if sample is not None else None,
        batch,
        default if tolerance is None else tolerance,
        min_label_agreement,
        prune,
        sparsity or 0.0,
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
        pruned_path, pruned = prune_file(parent_path, options, workdir / "pruned.onnx")
        candidate_path = transform(pruned_path, options, workdir, calibration_feeds)
        candidate_model = load_model(candidate_path, name, target)
        content = candidate_path.read_bytes()
        feeds = sample_feeds(parent_model, options.sample, options.batch)
        measured = {**sizes(parent_path.read_bytes(), content), **measure(parent_model, candidate_model, feeds, clock)}
    measurements = {
        **measured,
        **({"prune": pruned} if pruned else {}),
        "settings": options.used(),
    }
    measurements["effect"] = effect(measurements)
    reason = judge(measurements["outputs"], options.tolerance, options.min_label_agreement)
    return _conclude(registry, parent, target, content, options, measurements, reason)


def prune_file(source: Path, options: OptimizeOptions, target: Path) -> tuple[Path, dict[str, Any] | None]:
    """The pruned model file and the record of what was pruned (`source` and None when not pruning)."""
    if options.prune == "none":
        return source, None
    model, record = prune(onnx.load_model(str(source)), options.prune, options.sparsity)
    onnx.save_model(model, str(target))
    return target, record


def sizes(parent: bytes, candidate: bytes) -> dict[str, int]:
    """Bytes of both models as they are and gzip-compressed (what a registry that compresses would store)."""
    return {
        "parent_size": len(parent),
        "size": len(candidate),
        "parent_gzip_size": len(gzip.compress(parent, mtime=0)),
        "gzip_size": len(gzip.compress(candidate, mtime=0)),
    }


def effect(m: dict[str, Any]) -> dict[str, Any]:
    """Pure: whether the candidate is smaller (as it is, or compressed) and faster than its parent, in words."""
    smaller = m["size"] < m["parent_size"] or m["gzip_size"] < m["parent_gzip_size"]
    before, after = m["parent_latency_us_per_row"], m["latency_us_per_row"]
    faster = after < FASTER * before
    speed = "faster" if faster else ("slower" if after * FASTER > before else "no faster (within 5 %)")
    size = f"size {_change(m['parent_size'], m['size'])}, gzip {_change(m['parent_gzip_size'], m['gzip_size'])}"
    verdict = "smaller" if smaller else "not smaller"
    return {
        "smaller": smaller,
        "faster": faster,
        "summary": f"{verdict} ({size}); {speed} ({before:.3f} -> {after:.3f} us/row)",
    }


def _change(before: int, after: int) -> str:
    return f"{before} -> {after} bytes ({(after - before) / max(before, 1):+.0%})"


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
        artifact, compression, stored = stored_form(content, compress=True)
        if parent.compression == "gzip" and compression == "none":
            artifact, compression, stored = GZIP_FILE, "gzip", gzip.compress(content, mtime=0)
        manifest = candidate_manifest(parent, target, content, options, measurements, at)
        registry.add(replace(manifest, artifact=artifact, compression=compression), stored)
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
        artifact=GZIP_FILE if parent.compression == "gzip" else MODEL_FILE,  # `_conclude` decides
        opset={(o.domain or default): o.version for o in model.opset_import if o.domain in used},
        created_at=at,
        source=f"optimize {parent.name} {parent.version}: {describe(options)}",
        metadata=dict(parent.metadata),
        external_data=[],
        parent=parent.version,
        measurements=measurements,
        history=[],
        files={},  # Registry.add records the digests of the files it stores
    )


def describe(options: OptimizeOptions) -> str:
    """What was done, in one line: `graph=extended, quantize=dynamic[, prune=structured 0.5]`."""
    pruned = f", prune={options.prune} {options.sparsity:g}" if options.prune != "none" else ""
    return f"graph={options.graph}, quantize={options.quantize}{pruned}"


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
