"""Fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sample_section():
    """The synthetic sample's spots and slide as a training section (one per test module)."""
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.sections import load_section

    return load_section(sample_paths()["spots"])
