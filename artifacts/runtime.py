"""ONNX models: load one version with onnxruntime, describe its signature, run it.

`load_model` loads and warms up one version, `load_verified` one whose bytes were checked
(exactly those bytes); `LoadedModel` runs one batch and turns whatever onnxruntime returns into
named tensors. Which versions exist and serve is `worker.store`'s.

Outputs that are not tensors: a sequence of maps (what skl2onnx's ZipMap gives for
classifier probabilities, `[{label: p, ...}, ...]`) becomes a `[rows, labels]` tensor whose
columns follow the map's label order, with the labels in the output's
`parameters.labels`; a sequence of equally shaped tensors is stacked along a new first axis.
A ZipMap at the graph's end is not run at all: its input is that tensor already
(`artifacts.zipmap`), read without a dict per row.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from artifacts.manifest import MODEL_FILE
from artifacts.storage import check_key
from artifacts.watchdog import watched
from artifacts.zipmap import unzipped
from schemas.errors import ConfigError, InferenceError, InferenceTimeout, ModelLoadError
from schemas.tensors import DATATYPES, Tensor

#: onnxruntime's element type names -> V2 datatypes
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, V2 datatype, shape with None for a free dimension."""

    name: str
    datatype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class OutputSpec:
    """One model output and how its values come back (tensor, sequence of maps or tensors)."""

    name: str
    kind: str  # "tensor", "seq_map", "seq_tensor"
    datatype: str
    labels: tuple[Any, ...] | None = None  # a ZipMap's labels, served from its input tensor (`artifacts.zipmap`)


class Session(Protocol):
    """The part of onnxruntime.InferenceSession the worker uses (a seam for tests)."""

    def run(
        self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], run_options: Any = None
    ) -> list[Any]: ...


CPU = ("CPUExecutionProvider",)


class LoadedModel:
    """One version of one model, ready to run batches."""

    def __init__(
        self,
        name: str,
        version: str,
        sha256: str,
        session: Session,
        inputs: tuple[InputSpec, ...],
        outputs: tuple[OutputSpec, ...],
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.input_by_name = {spec.name: spec for spec in inputs}
        self.output_names = tuple(spec.name for spec in outputs)
        self.accepted: dict[Hashable, Hashable] = {}  # request layouts checked against the signature -> batch key

        self.fixed_batch = _fixed_batch(inputs)  # read for every record: computed once
        self.timeout_s = 0.0  # a run past it is stopped (InferenceTimeout); 0: no limit
        self.max_batch_rows: int | None = None  # rows per batch the worker gives it; None: the batcher's own
        self.providers: tuple[str, ...] = CPU  # what onnxruntime runs it with

    def run(self, feeds: Mapping[str, np.ndarray[Any, Any]], timeout_s: float | None = None) -> dict[str, Tensor]:
        """Score one batch; raise InferenceError with onnxruntime's reason, InferenceTimeout past `timeout_s`
        (default: the model's `timeout_s`; 0: no limit)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            if timeout_s > 0:
                with watched(timeout_s) as options:
                    values = self.session.run(None, dict(feeds), options)
            else:
                values = self.session.run(None, dict(feeds))
        except Exception as error:  # onnxruntime raises plain RuntimeError subclasses
            if timeout_s > 0 and "terminate" in str(error).lower():
                raise InferenceTimeout(
                    f"model {self.name} version {self.version} ran longer than {timeout_s:g} s "
                    "(setting STREAMSCORE_INFERENCE_TIMEOUT_S) and was stopped"
                ) from error
            raise InferenceError(f"model {self.name} version {self.version} raised: {error}") from error
        return {spec.name: _as_tensor(spec, value) for spec, value in zip(self.outputs, values, strict=True)}


def _fixed_batch(inputs: tuple[InputSpec, ...]) -> int | None:
    """The batch size a model fixes (its inputs' first dimension), or None if free."""
    firsts = [spec.shape[0] if spec.shape else 1 for spec in inputs]
    fixed = [first for first in firsts if first is not None]
    return min(fixed) if fixed and len(fixed) == len(firsts) else None


def _as_tensor(spec: OutputSpec, value: Any) -> Tensor:
    if spec.labels is not None:
        return Tensor(spec.name, "FP32", np.asarray(value), {"labels": list(spec.labels)})
    if spec.kind == "seq_map":
        labels = list(value[0].keys()) if value else []
        array = np.array([[row[label] for label in labels] for row in value], dtype=np.float32)
        labels_json = [label.item() if isinstance(label, np.generic) else label for label in labels]
        return Tensor(spec.name, "FP32", array.reshape(len(value), len(labels)), {"labels": labels_json})
    if spec.kind == "seq_tensor":
        try:
            array = np.stack([np.asarray(v) for v in value])
        except ValueError as error:
            raise InferenceError(f"output {spec.name!r}: tensors of different shapes: {error}") from error
        return Tensor(spec.name, spec.datatype, array)
    array = np.asarray(value)
    return Tensor(spec.name, spec.datatype, array)


PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}


def execution_providers(names: Sequence[str], available: Sequence[str] | None = None) -> tuple[str, ...]:
    """onnxruntime's names for `names` (its own, or `cpu`, `cuda`, `tensorrt`, ...), in order of
    preference; ConfigError naming what this onnxruntime has when one is not installed."""
    have = list(available if available is not None else ort.get_available_providers())
    chosen = tuple(PROVIDER_ALIASES.get(name.lower(), name) for name in names) or CPU
    missing = [name for name in chosen if name not in have]
    if missing:
        raise ConfigError(
            f"execution provider {', '.join(missing)} is not in this onnxruntime {ort.__version__}, which has "
            f"{', '.join(have)}: install the onnxruntime build that has it (onnxruntime-gpu for CUDA and "
            "TensorRT, onnxruntime-openvino, ...) or set STREAMSCORE_EXECUTION_PROVIDERS to what is installed"
        )
    return chosen


def load_model(
    source: Path | bytes,
    name: str,
    version: str,
    *,
    sha256: str | None = None,
    intra_op_threads: int = 1,
    providers: Sequence[str] = CPU,
) -> LoadedModel:
    """Load a model (a file, or its bytes) with onnxruntime's `providers` and warm it up.

    Raises ModelLoadError saying why the model cannot be served: unreadable, refused by
    onnxruntime, an output type that cannot be served, or a warm-up inference that fails.
    """
    where = str(source) if isinstance(source, Path) else "from bytes"
    digest = sha256 or _sha256(source, name, version)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures reach the dead letter; keep stderr for ours
    graph, labels = unzipped(source)
    try:
        session = ort.InferenceSession(
            str(graph) if isinstance(graph, Path) else graph, options, providers=list(providers)
        )
    except Exception as error:
        raise ModelLoadError(f"onnxruntime cannot load model {name} version {version} ({where}): {error}") from error
    inputs = tuple(_input_spec(arg, name, version) for arg in session.get_inputs())
    outputs = tuple(_output_spec(arg, name, version, labels.get(arg.name)) for arg in session.get_outputs())
    model = LoadedModel(name, version, digest, session, inputs, outputs)
    model.providers = tuple(session.get_providers())
    warm_up(model)
    return model


def _sha256(source: Path | bytes, name: str, version: str) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    try:
        return hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError as error:
        raise ModelLoadError(f"cannot read model {name} version {version} at {source}: {error}") from error


def load_verified(
    model: bytes,
    external: Mapping[str, bytes],
    name: str,
    version: str,
    *,
    sha256: str,
    intra_op_threads: int = 1,
    providers: Sequence[str] = CPU,
) -> LoadedModel:
    """Load a model and its external-data files (by relative path) from exactly these bytes, already verified.

    onnxruntime reads external data only from files beside a model file. Its in-memory
    alternative (`add_external_initializers_from_files_in_memory`) misses initializers inside
    subgraphs (If, Loop bodies), which `model push` accepts; so the verified bytes are written
    to a private folder (mode 0700, this process's alone), loaded from there as push loaded
    them, and the folder is removed once the session holds the weights.
    """
    if not external:
        return load_model(model, name, version, sha256=sha256, intra_op_threads=intra_op_threads, providers=providers)
    folder = Path(tempfile.mkdtemp(prefix="streamscore-load-"))  # created 0700
    try:
        for relative, data in {**external, MODEL_FILE: model}.items():
            path = folder.joinpath(*check_key(relative).parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        path = folder / MODEL_FILE
        return load_model(path, name, version, sha256=sha256, intra_op_threads=intra_op_threads, providers=providers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warm_up(model: LoadedModel) -> None:
    """Run one inference on a sample built from the signature (free dimensions = 1)."""
    feeds = {
        spec.name: np.zeros([1 if d is None else d for d in spec.shape], dtype=DATATYPES[spec.datatype])
        if spec.datatype != "BYTES"
        else np.full([1 if d is None else d for d in spec.shape], "", dtype=object)
        for spec in model.inputs
    }
    try:
        model.run(feeds)
    except InferenceError as error:
        raise ModelLoadError(
            f"model {model.name} version {model.version} fails its warm-up inference: {error}"
        ) from error


def _input_spec(arg: Any, model: str, version: str) -> InputSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(
            f"model {model} version {version}: input {arg.name!r} has type {arg.type}; only tensors can be fed"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return InputSpec(arg.name, datatype, shape)


def _output_spec(arg: Any, model: str, version: str, labels: list[Any] | None = None) -> OutputSpec:
    kind_type: str = arg.type
    if labels is not None:  # a ZipMap's, served from its input (`artifacts.zipmap`)
        return OutputSpec(arg.name, "seq_map", "FP32", tuple(labels))
    if kind_type in ORT_DATATYPES:
        return OutputSpec(arg.name, "tensor", ORT_DATATYPES[kind_type])
    if kind_type.startswith("seq(map("):
        return OutputSpec(arg.name, "seq_map", "FP32")
    inner = kind_type.removeprefix("seq(").removesuffix(")")
    if kind_type.startswith("seq(") and inner in ORT_DATATYPES:
        return OutputSpec(arg.name, "seq_tensor", ORT_DATATYPES[inner])
    raise ModelLoadError(f"model {model} version {version}: output {arg.name!r} of type {kind_type} cannot be served")
