"""ONNX models: load one version with onnxruntime, describe its signature, run it.

A model directory holds `<root>/<name>/<version>/model.onnx`. `ModelStore` finds versions
(the highest by default, or a pinned one), loads them once and keeps them; `LoadedModel`
runs one batch and turns whatever onnxruntime returns into named tensors.

Outputs that are not tensors: a sequence of maps (what skl2onnx's ZipMap gives for
classifier probabilities, `[{label: p, ...}, ...]`) becomes a `[rows, labels]` tensor whose
columns follow the map's label order, with the labels in the output's
`parameters.labels`; a sequence of equally shaped tensors is stacked along a new first axis.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from schemas.codec import Tensor
from schemas.errors import InferenceError, ModelLoadError, ModelNotFoundError

MODEL_FILE = "model.onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

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


class Session(Protocol):
    """The part of onnxruntime.InferenceSession the worker uses (a seam for tests)."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]: ...


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
        self.accepted: set[Hashable] = set()  # request layouts already checked against the signature

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes (its inputs' first dimension), or None if free."""
        firsts = [spec.shape[0] if spec.shape else 1 for spec in self.inputs]
        fixed = [first for first in firsts if first is not None]
        return min(fixed) if fixed and len(fixed) == len(firsts) else None

    def run(self, feeds: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, Tensor]:
        """Score one batch; raise InferenceError with onnxruntime's reason."""
        try:
            values = self.session.run(None, dict(feeds))
        except Exception as error:  # onnxruntime raises plain RuntimeError subclasses
            raise InferenceError(f"model {self.name} version {self.version} raised: {error}") from error
        return {spec.name: _as_tensor(spec, value) for spec, value in zip(self.outputs, values, strict=True)}


def _as_tensor(spec: OutputSpec, value: Any) -> Tensor:
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


def load_model(path: Path, name: str, version: str, *, intra_op_threads: int = 1) -> LoadedModel:
    """Load `path` with onnxruntime on the CPU; raise ModelLoadError saying why not."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"cannot read model {name} version {version} at {path}: {error}") from error
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures reach the dead letter; keep stderr for ours
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelLoadError(f"onnxruntime cannot load model {name} version {version} from {path}: {error}") from error
    inputs = tuple(_input_spec(arg) for arg in session.get_inputs())
    outputs = tuple(_output_spec(arg, name) for arg in session.get_outputs())
    return LoadedModel(name, version, hashlib.sha256(content).hexdigest(), session, inputs, outputs)


def _input_spec(arg: Any) -> InputSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"input {arg.name!r} has type {arg.type}; only tensors can be fed")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return InputSpec(arg.name, datatype, shape)


def _output_spec(arg: Any, model: str) -> OutputSpec:
    kind_type: str = arg.type
    if kind_type in ORT_DATATYPES:
        return OutputSpec(arg.name, "tensor", ORT_DATATYPES[kind_type])
    if kind_type.startswith("seq(map("):
        return OutputSpec(arg.name, "seq_map", "FP32")
    inner = kind_type.removeprefix("seq(").removesuffix(")")
    if kind_type.startswith("seq(") and inner in ORT_DATATYPES:
        return OutputSpec(arg.name, "seq_tensor", ORT_DATATYPES[inner])
    raise ModelLoadError(f"model {model}: output {arg.name!r} of type {kind_type} cannot be served")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions: numeric parts as numbers ("10" > "9", "1.10" > "1.9")."""
    parts = re.split(r"[._-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


class ModelStore:
    """The models under a root directory, loaded on first use and kept."""

    def __init__(
        self, root: Path, *, default_name: str = "", pinned_version: str = "", intra_op_threads: int = 1
    ) -> None:
        self.root = root
        self.pinned_version = pinned_version
        self.intra_op_threads = intra_op_threads
        self.default_name = default_name or self._only_model()
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._resolved: dict[tuple[str | None, str | None], tuple[str, str]] = {}

    def _only_model(self) -> str:
        names = sorted(p.name for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []
        if len(names) != 1:
            raise ModelLoadError(
                f"no default model: {self.root} holds {len(names)} model folders ({', '.join(names)});"
                " set STREAMSCORE_MODEL_NAME"
            )
        return names[0]

    def versions(self, name: str) -> list[str]:
        """The versions of `name` on disk, oldest first."""
        folder = self.root / name
        if not NAME_PATTERN.match(name) or not folder.is_dir():
            return []
        found = [p.parent.name for p in folder.glob(f"*/{MODEL_FILE}") if NAME_PATTERN.match(p.parent.name)]
        return sorted(found, key=version_key)

    def resolve(self, name: str | None, version: str | None) -> tuple[str, str]:
        """Which (name, version) a request for `name`/`version` gets; ModelNotFoundError if none.

        Answers are kept: the versions served change only when the worker is told (a restart
        today; the control topic of the model lifecycle later), not when a folder appears.
        """
        found = self._resolved.get((name, version))
        if found is None:
            found = self._resolved[(name, version)] = self._resolve(name, version)
        return found

    def _resolve(self, name: str | None, version: str | None) -> tuple[str, str]:
        name = name or self.default_name
        if version and not NAME_PATTERN.match(version):
            raise ModelNotFoundError(f"model version {version!r} is not a valid version name")
        if not version and name == self.default_name and self.pinned_version:
            version = self.pinned_version
        if version and (name, version) in self._loaded:
            return name, version
        available = self.versions(name)
        if not available:
            raise ModelNotFoundError(f"unknown model {name!r}: no {name}/<version>/{MODEL_FILE} under {self.root}")
        if version and version not in available:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; available: {', '.join(available)}")
        return name, version or available[-1]

    def cached(self, name: str, version: str) -> LoadedModel | None:
        """The loaded model, if it is loaded."""
        return self._loaded.get((name, version))

    def load(self, name: str, version: str) -> LoadedModel:
        """Load (blocking: call it from a thread) and keep one version."""
        model = self._loaded.get((name, version))
        if model is None:
            path = self.root / name / version / MODEL_FILE
            model = load_model(path, name, version, intra_op_threads=self.intra_op_threads)
            self._loaded[(name, version)] = model
        return model
