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


@pytest.fixture(scope="session", autouse=True)
def _user_cache_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches written by the code under test (frozen-encoder features, gene embeddings) go
    to a folder of this test session, not the user's ``~/.cache`` (unless the caller set
    ``HISTOEXPRESS_HOME`` on purpose)."""
    if not os.environ.get("HISTOEXPRESS_HOME"):
        os.environ["HISTOEXPRESS_HOME"] = str(tmp_path_factory.mktemp("histoexpress-home"))
