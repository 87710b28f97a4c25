"""Spatial-transcriptomics datasets → the one spatial AnnData representation.

Every reader returns an :class:`~anndata.AnnData` following
:mod:`napari_histoexpress.io.spatial` (raw counts in ``X``, spot centres in full-resolution
pixels in ``obsm['spatial']``, one library in ``uns['spatial']`` with thumbnails, scale
factors and metadata). Readers:

* :func:`read_visium` — a 10x Space Ranger output folder (:mod:`.visium`),
* :func:`read_legacy_st` — legacy ST sections (her2st, ST alignment tables; :mod:`.legacy_st`),
* :func:`read_h5ad` — an ``.h5ad`` already in the convention (validated),
* :func:`read_st_dataset` — dispatches a path to :func:`read_h5ad` or :func:`read_visium`
  (legacy ST needs three files and is called directly).

:func:`import_summary` gives the one line a user sees after an import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from ..errors import InputFileError
from .legacy_st import read_legacy_st
from .spatial import SPATIAL_KEY, library_ids, microns_per_pixel
from .spatialdata_import import is_spatialdata_store, read_spatialdata
from .visium import is_spaceranger_folder, read_visium

__all__ = ["import_summary", "read_h5ad", "read_legacy_st", "read_st_dataset", "read_visium"]


def validate_spatial(adata: AnnData, path: str | Path) -> None:
    """Raise :class:`InputFileError` naming ``path`` unless ``adata`` follows the convention.

    Checked: ``obsm['spatial']`` present with shape ``(n_obs, 2)`` and finite values, at
    least one library in ``uns['spatial']``, each with ``scalefactors`` holding
    ``spot_diameter_fullres`` (needed to draw or aggregate spots).
    """
    if SPATIAL_KEY not in adata.obsm:
        raise InputFileError(path, "no obsm['spatial'] (spot centres in full-resolution pixels)")
    coords = np.asarray(adata.obsm[SPATIAL_KEY])
    if coords.ndim != 2 or coords.shape != (adata.n_obs, 2):
        raise InputFileError(
            path, f"obsm['spatial'] has shape {coords.shape}, expected ({adata.n_obs}, 2)"
        )
    if not np.issubdtype(coords.dtype, np.number) or not np.isfinite(coords).all():
        raise InputFileError(path, "obsm['spatial'] has non-numeric or non-finite values")
    libs = adata.uns.get(SPATIAL_KEY)
    if not isinstance(libs, dict) or not libs:
        raise InputFileError(path, "no spatial library in uns['spatial']")
    for lib_id, lib in libs.items():
        scalefactors = lib.get("scalefactors", {}) if isinstance(lib, dict) else {}
        if "spot_diameter_fullres" not in scalefactors:
            raise InputFileError(
                path, f"uns['spatial']['{lib_id}'] has no scalefactors['spot_diameter_fullres']"
            )


def read_h5ad(path: str | Path) -> AnnData:
    """Read an ``.h5ad``; check it follows the convention (:func:`validate_spatial`)."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "file not found")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a non-h5ad file
        raise InputFileError(
            path, f"not a readable .h5ad file ({type(exc).__name__}: {exc})"
        ) from exc
    adata.var_names_make_unique()
    validate_spatial(adata, path)
    return adata


def read_st_dataset(path: str | Path) -> AnnData:
    """Read an ``.h5ad`` file, a Space Ranger folder or a SpatialData store (its only table,
    :mod:`.spatialdata_import`), whichever ``path`` is."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".h5ad":
        return read_h5ad(path)
    if path.is_dir():
        if is_spaceranger_folder(path):
            return read_visium(path)
        if is_spatialdata_store(path):
            return read_spatialdata(path)
        raise InputFileError(
            path,
            "not a Space Ranger output folder (no filtered_feature_bc_matrix.h5 or spatial/) "
            "nor a SpatialData store; "
            "legacy ST sections are read with read_legacy_st(image, counts, spots)",
        )
    if not path.exists():
        raise InputFileError(path, "file or folder not found")
    raise InputFileError(path, "expected an .h5ad file or a Space Ranger output folder")


def _metadata(adata: AnnData, lib_id: str) -> dict[str, Any]:
    return adata.uns[SPATIAL_KEY][lib_id].get("metadata", {})


def import_summary(adata: AnnData) -> str:
    """One line describing an imported dataset, e.g.
    ``"C3: 180 spots, 15,821 genes, 0.687 µm/px (st-array-pitch), 2 spots dropped (no counts)"``.
    """
    libs = library_ids(adata)
    name = ", ".join(libs) if libs else "(no library)"
    parts = [f"{name}: {adata.n_obs:,} spots", f"{adata.n_vars:,} genes"]
    if len(libs) == 1:
        meta = _metadata(adata, libs[0])
        mpp = microns_per_pixel(adata, libs[0])
        source = meta.get("mpp_source", "unknown")
        parts.append(f"{mpp:.3f} µm/px ({source})" if mpp else f"µm/px unknown ({source})")
        dropped = int(meta.get("n_dropped_spots", 0))
        if dropped:
            parts.append(f"{dropped:,} spot{'s' if dropped != 1 else ''} dropped (no counts)")
        rows = int(meta.get("n_dropped_count_rows", 0))
        if rows:
            parts.append(f"{rows:,} count row{'s' if rows != 1 else ''} dropped (no selected spot)")
    elif libs:
        parts.append(f"{len(libs)} libraries")
    return ", ".join(parts)
