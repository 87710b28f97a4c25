"""Errors carry which setting fixes them; messages stay free of Python argument names."""

from __future__ import annotations

import pickle

import pytest

from napari_histoexpress.errors import (
    SETTINGS,
    InputFileError,
    InputFileWarning,
    MissingResolutionError,
    SettingError,
    StoreMismatchError,
)


def test_setting_defaults_and_validation() -> None:
    assert MissingResolutionError("s.tif", "µm/px unknown").setting == "mpp"
    assert StoreMismatchError("s.zarr", "cannot resume").setting == "restart"
    assert InputFileError("a.h5ad", "bad").setting is None
    assert InputFileWarning("c.tsv", "dropped", setting="mpp").setting == "mpp"
    with pytest.raises(ValueError, match="unknown setting"):
        InputFileError("a", "b", setting="slide_mpp")
    assert set(SETTINGS) >= {"mpp", "restart", "allow_missing_counts", "tile_px"}


def test_errors_survive_pickling() -> None:
    """Errors cross process boundaries (workers) with their path, problem and setting."""
    for exc in (
        InputFileError("a.h5ad", "bad", setting="mpp"),
        MissingResolutionError("s.tif", "unknown"),
        StoreMismatchError("s.zarr", "differs"),
        SettingError("tile_px", "must be a multiple of 32"),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert back.setting == exc.setting
