"""`model list` and `model show` without a broker: versions copied by hand are shown unverified, staging never."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifacts.registry import Registry
from demo.models import make_mlp
from registry import cli
from registry.push import push_model
from registry.settings import RegistrySettings


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """mlp version 1 pushed, version 2 copied by hand, a crashed push's staging folder; no control topic."""
    root = tmp_path / "registry"
    push_model(Registry.at(root), make_mlp(tmp_path / "m.onnx"), name="mlp", version="1")
    (root / "mlp" / "2").mkdir()
    (root / "mlp" / "2" / "model.onnx").write_bytes(make_mlp(tmp_path / "m2.onnx", scale=2.0).read_bytes())
    (root / "mlp" / ".staging-crashed").mkdir()
    (root / "mlp" / ".staging-crashed" / "model.onnx").write_bytes(b"half a push")
    monkeypatch.setattr(cli, "_states_or_none", lambda settings: None)
    monkeypatch.setattr(cli, "_statuses", lambda settings, name: [])
    return root


def test_show_lists_a_version_copied_by_hand_as_unverified(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Version 1 shows its manifest; version 2 says "unverified (no manifest)"; 2 is what workers serve."""
    assert 0 == cli.show_model(Registry.at(root), RegistrySettings(model_root=str(root)), "mlp")

    lines = capsys.readouterr().out.splitlines()
    [one] = [line for line in lines if line.startswith("  version 1 ")]
    [two] = [line for line in lines if line.startswith("  version 2 ")]
    assert "sha256" in one
    assert "unverified (no manifest): model.onnx copied by hand" in two
    assert "  desired: no control record; workers serve the highest version, 2" in lines


def test_list_marks_versions_copied_by_hand_and_skips_staging(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The versions column reads "1,2?" (no staging folder), and a footnote says what ? means."""
    assert 0 == cli.list_models(Registry.at(root), RegistrySettings(model_root=str(root)))

    out = capsys.readouterr().out
    [row] = [line.split() for line in out.splitlines() if line.startswith("mlp ")]
    assert ["mlp", "1,2?", "2*"] == row[:3]
    assert "? marks a version copied by hand, without manifest" in out


def test_a_model_with_only_versions_copied_by_hand_is_listed(tmp_path: Path, root: Path) -> None:
    """A model folder holding only a hand-copied version is a model of the registry."""
    (root / "byhand" / "1").mkdir(parents=True)
    (root / "byhand" / "1" / "model.onnx").write_bytes(b"onnx")

    assert ["byhand", "mlp"] == Registry.at(root).models()
