"""The package stays ruff-clean and mypy-clean (the settings in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_histoexpress"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    check = _run([ruff, "check", "src", "tests", "benchmarks", "scripts"])
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _run([ruff, "format", "--check", "src", "tests", "benchmarks", "scripts"])
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_clean() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = _run([sys.executable, "-m", "mypy", str(SRC.relative_to(ROOT).parent)])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
