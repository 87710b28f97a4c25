"""Shared fixtures. Tests that read ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTOEXPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public ST data (``../shared/data``); skips when absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real ST data not found at {SHARED_DATA} (set HISTOEXPRESS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def her2st(shared_data: Path) -> Path:
    path = shared_data / "her2st"
    if not (path / "images" / "C2.jpg").exists():
        pytest.skip(f"her2st data not found at {path}")
    return path
