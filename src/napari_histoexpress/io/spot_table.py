"""The spots table: one row per circular spot, in µm of the slide's full resolution.

Columns ``id`` (unique text), ``x_um``, ``y_um`` (centre), ``diameter_um`` and ``source``
(``drawn``, ``grid``, ``imported``, ...); extra columns are kept after these. The project
folder (:mod:`napari_histoexpress.project`) saves it as ``spots.csv`` (and large bin sets as
a columnar table, :mod:`.spot_store`); export and the widgets validate through
:func:`validate_spots`.

Ids made by the napari widgets are ``spot_<n>`` (:data:`ID_PREFIX` and a number ≥ 0 written
without leading zeros): :func:`id_numbers` and :func:`ids_from_numbers` convert between the
text and the numbers, vectorised, so a table of a million bins can store and compare ids as
integers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ..errors import InputFileError

__all__ = ["ID_PREFIX", "SPOT_COLUMNS", "empty_spots", "id_numbers", "ids_from_numbers",
           "validate_spots"]  # fmt: skip

SPOT_COLUMNS = ("id", "x_um", "y_um", "diameter_um", "source")
#: Ids ``spot_<n>``: the prefix before the number.
ID_PREFIX = "spot_"
_CANONICAL = r"spot_(?:0|[1-9][0-9]{0,17})"


def id_numbers(ids: Iterable[object]) -> np.ndarray:
    """``n`` of every id ``spot_<n>`` (int64), ``-1`` for any other id (including
    ``spot_007``: only the canonical text, which :func:`ids_from_numbers` gives back)."""
    s = pd.Series(ids if isinstance(ids, pd.Series) else list(ids), dtype=object)
    out = np.full(len(s), -1, dtype=np.int64)
    if not len(s):
        return out
    text = s.astype(str)
    ok = text.str.fullmatch(_CANONICAL).to_numpy(dtype=bool)
    if ok.any():
        out[ok] = text[ok].str.slice(len(ID_PREFIX)).astype(np.int64).to_numpy()
    return out


def ids_from_numbers(numbers: np.ndarray) -> np.ndarray:
    """The ids ``spot_<n>`` of numbers ``n`` ≥ 0 (an object array of ``str``)."""
    nums = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if (nums < 0).any():
        raise ValueError("spot id numbers must be >= 0")
    text = np.strings.add(ID_PREFIX, nums.astype(np.dtypes.StringDType()))
    return text.astype(object)


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
