"""The one spatial AnnData convention every part of the package reads and writes.

It is scanpy/squidpy's ``spatial`` convention, with a few documented extras:

* ``adata.obsm["spatial"]``: ``(n_spots, 2)`` float array of spot centres as
  ``(x, y)`` = (column, row) in **full-resolution pixels** of the source image.
* ``adata.uns["spatial"][library_id]`` with
    * ``"images"``: ``{"hires": uint8 (h, w, 3), "lowres": uint8 (h, w, 3)}`` thumbnails,
    * ``"scalefactors"``: ``tissue_hires_scalef``, ``tissue_lowres_scalef``,
      ``spot_diameter_fullres`` (px of the full-res image), and
      ``microns_per_pixel`` (extra, full-res µm/px, absent when unknown),
    * ``"metadata"``: ``source_image_path`` (absolute path of the full-resolution image),
      ``microns_per_pixel`` (float or absent), ``mpp_source`` (where the µm/px came from,
      e.g. ``"user"``, ``"tiff-resolution"``, ``"st-array-pitch"``, ``"unknown"``),
      ``spot_diameter_um``, ``technology`` (``"visium"``, ``"st"``, ``"drawn"``, ...).
* ``adata.X``: raw counts (integers, as measured). Normalisation is a later,
  explicit step (``napari_histoexpress.expression``); when ``X`` holds something else the raw counts
  are in ``adata.layers["counts"]``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

SPATIAL_KEY = "spatial"


def library_ids(adata: Any) -> list[str]:
    """The library ids present in ``adata.uns['spatial']`` (may be empty)."""
    return list(adata.uns.get(SPATIAL_KEY, {}).keys())


def library(adata: Any, library_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """Return ``(library_id, uns['spatial'][library_id])``; the only library if not given."""
    libs = adata.uns.get(SPATIAL_KEY, {})
    if not libs:
        raise KeyError("AnnData has no uns['spatial'] library")
    if library_id is None:
        if len(libs) != 1:
            raise KeyError(f"AnnData has several spatial libraries {list(libs)}; choose one")
        library_id = next(iter(libs))
    return library_id, libs[library_id]


def microns_per_pixel(adata: Any, library_id: str | None = None) -> float | None:
    """Full-resolution µm/px of the library's image, or ``None`` when unknown."""
    _, lib = library(adata, library_id)
    for where in (lib.get("metadata", {}), lib.get("scalefactors", {})):
        value = where.get("microns_per_pixel")
        if value is not None and np.isfinite(float(value)) and float(value) > 0:
            return float(value)
    return None


def spot_diameter_px(adata: Any, library_id: str | None = None) -> float:
    """Spot diameter in full-resolution pixels (``scalefactors['spot_diameter_fullres']``)."""
    _, lib = library(adata, library_id)
    return float(lib["scalefactors"]["spot_diameter_fullres"])


def source_image_path(
    adata: Any, library_id: str | None = None, *, relative_to: str | PathLike[str] | None = None
) -> str | None:
    """Path of the full-resolution image the spots refer to, if recorded.

    A relative path (as in the shipped sample data) is resolved against ``relative_to``:
    the ``.h5ad`` file's folder (or the folder itself when a folder is given).
    """
    _, lib = library(adata, library_id)
    path = lib.get("metadata", {}).get("source_image_path")
    if not path:
        return None
    p = Path(str(path))
    if not p.is_absolute() and relative_to is not None:
        base = Path(relative_to)
        p = (base if base.is_dir() else base.parent) / p
    return str(p)


def spot_centres_px(adata: Any) -> np.ndarray:
    """Spot centres ``(n, 2)`` as ``(x, y)`` full-resolution pixels."""
    return np.asarray(adata.obsm[SPATIAL_KEY], dtype=np.float64)


def set_library(
    adata: Any,
    library_id: str,
    *,
    images: dict[str, np.ndarray],
    scalefactors: dict[str, float],
    metadata: dict[str, Any],
) -> None:
    """Write ``uns['spatial'][library_id]`` following the convention above.

    Keys whose value is ``None`` are left out of ``scalefactors`` and ``metadata``:
    the convention is "absent when unknown" (``.h5ad`` cannot store ``None`` in ``uns``),
    and the readers above all treat a missing key as unknown.
    """
    spatial = adata.uns.setdefault(SPATIAL_KEY, {})
    spatial[library_id] = {
        "images": dict(images),
        "scalefactors": {k: float(v) for k, v in scalefactors.items() if v is not None},
        "metadata": {k: v for k, v in metadata.items() if v is not None},
    }
