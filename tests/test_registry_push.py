"""`streamscore model push`: only runnable ONNX models become versions, with a manifest that describes them."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tempfile
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from artifacts.manifest import TensorSpec
from artifacts.registry import Registry
from artifacts.storage import StorageError
from demo.models import install_model, make_mlp, make_sklearn_classifier
from registry.push import parse_meta, push_model
from registry.sniff import sniff_foreign
from schemas.errors import ConfigError, ModelLoadError
from streamscore.cli import main
from tests.factories import make_external_data_model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(tmp_path: Path) -> Registry:
    return Registry.at(tmp_path / "registry")


def _relocate_external_data(path: Path, location: str) -> None:
    """Point every external tensor of the model at `path` to `location` (the file is not moved)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


# -- accepted models and their manifests ---------------------------------------------------------


def test_mlp_manifest_describes_the_model(tmp_path: Path) -> None:
    """An MLP gets version 1 with its digest, size, opset, FP32 tensors and symbolic batch dimension."""
    path = make_mlp(tmp_path / "mlp.onnx", features=8, classes=3)

    manifest = push_model(_registry(tmp_path), path, name="mlp")

    assert ("mlp", "1") == (manifest.name, manifest.version)
    assert _sha256(path) == manifest.sha256
    assert path.stat().st_size == manifest.size
    assert {"ai.onnx": 17} == manifest.opset
    assert [TensorSpec("x", "FP32", ["N", 8])] == manifest.inputs
    assert [TensorSpec("probabilities", "FP32", ["N", 3])] == manifest.outputs
    assert str(path.resolve()) == manifest.source
    assert timedelta(0) == datetime.fromisoformat(manifest.created_at).utcoffset()
    assert [] == manifest.external_data


def test_small_mlp_is_stored_uncompressed(tmp_path: Path) -> None:
    """Random float weights gzip by less than 5 %: the model is stored as model.onnx, uncompressed."""
    path = make_mlp(tmp_path / "mlp.onnx")
    registry = _registry(tmp_path)

    manifest = push_model(registry, path, name="mlp")

    assert ("model.onnx", "none") == (manifest.artifact, manifest.compression)
    assert path.read_bytes() == registry.storage.read("mlp/1/model.onnx")


def test_sklearn_classifier_manifest_keeps_the_zipmap_type(tmp_path: Path) -> None:
    """skl2onnx's classifier: free dims are None, the ZipMap output keeps its ONNX type and has no shape."""
    path = make_sklearn_classifier(tmp_path / "skl.onnx")

    manifest = push_model(_registry(tmp_path), path, name="iris")

    assert [TensorSpec("x", "FP32", [None, 4])] == manifest.inputs
    expected_outputs = [
        TensorSpec("output_label", "INT64", [None]),
        TensorSpec("output_probability", "seq(map(int64,tensor(float)))", None),
    ]
    assert expected_outputs == manifest.outputs
    assert {"ai.onnx", "ai.onnx.ml"} == set(manifest.opset)  # skl2onnx picks the lowest ai.onnx.ml it needs
    assert 17 == manifest.opset["ai.onnx"]
    assert _sha256(path) == manifest.sha256


def test_compressible_model_round_trips_through_gzip(tmp_path: Path) -> None:
    """A model that gzips by 5 % or more is stored as model.onnx.gz; read_model gives back the exact bytes."""
    path = make_sklearn_classifier(tmp_path / "skl.onnx")
    registry = _registry(tmp_path)

    manifest = push_model(registry, path, name="iris")

    assert ("model.onnx.gz", "gzip") == (manifest.artifact, manifest.compression)
    assert path.read_bytes() == gzip.decompress(registry.storage.read("iris/1/model.onnx.gz"))
    assert path.read_bytes() == registry.read_model("iris", "1")


def test_no_compress_stores_the_model_as_it_is(tmp_path: Path) -> None:
    """With compress=False even a compressible model is stored as model.onnx, and reads back the same."""
    path = make_sklearn_classifier(tmp_path / "skl.onnx")
    registry = _registry(tmp_path)

    manifest = push_model(registry, path, name="iris", compress=False)

    assert ("model.onnx", "none") == (manifest.artifact, manifest.compression)
    assert path.read_bytes() == registry.read_model("iris", "1")


def test_versions_are_numbered_in_order(tmp_path: Path) -> None:
    """Pushes without a version get 1, 2, 3; after an explicit 7 the next one is 8; named versions are kept."""
    registry = _registry(tmp_path)
    paths = [make_mlp(tmp_path / f"mlp{seed}.onnx", seed=seed) for seed in range(5)]

    numbered = [push_model(registry, path, name="mlp").version for path in paths[:3]]
    explicit = push_model(registry, paths[3], name="mlp", version="7").version
    after = push_model(registry, paths[4], name="mlp").version
    named = push_model(registry, paths[0], name="mlp", version="exp-a").version

    assert ["1", "2", "3", "7", "8", "exp-a"] == [*numbered, explicit, after, named]
    assert ["1", "2", "3", "7", "8", "exp-a"] == registry.versions("mlp")
    assert paths[3].read_bytes() == registry.read_model("mlp", "7")


def test_pushing_an_existing_version_is_refused(tmp_path: Path) -> None:
    """Step 1: push version 1. Step 2: push another model as version 1: refused, version 1 unchanged."""
    registry = _registry(tmp_path)
    first = make_mlp(tmp_path / "a.onnx", seed=1)
    push_model(registry, first, name="mlp", version="1")

    with pytest.raises(StorageError) as refused:
        push_model(registry, make_mlp(tmp_path / "b.onnx", seed=2), name="mlp", version="1")

    assert "version 1 already exists" in str(refused.value)
    assert "versions are immutable" in str(refused.value)
    assert first.read_bytes() == registry.read_model("mlp", "1")


def test_metadata_and_source_are_recorded(tmp_path: Path) -> None:
    """Metadata and an explicit source are stored in the manifest as given."""
    registry = _registry(tmp_path)
    metadata = {"accuracy": 0.93, "run": "abc", "features": ["a", "b"]}

    manifest = push_model(registry, make_mlp(tmp_path / "mlp.onnx"), name="mlp", source="s3://x", metadata=metadata)

    assert metadata == registry.manifest("mlp", "1").metadata
    assert "s3://x" == manifest.source


def test_metadata_that_is_not_json_is_refused_before_storing(tmp_path: Path) -> None:
    """Metadata orjson cannot store is a ConfigError, and no version is written."""
    registry = _registry(tmp_path)

    with pytest.raises(ConfigError):
        push_model(registry, make_mlp(tmp_path / "mlp.onnx"), name="mlp", metadata={"when": object()})

    assert [] == registry.versions("mlp")


def test_meta_values_are_json_when_they_parse() -> None:
    """--meta VALUE is JSON when it parses, text otherwise; only the first '=' splits."""
    parsed = parse_meta(["accuracy=0.93", "ok=true", "run=abc", "tags=[1, 2]", "query=a=b", "empty="])

    assert {"accuracy": 0.93, "ok": True, "run": "abc", "tags": [1, 2], "query": "a=b", "empty": ""} == parsed


def test_meta_without_equals_is_refused() -> None:
    """--meta without KEY=VALUE is a ConfigError that shows the expected form."""
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_meta(["accuracy"])


# -- digests and corrupted models ----------------------------------------------------------------


def test_expected_sha256_accepts_the_right_file(tmp_path: Path) -> None:
    """--sha256 equal to the file's digest (any case, sha256: prefix allowed) is accepted."""
    path = make_mlp(tmp_path / "mlp.onnx")

    manifest = push_model(_registry(tmp_path), path, name="mlp", expected_sha256="sha256:" + _sha256(path).upper())

    assert _sha256(path) == manifest.sha256


def test_flipped_weight_byte_is_caught_by_the_digest(tmp_path: Path) -> None:
    """Step 1: flip one bit of one weight. Step 2: it still parses and checks. Step 3: --sha256 refuses it."""
    original = make_mlp(tmp_path / "mlp.onnx")
    data = bytearray(original.read_bytes())
    weights = numpy_helper.to_array(onnx.load(original).graph.initializer[0]).tobytes()
    data[data.find(weights)] ^= 0x01
    corrupted = tmp_path / "corrupted" / "model.onnx"
    corrupted.parent.mkdir()
    corrupted.write_bytes(bytes(data))
    onnx.checker.check_model(onnx.load_model_from_string(bytes(data)))  # still a valid model
    registry = _registry(tmp_path)

    with pytest.raises(ModelLoadError) as refused:
        push_model(registry, corrupted, name="mlp", expected_sha256=_sha256(original))

    assert f"{corrupted} has sha256 {_sha256(corrupted)}, not the expected {_sha256(original)}" in str(refused.value)
    assert [] == registry.versions("mlp")


def test_malformed_sha256_is_a_config_error(tmp_path: Path) -> None:
    """--sha256 that is not 64 hex digits is a ConfigError, not a mismatch."""
    with pytest.raises(ConfigError, match="64 hex digits"):
        push_model(_registry(tmp_path), make_mlp(tmp_path / "mlp.onnx"), name="mlp", expected_sha256="abc")


def test_flipped_structure_byte_is_refused_by_the_parser(tmp_path: Path) -> None:
    """A broken protobuf tag in an otherwise valid model is refused: protobuf cannot parse it."""
    data = bytearray(make_mlp(tmp_path / "mlp.onnx").read_bytes())
    data[0] ^= 0x07  # the ir_version tag 0x08 becomes 0x0f: wire type 7 does not exist
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(data))

    with pytest.raises(ModelLoadError, match="protobuf cannot parse it"):
        push_model(_registry(tmp_path), path, name="mlp")


def test_model_failing_the_checker_is_refused(tmp_path: Path) -> None:
    """A model that parses but names an undefined input of a node is refused with onnx.checker's reason."""
    model = onnx.load(make_mlp(tmp_path / "mlp.onnx"))
    model.graph.node[1].input[0] = "nowhere"
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())

    with pytest.raises(ModelLoadError, match=r"fails onnx\.checker: .*nowhere"):
        push_model(_registry(tmp_path), path, name="mlp")


def test_model_onnxruntime_cannot_load_is_refused(tmp_path: Path) -> None:
    """A model the checker accepts but onnxruntime cannot run (an unknown domain's op) is refused."""
    model = onnx.load(make_mlp(tmp_path / "mlp.onnx"))
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())

    with pytest.raises(ModelLoadError, match=r"onnxruntime .* cannot load"):
        push_model(_registry(tmp_path), path, name="mlp")


# -- files that are not ONNX ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_named_model_onnx_is_refused(tmp_path: Path, protocol: int) -> None:
    """A pickle of a dict saved as model.onnx is recognised by its content and named, whatever its protocol."""
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps({"weights": [0.1, 0.2], "bias": 1}, protocol=protocol))
    registry = _registry(tmp_path)

    with pytest.raises(ModelLoadError) as refused:
        push_model(registry, path, name="mlp")

    assert f"{path} is a Python pickle" in str(refused.value)
    assert "streamscore never loads pickles" in str(refused.value)
    assert [] == registry.versions("mlp")


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


NOT_ONNX = [
    ("empty", b"", "is empty"),
    ("zip", _zip({"weights.txt": b"1 2 3"}), "is a zip archive"),
    ("pytorch", _zip({"archive/data.pkl": pickle.dumps({})}), "is a PyTorch checkpoint"),
    ("hdf5", b"\x89HDF\r\n\x1a\n" + bytes(64), "is an HDF5 file"),
    ("npy", b"\x93NUMPY\x01\x00" + bytes(64), "is a NumPy array"),
    ("safetensors", len(b'{"w":{}}').to_bytes(8, "little") + b'{"w":{}}', "is safetensors weights"),
    ("gzip", gzip.compress(b"x" * 100, mtime=0), "is gzip-compressed"),
    ("text", b"just some notes\nabout a model\n", "is plain text"),
    ("json", b'{"weights": [1, 2, 3]}', "is JSON text"),
    ("random", np.random.default_rng(0).bytes(2048), "is not an ONNX model: protobuf cannot parse it"),
]


@pytest.mark.parametrize(("content", "expected"), [(c, e) for _, c, e in NOT_ONNX], ids=[i for i, _, _ in NOT_ONNX])
def test_files_that_are_not_onnx_are_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    """Empty files, archives, weights, compressed files, text and random bytes named model.onnx are refused."""
    path = tmp_path / "model.onnx"
    path.write_bytes(content)

    with pytest.raises(ModelLoadError) as refused:
        push_model(_registry(tmp_path), path, name="mlp")

    assert f"{path} {expected}" in str(refused.value)


def test_truncated_model_is_refused(tmp_path: Path) -> None:
    """The first half of a valid model is refused (it cannot parse, or parses into no graph)."""
    data = make_mlp(tmp_path / "mlp.onnx").read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ModelLoadError, match="is not an ONNX model"):
        push_model(_registry(tmp_path), path, name="mlp")


def test_onnx_models_are_not_mistaken_for_other_formats(tmp_path: Path) -> None:
    """The sniffing that refuses other formats says nothing about real ONNX models."""
    paths = [make_mlp(tmp_path / "mlp.onnx"), make_sklearn_classifier(tmp_path / "skl.onnx")]

    assert [None, None] == [sniff_foreign(path.read_bytes()) for path in paths]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path with no file is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match=r"cannot read .*nothing\.onnx"):
        push_model(_registry(tmp_path), tmp_path / "nothing.onnx", name="mlp")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_with_a_model_load_error(content: bytes) -> None:
    """Whatever the bytes, a push that fails raises ModelLoadError (never a raw protobuf or onnx error)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(content)
        with pytest.raises(ModelLoadError):
            push_model(Registry.at(Path(folder) / "registry"), path, name="fuzz")


# -- external data -------------------------------------------------------------------------------


def test_external_data_inside_the_folder_is_copied(tmp_path: Path) -> None:
    """Weights in weights.bin beside the model: listed in the manifest, copied, stored uncompressed, runnable."""
    path = make_external_data_model(tmp_path / "exported")
    registry = _registry(tmp_path)

    manifest = push_model(registry, path, name="mlp")

    folder = registry.folder("mlp", "1")
    assert folder is not None
    assert ["weights.bin"] == manifest.external_data
    assert ("model.onnx", "none") == (manifest.artifact, manifest.compression)
    assert (path.parent / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    assert path.read_bytes() == registry.read_model("mlp", "1")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert (2, 3) == session.run(None, {"x": np.ones((2, 8), dtype=np.float32)})[0].shape


def test_external_data_in_a_subfolder_is_copied(tmp_path: Path) -> None:
    """A location in a subfolder of the model's folder is accepted and keeps its relative path."""
    path = make_external_data_model(tmp_path / "exported")
    (path.parent / "data").mkdir()
    (path.parent / "weights.bin").rename(path.parent / "data" / "weights.bin")
    _relocate_external_data(path, "data/weights.bin")
    registry = _registry(tmp_path)

    manifest = push_model(registry, path, name="mlp")

    assert ["data/weights.bin"] == manifest.external_data
    assert (path.parent / "data" / "weights.bin").read_bytes() == registry.storage.read("mlp/1/data/weights.bin")


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    """A tensor whose location is ../outside.bin is refused, naming the tensor and the location."""
    path = make_external_data_model(tmp_path / "exported")
    (path.parent / "weights.bin").rename(tmp_path / "outside.bin")
    _relocate_external_data(path, "../outside.bin")
    registry = _registry(tmp_path)

    with pytest.raises(ModelLoadError) as refused:
        push_model(registry, path, name="mlp")

    assert "tensor 'w1' keeps its data in '../outside.bin', which leaves the model's folder" in str(refused.value)
    assert [] == registry.versions("mlp")


def test_external_data_at_an_absolute_path_is_refused(tmp_path: Path) -> None:
    """A tensor whose location is an absolute path is refused, even when the file is in the folder."""
    path = make_external_data_model(tmp_path / "exported")
    _relocate_external_data(path, str(path.parent / "weights.bin"))

    with pytest.raises(ModelLoadError, match="which is an absolute path"):
        push_model(_registry(tmp_path), path, name="mlp")


def test_external_data_through_a_symlink_out_is_refused(tmp_path: Path) -> None:
    """A location inside the folder that is a symlink to a file outside it is refused."""
    path = make_external_data_model(tmp_path / "exported")
    (path.parent / "weights.bin").rename(tmp_path / "outside.bin")
    (path.parent / "weights.bin").symlink_to(tmp_path / "outside.bin")

    with pytest.raises(ModelLoadError, match="which is a symlink that leads out of the folder"):
        push_model(_registry(tmp_path), path, name="mlp")


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    """A location inside the folder with no file there is refused before onnxruntime tries to read it."""
    path = make_external_data_model(tmp_path / "exported")
    (path.parent / "weights.bin").unlink()

    with pytest.raises(ModelLoadError, match=r"'weights\.bin', which does not exist"):
        push_model(_registry(tmp_path), path, name="mlp")


# -- the command line ----------------------------------------------------------------------------


def test_cli_push_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`streamscore model push` exits 0 and prints name, version, digest, sizes, opset and signature."""
    root = tmp_path / "registry"
    path = make_mlp(tmp_path / "mlp.onnx")

    code = main(["model", "--model-root", str(root), "push", str(path), "--name", "mlp"])

    out = capsys.readouterr().out
    assert 0 == code
    expected = [
        "pushed mlp version 1",
        f"  sha256   {_sha256(path)}",
        f"  size     {path.stat().st_size} bytes, stored {path.stat().st_size} bytes as model.onnx (none)",
        "  opset    ai.onnx 17",
        "  input    x FP32 [N, 8]",
        "  output   probabilities FP32 [N, 3]",
    ]
    assert expected == out.splitlines()


def test_cli_push_records_metadata_flags(tmp_path: Path) -> None:
    """--metadata FILE.json is merged with --meta KEY=VALUE, --meta winning; --version and --source apply."""
    root = tmp_path / "registry"
    metadata_file = tmp_path / "metrics.json"
    metadata_file.write_bytes(orjson.dumps({"accuracy": 0.5, "dataset": "d1"}))
    path = install_model(tmp_path / "build", "mlp", "x", make_mlp)
    argv = ["model", "--model-root", str(root), "push", str(path), "--name", "mlp", "--version", "2024.1"]
    argv += ["--metadata", str(metadata_file), "--meta", "accuracy=0.93", "--meta", "run=abc", "--source", "run-7"]

    code = main(argv)

    manifest = Registry.at(root).manifest("mlp", "2024.1")
    assert 0 == code
    assert {"accuracy": 0.93, "dataset": "d1", "run": "abc"} == manifest.metadata
    assert "run-7" == manifest.source


def test_cli_refuses_a_pickle_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pickle pushed from the command line exits 2 with a one-line error saying pickles are never loaded."""
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}))

    code = main(["model", "--model-root", str(tmp_path / "registry"), "push", str(path), "--name", "mlp"])

    captured = capsys.readouterr()
    assert 2 == code
    assert "" == captured.out
    assert 1 == len(captured.err.strip().splitlines())
    assert "streamscore never loads pickles" in captured.err


def test_cli_refuses_an_existing_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pushing to an existing version from the command line exits 2 saying versions are immutable."""
    root = str(tmp_path / "registry")
    path = str(make_mlp(tmp_path / "mlp.onnx"))
    main(["model", "--model-root", root, "push", path, "--name", "mlp"])

    code = main(["model", "--model-root", root, "push", path, "--name", "mlp", "--version", "1"])

    assert 2 == code
    assert "versions are immutable" in capsys.readouterr().err
