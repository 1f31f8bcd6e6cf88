"""The import layers of ARCHITECTURE.md hold, and `make lint` fails when an import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run the contracts of pyproject.toml over the packages under `tree`, as `make lint` does."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", "pyproject.toml"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and pyproject.toml, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold(tree: Path) -> None:
    """Every contract is kept by the code as it is."""
    result = lint_imports(tree)

    assert 0 == result.returncode, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        pytest.param("schemas/codec.py", "import transport.connection", "Layers", id="upward"),
        pytest.param("producer/client.py", "import worker.runner", "Layers", id="client-imports-server"),
        pytest.param("registry/measure.py", "import worker.store", "registry never imports", id="registry-sideways"),
        pytest.param("worker/runner.py", "import worker.cli", "never imports a command", id="library-imports-command"),
    ],
)
def test_a_forbidden_import_fails_the_check(tree: Path, module: str, forbidden: str, contract: str) -> None:
    """An import that breaks a layer makes lint-imports exit non-zero and name the broken contract."""
    path = tree / module
    path.write_text(path.read_text() + f"\n{forbidden}  # noqa: E402\n")

    result = lint_imports(tree)

    assert 1 == result.returncode, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
