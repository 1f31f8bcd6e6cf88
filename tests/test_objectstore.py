"""The registry in an S3-compatible object store, against a real local server (tests/s3server.py), and the
digest cache of workers. Key mapping and the prefix check need no server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from artifacts.cache import DigestCache
from artifacts.integrity import ArtifactError, sha256_of
from artifacts.manifest import Manifest
from artifacts.objectstore import S3Storage, object_path, profile_config, s3_code, split_url
from artifacts.registry import Registry
from artifacts.storage import LocalStorage, StorageError
from demo.models import make_mlp
from registry import cli as registry_cli
from registry.push import push_model
from schemas.errors import ModelLoadError
from streamscore.cli import main
from tests.s3server import S3Server
from worker.store import ModelStore

# --- without a server -------------------------------------------------------------------------------


def test_an_s3_url_gives_its_bucket_and_prefix() -> None:
    """s3://bucket/a/b/ is bucket "bucket" under prefix "a/b"; a bare bucket has no prefix."""
    assert ("models-bucket", "team/models") == split_url("s3://models-bucket/team/models/")
    assert ("models-bucket", "") == split_url("s3://models-bucket")


@pytest.mark.parametrize("url", ["s3://Bad_Bucket/x", "s3:///x", "s3://ok-bucket/../x", "s3://ok-bucket/a//b"])
def test_an_s3_url_without_a_valid_bucket_or_prefix_is_refused(url: str) -> None:
    """A bucket name S3 would refuse, or a prefix with '..' or an empty part, is a StorageError."""
    with pytest.raises(StorageError):
        split_url(url)


@pytest.mark.parametrize("key", ["../other/model.onnx", "/model.onnx", "m/../../x", "m//1", "m/./1", ""])
def test_no_key_maps_outside_the_prefix(key: str) -> None:
    """A key that is absolute, empty, or climbs with '..' never becomes an object path."""
    with pytest.raises(StorageError, match="must be a relative path"):
        object_path(key)


def test_a_key_maps_to_the_same_relative_object_path() -> None:
    """Keys map one to one onto paths under the store's prefix."""
    assert "mlp/1/manifest.json" == object_path("mlp/1/manifest.json")


def test_the_s3_error_code_is_read_from_the_response_body() -> None:
    """The <Code> of an S3 error body is what decides the message; none gives ""."""
    assert "SignatureDoesNotMatch" == s3_code(Exception("403: <Error><Code>SignatureDoesNotMatch</Code></Error>"))
    assert "" == s3_code(Exception("connection refused"))


def test_a_tampered_cache_file_is_evicted_logged_and_read_again(tmp_path: Path) -> None:
    """Scenario:
    1. A version is read through a cache: its files are cached by sha256.
    2. The cached artifact is changed on disk.
    3. The next read evicts it (model_cache_evicted), reads the storage again and caches the good bytes.
    """
    push_model(Registry.at(tmp_path / "registry"), make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    registry = Registry(LocalStorage(tmp_path / "registry"), DigestCache(tmp_path / "cache"))
    good = registry.read_model("mlp", "1")
    manifest = registry.manifest("mlp", "1")
    digest = manifest.files[manifest.artifact]
    (tmp_path / "cache" / digest).write_bytes(b"tampered")

    with capture_logs() as logs:
        again = registry.read_model("mlp", "1")

    assert good == again
    assert ["model_cache_evicted"] == [entry["event"] for entry in logs]
    assert digest == sha256_of((tmp_path / "cache" / digest).read_bytes())


# --- against the local S3 server ------------------------------------------------------------------


def cli(root: str, *args: str) -> int:
    return main(["model", "--model-root", root, *args])


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """`model list` and `show` without a control topic (this file has no broker)."""
    monkeypatch.setattr(registry_cli, "_states_or_none", lambda settings: None)
    monkeypatch.setattr(registry_cli, "_statuses", lambda settings, name: [])


def test_push_list_and_show_through_the_store(
    s3_root: str, tmp_path: Path, no_broker: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`model push` twice, then `model list` and `model show` read versions 1 and 2 back from the bucket."""
    assert 0 == cli(s3_root, "push", str(make_mlp(tmp_path / "a.onnx")), "--name", "mlp")
    assert 0 == cli(s3_root, "push", str(make_mlp(tmp_path / "b.onnx", scale=2.0)), "--name", "mlp")
    capsys.readouterr()

    assert 0 == cli(s3_root, "list")
    [row] = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("mlp ")]
    assert ["mlp", "1,2", "2*"] == row[:3]
    assert 0 == cli(s3_root, "show", "mlp")
    shown = capsys.readouterr().out
    assert 2 == sum(line.startswith("  version ") and "sha256" in line for line in shown.splitlines())


def test_files_live_under_the_prefix_and_the_manifest_says_their_sha256(
    s3_root: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """A push stores <prefix>/mlp/1/{manifest.json, model.onnx} and nothing else in the bucket."""
    registry = Registry.at(s3_root)
    manifest = push_model(registry, make_mlp(tmp_path / "m.onnx"), name="mlp", version="1", compress=False)
    bucket = s3_root.split("/")[2]

    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]

    assert {"team/models/mlp/1/manifest.json", "team/models/mlp/1/model.onnx"} == {o["Key"] for o in listed}
    assert manifest.files["model.onnx"] == sha256_of(registry.storage.read("mlp/1/model.onnx"))


def at_once(*calls: Callable[[], object]) -> list[object]:
    """Run `calls` in threads released together; each one's result, or the exception it raised."""
    start, outcomes = threading.Barrier(len(calls)), [None] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = calls[index]()
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return list(outcomes)


def test_two_pushes_of_one_version_racing_exactly_one_wins(s3_root: str, tmp_path: Path) -> None:
    """Five times, two threads push different models as the same version at once: one is stored, the other
    is told the version exists, and the stored version is the winner's, whole."""
    paths = [make_mlp(tmp_path / f"{scale}.onnx", scale=scale) for scale in (1.0, 2.0)]
    for version in ("1", "2", "3", "4", "5"):
        outcomes = at_once(
            *(partial(push_model, Registry.at(s3_root), path, name="mlp", version=version) for path in paths)
        )

        [winner] = [o for o in outcomes if isinstance(o, Manifest)]
        [loser] = [o for o in outcomes if isinstance(o, StorageError)]
        assert "versions are immutable" in str(loser).lower()
        assert winner.sha256 == sha256_of(Registry.at(s3_root).read_model("mlp", version))


def test_files_without_a_manifest_are_never_listed_or_served(s3_root: str, tmp_path: Path) -> None:
    """Scenario:
    1. Version 1 is pushed; version 2's model file is there without a manifest (a push interrupted).
    2. Neither the registry nor a worker's store sees version 2.
    3. A push of other bytes as version 2 stops, naming the leftover; a push of the same bytes completes it.
    """
    registry = Registry.at(s3_root)
    push_model(registry, make_mlp(tmp_path / "1.onnx"), name="mlp", version="1")
    interrupted = make_mlp(tmp_path / "2.onnx", scale=2.0)
    registry.storage.write_new("mlp/2/model.onnx", interrupted.read_bytes())

    assert (["1"], []) == (registry.versions("mlp"), registry.unverified_versions("mlp"))
    assert ["1"] == ModelStore(s3_root, default_name="mlp").versions("mlp")
    with pytest.raises(StorageError, match=r"mlp/2/model\.onnx is already in the registry .* with other bytes"):
        push_model(registry, make_mlp(tmp_path / "3.onnx", scale=3.0), name="mlp", version="2", compress=False)
    push_model(registry, interrupted, name="mlp", version="2", compress=False)
    assert ["1", "2"] == registry.versions("mlp")


def test_a_truncated_object_is_refused_naming_the_file(s3_root: str, s3_server: S3Server, tmp_path: Path) -> None:
    """model.onnx cut to half its size in the bucket: the load says so, and the worker serves nothing of it."""
    registry = Registry.at(s3_root)
    manifest = push_model(registry, make_mlp(tmp_path / "m.onnx"), name="mlp", version="1", compress=False)
    key = "team/models/mlp/1/model.onnx"
    s3_server.client().put_object(
        Bucket=s3_root.split("/")[2], Key=key, Body=registry.storage.read("mlp/1/model.onnx")[:1000]
    )
    store = ModelStore(s3_root, default_name="mlp", cache=tmp_path / "cache")

    expected = f"model.onnx is 1000 bytes where the manifest says {manifest.size}; it was cut short"
    with pytest.raises(ArtifactError, match=expected):
        registry.read_version("mlp", "1")
    with pytest.raises(ModelLoadError, match=expected):
        store.load("mlp", "1")
    assert ({}, []) == (dict(store.loaded), list((tmp_path / "cache").glob("*")))


def test_a_tampered_object_is_refused_by_its_sha256(s3_root: str, s3_server: S3Server, tmp_path: Path) -> None:
    """One byte of the stored artifact flipped in the bucket: the sha256 check refuses the version."""
    registry = Registry.at(s3_root)
    artifact = push_model(registry, make_mlp(tmp_path / "m.onnx"), name="mlp", version="1").artifact
    data = bytearray(registry.storage.read(f"mlp/1/{artifact}"))
    data[len(data) // 2] ^= 0x01
    s3_server.client().put_object(Bucket=s3_root.split("/")[2], Key=f"team/models/mlp/1/{artifact}", Body=bytes(data))
    store = ModelStore(s3_root, default_name="mlp")

    with pytest.raises(ModelLoadError, match=r"model\.onnx(\.gz)? has sha256 .* where the manifest says"):
        store.load("mlp", "1")
    assert {} == dict(store.loaded)


def test_wrong_credentials_are_refused_with_what_to_check(
    s3_root: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a wrong secret the server refuses every request: the error names the endpoint, the bucket and
    the variables to check, and a worker serves nothing."""
    push_model(Registry.at(s3_root), make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = ModelStore(s3_root, default_name="mlp")

    with pytest.raises(StorageError) as refused:
        Registry.at(s3_root).versions("mlp")
    with pytest.raises(ModelLoadError) as not_loaded:
        store.load("mlp", "1")

    listing = f"the object store at {s3_server.endpoint} refused to list {s3_root}/mlp (SignatureDoesNotMatch)"
    loading = f"the object store at {s3_server.endpoint} refused to read {s3_root}/mlp/1/manifest.json (403 Forbidden)"
    assert str(refused.value).startswith(listing)
    assert loading in str(not_loaded.value)
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(not_loaded.value)
    assert {} == dict(store.loaded)


def test_concurrent_history_events_are_all_kept(s3_root: str, tmp_path: Path) -> None:
    """Eight threads append an event to one manifest at once: If-Match retries keep all eight."""
    registry = Registry.at(s3_root)
    push_model(registry, make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    events = [{"event": "test", "n": n} for n in range(8)]

    outcomes = at_once(*(partial(Registry.at(s3_root).record, "mlp", "1", event) for event in events))

    assert [None] * 8 == outcomes
    assert list(range(8)) == sorted(event["n"] for event in registry.manifest("mlp", "1").history)


def test_a_worker_caches_a_version_by_digest_and_checks_the_cache(s3_root: str, tmp_path: Path) -> None:
    """Scenario:
    1. A worker's store loads version 1 from the bucket: each file lands in the cache under its sha256.
    2. The cached artifact is tampered with.
    3. A new store evicts it (model_cache_evicted), downloads it again, and serves the same model.
    """
    manifest = push_model(Registry.at(s3_root), make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    digest = manifest.files[manifest.artifact]
    first = ModelStore(s3_root, default_name="mlp", cache=tmp_path / "cache").load("mlp", "1")
    assert [digest] == [p.name for p in (tmp_path / "cache").iterdir()]
    (tmp_path / "cache" / digest).write_bytes(b"tampered")

    with capture_logs() as logs:
        second = ModelStore(s3_root, default_name="mlp", cache=tmp_path / "cache").load("mlp", "1")

    assert first.sha256 == second.sha256
    assert ["model_cache_evicted"] == [entry["event"] for entry in logs if entry["event"].startswith("model_cache")]
    assert digest == sha256_of((tmp_path / "cache" / digest).read_bytes())


def test_the_store_describes_itself_by_its_url(s3_root: str) -> None:
    """Messages name the registry as s3://bucket/prefix."""
    assert s3_root == str(S3Storage(s3_root))


def test_credentials_come_from_the_shared_file_when_no_key_is_set(tmp_path: Path) -> None:
    """Without AWS_ACCESS_KEY_ID, the profile AWS_PROFILE names is read from the credentials file, its
    region from the config file; a key in the environment wins and the files are not read."""
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = d\n"
        "[ml]\naws_access_key_id = K\naws_secret_access_key = s\naws_session_token = t\n"
    )
    (tmp_path / "config").write_text("[profile ml]\nregion = eu-west-1\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_CONFIG_FILE": str(tmp_path / "config")}

    expected = {"access_key_id": "K", "secret_access_key": "s", "token": "t", "region": "eu-west-1"}
    assert expected == profile_config({**files, "AWS_PROFILE": "ml"}, tmp_path)
    assert {"access_key_id": "D", "secret_access_key": "d"} == profile_config(files, tmp_path)
    assert {} == profile_config({**files, "AWS_ACCESS_KEY_ID": "E"}, tmp_path)
    assert {} == profile_config({**files, "AWS_PROFILE": "missing"}, tmp_path)


def test_a_registry_reads_its_key_from_the_shared_credentials_file(
    s3_root: str, s3_server: S3Server, tmp_path: Path, no_broker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key only in a credentials file (no AWS_ACCESS_KEY_ID), push and list work against the server."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {s3_server.access_key_id}\n"
        f"aws_secret_access_key = {s3_server.secret_access_key}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    assert 0 == cli(s3_root, "push", str(make_mlp(tmp_path / "a.onnx")), "--name", "mlp")
    assert ["1"] == Registry.at(s3_root).versions("mlp")
