"""The spots table: one row per circular spot, in µm of the slide's full resolution.

Columns ``id`` (unique text), ``x_um``, ``y_um`` (centre), ``diameter_um`` and ``source``
(``drawn``, ``grid``, ``imported``, ...); extra columns are kept after these. The project
folder (:mod:`napari_histoexpress.project`) saves it as ``spots.csv``; export and the
widgets validate through :func:`validate_spots`.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import InputFileError

__all__ = ["SPOT_COLUMNS", "empty_spots", "validate_spots"]

SPOT_COLUMNS = ("id", "x_um", "y_um", "diameter_um", "source")


def empty_spots() -> pd.DataFrame:
    """An empty spots table with the right columns and dtypes."""
    return pd.DataFrame(
        {
            "id": pd.Series(dtype=str),
            "x_um": pd.Series(dtype=float),
            "y_um": pd.Series(dtype=float),
            "diameter_um": pd.Series(dtype=float),
            "source": pd.Series(dtype=str),
        }
    )


def validate_spots(df: pd.DataFrame, where: str | os.PathLike[str] = "spots table") -> pd.DataFrame:
    """A clean copy of a spots table: required columns, finite numbers, positive diameters,
    unique ids (missing ids and sources filled). Raises :class:`InputFileError`."""
    for col in ("x_um", "y_um", "diameter_um"):
        if col not in df.columns:
            raise InputFileError(where, f"missing column {col!r}; need {list(SPOT_COLUMNS)}")
    out = df.copy()
    nums = out[["x_um", "y_um", "diameter_um"]].apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(nums.to_numpy(float)).all(axis=1) | (nums["diameter_um"] <= 0).to_numpy()
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + 2).tolist()
        raise InputFileError(where, f"invalid or non-positive values on line(s) {rows}")
    out[["x_um", "y_um", "diameter_um"]] = nums.astype(float)
    if "id" not in out.columns:
        out["id"] = [f"spot_{i}" for i in range(len(out))]
    out["id"] = out["id"].astype(str)
    if out["id"].duplicated().any():
        dup = out["id"][out["id"].duplicated()].iloc[0]
        raise InputFileError(where, f"spot id {dup!r} appears more than once")
    if "source" not in out.columns:
        out["source"] = "drawn"
    out["source"] = out["source"].fillna("drawn").astype(str)
    extra = [c for c in out.columns if c not in SPOT_COLUMNS]
    return out[[*SPOT_COLUMNS, *extra]].reset_index(drop=True)
