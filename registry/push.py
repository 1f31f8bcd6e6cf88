"""`streamscore model push FILE --name NAME`: check that a file is a runnable ONNX model, add it as a version.

Before anything is stored, a push refuses, saying what the file is and what to do:

1. files that are not ONNX, recognised by content, never by name: empty files, Python pickles
   (streamscore never loads them), zip archives (PyTorch .pt, Keras .keras, joblib), HDF5,
   NumPy .npy, safetensors, TFLite, gzip, plain text and JSON (`registry/sniff.py`);
2. bytes whose sha256 is not the one the user expects (`--sha256`): a flipped byte in the weights
   still parses, checks and loads, so only the digest catches it;
3. bytes protobuf cannot parse as a ModelProto, or that parse to no graph or no opset (protobuf
   accepts a lot of garbage);
4. external data that is not a file inside the model's folder (absolute, `..`, a symlink out);
5. what `onnx.checker` rejects, and what onnxruntime cannot load on the CPU.

The model is stored gzip-compressed when that saves at least 5 %, except with external data:
onnxruntime reads those files beside an uncompressed model, so both are copied as they are.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx
import onnxruntime as ort
import orjson

from artifacts.manifest import GZIP_FILE, MANIFEST_FILE, MODEL_FILE, Dim, Manifest, TensorSpec, check_name
from artifacts.registry import Registry
from artifacts.runtime import ORT_DATATYPES
from artifacts.storage import StorageError, check_key
from registry.settings import RegistrySettings
from registry.sniff import EXPORT_ADVICE, refuse_foreign
from schemas.errors import ConfigError, ModelLoadError

COMMANDS = ("push",)
MIN_GZIP_SAVING = 0.05  # compress only when it saves at least 5 %: decompressing costs at every load
MAX_REASON_CHARS = 500
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def push_model(
    registry: Registry,
    path: Path | str,
    *,
    name: str,
    version: str | None = None,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    expected_sha256: str | None = None,
    compress: bool = True,
) -> Manifest:
    """Check that `path` is a runnable ONNX model and add it to `registry` as a new, immutable version.

    Raises ModelLoadError when the file is not a model onnxruntime can run (or not the expected
    one), ConfigError for bad arguments, StorageError when the version exists.
    """
    path = Path(path)
    name = check_name("model name", name)
    version = check_name("model version", version or registry.next_version(name))
    refuse_existing(registry, name, version)
    metadata = checked_metadata(metadata)
    expected = checked_digest(expected_sha256)
    data = read_file(path)
    refuse_foreign(path, data)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelLoadError(
            f"{path} has sha256 {digest}, not the expected {expected}: it is not the file you meant to push "
            "(corrupted or replaced on the way); fetch it again from its source, or check the --sha256 you gave"
        )
    model = parse_model(path, data)
    extra = read_external_data(path, model)
    check_model(path, model, by_path=bool(extra))
    session = open_session(path, data, by_path=bool(extra))
    artifact, compression, stored = stored_form(data, compress=compress and not extra)
    manifest = Manifest(
        name=name,
        version=version,
        sha256=digest,
        size=len(data),
        artifact=artifact,
        compression=compression,
        opset={entry.domain or "ai.onnx": entry.version for entry in model.opset_import},
        inputs=[tensor_spec(arg) for arg in session.get_inputs()],
        outputs=[tensor_spec(arg) for arg in session.get_outputs()],
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        source=source or str(path.resolve()),
        metadata=metadata,
        external_data=sorted(extra),
    )
    return registry.add(manifest, stored, extra)  # the manifest as stored: with every file's sha256


def refuse_existing(registry: Registry, name: str, version: str) -> None:
    """StorageError if `name` already has `version` (checked again, atomically, when storing)."""
    if registry.has(name, version):
        existing = registry.manifest(name, version)
        raise StorageError(
            f"model {name} version {version} already exists (sha256 {existing.sha256[:12]}..., pushed "
            f"{existing.created_at}); versions are immutable: push as a new version "
            f"(without --version it becomes {registry.next_version(name)})"
        )


def checked_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `metadata`, or ConfigError if it cannot be stored as JSON (checked before anything is written)."""
    try:
        orjson.dumps(metadata)
    except TypeError as error:  # orjson.JSONEncodeError is a TypeError
        raise ConfigError(
            f"metadata cannot be stored as JSON: {error}; give strings, numbers, lists, objects"
        ) from None
    return dict(metadata or {})


def checked_digest(value: str | None) -> str | None:
    """The expected sha256 as 64 lowercase hex digits (a `sha256:` prefix is allowed), or ConfigError."""
    if value is None:
        return None
    digest = value.strip().lower().removeprefix("sha256:")
    if not SHA256_PATTERN.match(digest):
        raise ConfigError(f"--sha256 {value!r} is not a sha256 digest: give 64 hex digits (as sha256sum prints)")
    return digest


def read_file(path: Path) -> bytes:
    """The bytes of the file to push, or ConfigError saying why they cannot be read."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder: give the .onnx file inside it") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}; give the path of an .onnx file") from None


# -- parsing, external data, checking, loading ---------------------------------------------------


def parse_model(path: Path, data: bytes) -> onnx.ModelProto:
    """The ModelProto in `data`, or ModelLoadError: unparseable, or parsed into something without a graph."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as error:  # google.protobuf.message.DecodeError, and whatever else protobuf raises
        raise ModelLoadError(
            f"{path} is not an ONNX model: protobuf cannot parse it ({reason(error)}); the file is damaged "
            f"or truncated: {EXPORT_ADVICE}"
        ) from None
    missing = _missing_part(model)
    if missing:
        raise ModelLoadError(
            f"{path} is not an ONNX model: it parses as protobuf but has {missing}; the file is damaged or "
            f"is another protobuf: {EXPORT_ADVICE}"
        )
    return model


def _missing_part(model: onnx.ModelProto) -> str:
    if not model.HasField("graph"):
        return "no graph"
    if not (model.graph.node or model.graph.output):
        return "a graph without nodes or outputs"
    return "" if model.opset_import else "no opset_import"


def read_external_data(path: Path, model: onnx.ModelProto) -> dict[str, bytes]:
    """The external-data files of `model` by relative location; ModelLoadError for any outside its folder."""
    folder = path.absolute().parent
    files: dict[str, bytes] = {}
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
            relative = external_file(path, folder, tensor.name, location)
            if relative not in files:
                files[relative] = (folder / relative).read_bytes()
    return files


def external_file(path: Path, folder: Path, tensor: str, location: str) -> str:
    """`location` as a relative key of a file inside `folder`, or ModelLoadError saying where it leads."""
    problem = location_problem(folder, location)
    if problem:
        raise ModelLoadError(
            f"{path}: tensor {tensor!r} keeps its data in {location!r}, which {problem}; external data must be "
            f"a file inside the model's folder {folder}: save the model again with a relative location there"
        )
    return str(PurePosixPath(location))


def location_problem(folder: Path, location: str) -> str:
    """Why `location` is not a file inside `folder` ("" when it is)."""
    if not location:
        return "is empty"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return "leaves the model's folder through '..'"
    try:
        key = str(check_key(str(PurePosixPath(location))))
    except StorageError:
        return "is not a plain relative path"
    if key in (MODEL_FILE, GZIP_FILE, MANIFEST_FILE):
        return "is the name of a file the registry keeps beside it"
    target = (folder / key).resolve()
    if not target.is_relative_to(folder.resolve()):
        return f"is a symlink that leads out of the folder (to {target})"
    return "" if target.is_file() else "does not exist"


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of `model` that may hold data: initializers and attributes, in subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for training in model.training_info:
        yield from _graph_tensors(training.initialization)
        yield from _graph_tensors(training.algorithm)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for tensor in [*sparse, *attribute.sparse_tensors]:
            yield from (tensor.values, tensor.indices)
        graphs = [attribute.g] if attribute.HasField("g") else []
        for graph in [*graphs, *attribute.graphs]:
            yield from _graph_tensors(graph)


def check_model(path: Path, model: onnx.ModelProto, *, by_path: bool) -> None:
    """ModelLoadError with onnx.checker's reason; by path for external data (the checker reads the files)."""
    try:
        onnx.checker.check_model(str(path) if by_path else model)
    except Exception as error:  # onnx.checker.ValidationError, and OSError/ValueError on external files
        raise ModelLoadError(
            f"{path} fails onnx.checker: {reason(error)}; fix or re-run the export (a supported opset, "
            "declared inputs and outputs) and push again"
        ) from None


def open_session(path: Path, data: bytes, *, by_path: bool) -> Any:
    """An onnxruntime CPU session of the model (from the checked bytes unless external data needs the path)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the reason goes into our error, not onto stderr
    try:
        return ort.InferenceSession(str(path) if by_path else data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own RuntimeError subclasses
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} cannot load {path}: {reason(error)}; export it with operators and an "
            "opset this onnxruntime supports, or upgrade onnxruntime"
        ) from None


def tensor_spec(arg: Any) -> TensorSpec:
    """An onnxruntime input or output as a TensorSpec: V2 datatype and dims, or the type and no shape."""
    kind: str = arg.type
    if not kind.startswith("tensor("):  # a sequence, a map, an optional: no tensor shape
        return TensorSpec(arg.name, kind, None)
    return TensorSpec(arg.name, ORT_DATATYPES.get(kind, kind), [_dim(dim) for dim in arg.shape])


def _dim(dim: object) -> Dim:
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    return dim if isinstance(dim, str) and dim else None


def stored_form(data: bytes, *, compress: bool) -> tuple[str, str, bytes]:
    """(artifact file, compression, stored bytes): gzip when allowed and it saves MIN_GZIP_SAVING."""
    if compress:
        packed = gzip.compress(data, mtime=0)  # mtime 0: the same model gives the same artifact
        if len(packed) <= len(data) * (1 - MIN_GZIP_SAVING):
            return GZIP_FILE, "gzip", packed
    return MODEL_FILE, "none", data


def reason(error: BaseException) -> str:
    """An exception's message on one line, cut to MAX_REASON_CHARS."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


# -- the command ---------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """Add `push` to the `model` subcommands."""
    parser = commands.add_parser(
        "push",
        help="add a version: check that FILE is a runnable ONNX model and store it",
        description="Check that FILE is an ONNX model onnxruntime can run (never a pickle), and store it as "
        "a new, immutable version with its manifest.",
    )
    parser.add_argument("file", metavar="FILE", help="the .onnx file (its external-data files are copied too)")
    parser.add_argument("--name", required=True, help="the model's name")
    parser.add_argument("--version", help="default: one more than the highest numeric version")
    parser.add_argument("--source", help="where the model came from (default: FILE's absolute path)")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry, repeatable; VALUE is JSON when it parses (0.93, true), else text",
    )
    parser.add_argument("--metadata", metavar="FILE.json", help="metadata from a JSON object (--meta wins)")
    parser.add_argument("--sha256", metavar="HEX", help="the digest FILE must have (e.g. from the training run)")
    parser.add_argument("--no-compress", action="store_true", help="store the model as it is, never gzipped")


def run(args: argparse.Namespace, settings: RegistrySettings) -> int:
    """`streamscore model push`: push the file, print the manifest's summary."""
    registry = Registry.at(settings.model_root)
    metadata = {**read_metadata_file(args.metadata), **parse_meta(args.meta)}
    manifest = push_model(
        registry,
        Path(args.file),
        name=args.name,
        version=args.version,
        source=args.source,
        metadata=metadata,
        expected_sha256=args.sha256,
        compress=not args.no_compress,
    )
    stored = len(registry.storage.read(f"{manifest.name}/{manifest.version}/{manifest.artifact}"))
    print(summary(manifest, stored))
    return 0


def parse_meta(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items as metadata: VALUE as JSON when it parses (0.93, true, [1, 2]), else as text."""
    metadata: dict[str, Any] = {}
    for item in items:
        key, separator, raw = item.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--meta {item!r} is not KEY=VALUE: write e.g. --meta accuracy=0.93")
        try:
            metadata[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            metadata[key.strip()] = raw
    return metadata


def read_metadata_file(path: str | None) -> dict[str, Any]:
    """The JSON object in `path` (nothing when None), or ConfigError."""
    if path is None:
        return {}
    try:
        body = orjson.loads(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read --metadata {path}: {error.strerror or error}") from None
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"--metadata {path} is not valid JSON ({error}): give a JSON object") from None
    if not isinstance(body, dict):
        raise ConfigError(f'--metadata {path} holds a JSON {type(body).__name__}: give an object, e.g. {{"auc": 0.9}}')
    return body


def summary(manifest: Manifest, stored: int) -> str:
    """A few lines saying what was pushed."""
    opset = ", ".join(f"{domain} {version}" for domain, version in sorted(manifest.opset.items()))
    lines = [
        f"pushed {manifest.name} version {manifest.version}",
        f"  sha256   {manifest.sha256}",
        f"  size     {manifest.size} bytes, stored {stored} bytes as {manifest.artifact} ({manifest.compression})",
        f"  opset    {opset}",
        *(f"  input    {spec.name} {spec.datatype} {_shape(spec.shape)}".rstrip() for spec in manifest.inputs),
        *(f"  output   {spec.name} {spec.datatype} {_shape(spec.shape)}".rstrip() for spec in manifest.outputs),
        *(f"  external {relative}" for relative in manifest.external_data),
    ]
    return "\n".join(lines)


def _shape(shape: list[Dim] | None) -> str:
    return "" if shape is None else "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"
