"""The import contracts of ``[tool.importlinter]`` in pyproject.toml, checked by import-linter on every run.

* layers point down: ``infra`` -> ``flows`` -> ``registry`` -> ``groupdiff`` (function-level imports count);
* the ML library never imports the platform's services (Prefect, MLflow, MinIO, SQLAlchemy, ...);
* no two sibling modules or packages import each other, at any depth.

A second test plants an upward import in a copy of the tree and sees the contracts break, so the check
itself cannot pass vacuously.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("groupdiff", "flows", "registry", "infra")
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"  # the lint-imports script


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the tree at ``root`` (its pyproject.toml and its packages, no cache)."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # the tree at root, ahead of the editable install
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--config",
                           str(root / "pyproject.toml")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("groupdiff/models/sit.py", "from registry import uri as _upward", "Layers point down"),
    ("groupdiff/models/sit.py", "import mlflow as _service", "never imports the platform's services"),
    ("groupdiff/data/fmnist.py", "from groupdiff.data import datasets as _circle", "No import circles"),
])
def test_a_planted_violation_breaks_its_contract(tmp_path, module, line, contract):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [l for l in result.stdout.splitlines() if l.endswith("BROKEN")]
    assert len(broken) == 1 and contract in broken[0], result.stdout[-3000:]
