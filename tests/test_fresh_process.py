"""napari in a fresh Python process, as a user starts it: no test fixture imports anything first.

The suite's own process has imported torch, timm and napari in some order; a crash that
depends on import order (triton's LLVM loaded after Mesa's, see ``_llvm_guard``) would be
hidden there. Each case starts ``tests/fresh_process/drive_predict.py`` in a new interpreter on
the suite's virtual X server (pytest-xvfb's ``DISPLAY``), docks Predict from the plugin's
manifest, runs the bundled demo run to completion and must exit 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).parent / "fresh_process" / "drive_predict.py"


def _run_driver(order: str, home: Path) -> subprocess.CompletedProcess[str]:
    if not os.environ.get("DISPLAY"):
        pytest.skip("no X display (pytest-xvfb provides one)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QT_QPA"))}
    env["HISTOEXPRESS_HOME"] = str(home)  # project folders of read-only slides
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints its Python stack
    return subprocess.run(
        [sys.executable, str(DRIVER), order],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        cwd=home,
    )


@pytest.mark.slow
@pytest.mark.parametrize("order", ["sample-first", "slide-first"])
def test_predict_in_a_fresh_napari_process(order: str, tmp_path: Path) -> None:
    proc = _run_driver(order, tmp_path)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"exit code {proc.returncode} (−11/139 = segfault):\n{tail}"
    assert f"OK {order}" in proc.stdout, tail


def test_guard_is_installed_by_the_package() -> None:
    """``import napari_histoexpress`` (what napari does to load the plugin) installs the hook."""
    code = (
        "import sys, napari_histoexpress, napari_histoexpress._llvm_guard as g;"
        "print(g.installed() or not sys.platform.startswith('linux'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_llvm_markers_in_a_process_map() -> None:
    from napari_histoexpress._llvm_guard import llvm_loaded

    mesa = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
    plain = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    assert llvm_loaded(mesa) and not llvm_loaded(plain)
