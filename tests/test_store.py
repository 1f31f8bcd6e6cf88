"""The worker's model store on a registry: verified loads, refusals remembered, desired states."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime as ort
import orjson
import pytest
from structlog.testing import CapturingLogger

import worker.store as store_module
from artifacts.integrity import ArtifactError
from artifacts.registry import Registry
from artifacts.runtime import execution_providers
from demo.models import install_model, make_mlp
from registry.push import push_model
from schemas.control import DesiredState
from schemas.errors import ConfigError, ModelLoadError, ModelNotFoundError
from tests.factories import flip_byte, make_external_data_model, make_mlp_registry
from worker.lineup import Chosen, Lineup
from worker.serving import Serving
from worker.store import ModelStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A registry with mlp versions 1, 2 (stored uncompressed or gzip, as push decides) and 3."""
    return make_mlp_registry(tmp_path)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_a_flipped_byte_in_the_stored_artifact_is_refused(tmp_path: Path, compress: bool) -> None:
    """Whether stored gzip or plain, one flipped byte makes read_model raise ArtifactError."""
    registry = Registry.at(tmp_path / "registry")
    manifest = push_model(registry, make_mlp(tmp_path / "m.onnx", features=64, hidden=256), name="m", compress=compress)
    assert ("gzip" if compress else "none") == manifest.compression
    artifact = tmp_path / "registry" / "m" / "1" / manifest.artifact
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match="version 1"):
        registry.read_model("m", "1")


def test_a_refused_version_is_remembered_and_the_next_highest_serves(root: Path) -> None:
    """The highest version is corrupted: loading it fails once, and resolution falls back to 2."""
    flip_byte(root, "3")
    store = ModelStore(root, default_name="mlp")

    with pytest.raises(ModelLoadError):
        store.load("mlp", "3")

    assert "2" == store.default_version()
    assert "mlp" == store.load("mlp", "2").name
    with pytest.raises(ModelLoadError):  # not tried again: the refusal is remembered
        store.load("mlp", "3")


def test_a_desired_state_routes_requests_and_a_pin_overrides_it(root: Path) -> None:
    """With a state (current 1, canary 2 at 50 %), ids route deterministically; a pinned version wins."""
    store = ModelStore(root, default_name="mlp")
    for version in ("1", "2"):
        store.load("mlp", version)
    state = DesiredState("mlp", current="1").with_canary("2", 0.5)
    store.load("mlp", "3")
    lineup = Lineup("mlp", loaded=dict(store.loaded), states={"mlp": state})

    def resolve(name: str | None, version: str | None, request_id: str) -> tuple[str, str]:
        chosen = lineup.choose(name, version, request_id)
        assert isinstance(chosen, Chosen)
        return chosen.model.name, chosen.model.version

    routed = {resolve(None, None, f"id-{i}")[1] for i in range(50)}
    assert {"1", "2"} == routed
    assert all(resolve(None, None, f"id-{i}")[1] == state.route(f"id-{i}") for i in range(50))
    assert ("mlp", "3") == resolve("mlp", "3", "id-0")


async def test_versions_a_state_drops_are_unloaded(root: Path) -> None:
    """Promoting 3 over 2 over 1 keeps 3 and its rollback target 2 loaded, and unloads 1."""
    store = ModelStore(root, default_name="mlp")
    for version in ("1", "2", "3"):
        store.load("mlp", version)
    serving = Serving(store, ThreadPoolExecutor(max_workers=1), "worker-1")

    await serving.apply(DesiredState("mlp", current="1").promote("2").promote("3"))

    assert [None, "2", "3"] == [getattr(store.loaded.get(("mlp", v)), "version", None) for v in ("1", "2", "3")]


def test_an_unknown_pinned_version_is_not_found(root: Path) -> None:
    """A request pinning a version the registry does not have is refused, never served by another."""
    store = ModelStore(root, default_name="mlp")

    with pytest.raises(ModelNotFoundError, match="no version '9'"):
        store.check_exists("mlp", "9")


# -- whatever a version raises, it is refused; what loads is what was verified --------------------


def test_an_artifact_that_is_a_directory_is_refused_not_raised(root: Path) -> None:
    """Version 3's model file is a directory: load raises ModelLoadError naming it, and 2 serves."""
    artifact = next((root / "mlp" / "3").glob("model.onnx*"))
    artifact.unlink()
    artifact.mkdir()
    store = ModelStore(root, default_name="mlp")

    with pytest.raises(ModelLoadError, match=r"model mlp version 3 .*Is a directory"):
        store.load("mlp", "3")

    assert "2" == store.default_version()


def test_a_memory_error_while_reading_a_version_is_a_refusal(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading version 3 raises MemoryError: load raises ModelLoadError naming the version and the cause."""
    store = ModelStore(root, default_name="mlp")

    def exhausted(key: str) -> bytes:
        raise MemoryError

    monkeypatch.setattr(store.registry.storage, "read", exhausted)
    with pytest.raises(ModelLoadError, match=r"model mlp version 3 cannot be loaded \(MemoryError\)"):
        store.load("mlp", "3")

    assert "model mlp version 3 cannot be loaded (MemoryError)" in store.refused[("mlp", "3")]


def test_external_data_changed_after_push_is_refused_and_version_3_serves(root: Path, tmp_path: Path) -> None:
    """Version 4 keeps its weights in weights.bin, one byte of which changes: it is refused naming the file."""
    push_model(Registry.at(root), make_external_data_model(tmp_path / "exported"), name="mlp", version="4")
    _flip(root / "mlp" / "4" / "weights.bin")
    store = ModelStore(root, default_name="mlp")

    with pytest.raises(ModelLoadError, match=r"model mlp version 4: weights\.bin has sha256"):
        store.load("mlp", "4")

    assert "3" == store.default_version()


def test_external_data_is_loaded_from_a_private_copy_of_the_verified_bytes(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime is given a model path outside the registry, in a folder only this process may read,
    which is gone once the version is loaded."""
    push_model(Registry.at(root), make_external_data_model(tmp_path / "exported"), name="mlp", version="4")
    real_session, seen = ort.InferenceSession, []

    def spy(source: object, *args: object, **kwargs: object) -> object:
        folder = Path(str(source)).parent
        seen.append((folder, stat.S_IMODE(folder.stat().st_mode)))
        return real_session(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    ModelStore(root, default_name="mlp").load("mlp", "4")

    [(folder, mode)] = seen
    assert (False, 0o700, False) == (folder.is_relative_to(root), mode, folder.exists())


def test_a_version_copied_by_hand_loads_and_is_logged_unverified(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mlp/4/model.onnx without a manifest serves, with a model_version_unverified warning saying how to fix it."""
    (root / "mlp" / "4").mkdir()
    (root / "mlp" / "4" / "model.onnx").write_bytes(Registry.at(root).read_model("mlp", "1"))
    captured = CapturingLogger()
    monkeypatch.setattr(store_module, "log", captured)

    assert "4" == ModelStore(root, default_name="mlp").load("mlp", "4").version

    [call] = captured.calls
    assert ("warning", ("model_version_unverified",)) == (call.method_name, call.args)
    assert ("mlp", "4") == (call.kwargs["model"], call.kwargs["version"])
    assert "streamscore model push" in call.kwargs["hint"]


def test_an_old_manifest_loads_and_logs_its_external_data_unverified(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version whose manifest has no per-file digests loads, with a warning naming weights.bin."""
    push_model(Registry.at(root), make_external_data_model(tmp_path / "exported"), name="mlp", version="4")
    manifest = root / "mlp" / "4" / "manifest.json"
    body = orjson.loads(manifest.read_bytes())
    del body["files"]
    manifest.write_bytes(orjson.dumps(body))
    captured = CapturingLogger()
    monkeypatch.setattr(store_module, "log", captured)

    ModelStore(root, default_name="mlp").load("mlp", "4")

    [call] = captured.calls
    assert ("model_external_data_unverified", ["weights.bin"]) == (call.args[0], call.kwargs["files"])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("asked", "chosen"),
    [
        pytest.param(("cpu",), ("CPUExecutionProvider",), id="alias"),
        pytest.param(
            ("CUDAExecutionProvider", "cpu"), ("CUDAExecutionProvider", "CPUExecutionProvider"), id="order-kept"
        ),
        pytest.param((), ("CPUExecutionProvider",), id="none-is-cpu"),
    ],
)
def test_execution_providers_are_named_as_onnxruntime_names_them(
    asked: tuple[str, ...], chosen: tuple[str, ...]
) -> None:
    assert chosen == execution_providers(asked, available=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_a_provider_this_onnxruntime_lacks_is_refused_naming_what_it_has() -> None:
    """Asking for CUDA on a CPU-only onnxruntime stops the worker at start, saying what to install."""
    with pytest.raises(ConfigError) as refused:
        ModelStore(Path("/nowhere"), default_name="mlp", providers=("cuda",))

    message = str(refused.value)
    assert "CUDAExecutionProvider is not in this onnxruntime" in message
    assert "CPUExecutionProvider" in message and "onnxruntime-gpu" in message


def test_a_model_runs_on_the_providers_asked_for(tmp_path: Path) -> None:
    """The loaded model says which providers onnxruntime runs it with."""
    install_model(tmp_path, "mlp", "1", make_mlp)
    store = ModelStore(tmp_path, default_name="mlp", providers=("CPUExecutionProvider",))

    assert ("CPUExecutionProvider",) == store.load("mlp", "1").providers
