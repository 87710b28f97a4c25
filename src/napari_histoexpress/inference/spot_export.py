"""Spots of a slide + their predicted expression → an ``.h5ad`` or ``.csv`` file (Qt-free).

The AnnData (:func:`spots_anndata`) follows :mod:`napari_histoexpress.io.spatial`, i.e.
scanpy/squidpy's ``spatial`` convention, so ``sc.pl.spatial(adata, color="ERBB2")`` draws the
spots on the slide and squidpy finds the image and its scale factors:

* ``X``: every gene's prediction aggregated over each spot
  (:func:`~napari_histoexpress.inference.spots.predict_circles` on the slide's dense map: the
  mean over the circle, on the model's scale, e.g. log1p counts per 10k for PixNet runs).
* ``obs`` (index = spot ``id``): ``id, x_um, y_um, diameter_um, source`` (the spots table of
  :mod:`napari_histoexpress.project`), ``area_fraction`` (share of the circle on predicted
  map pixels: inside the map and not on background skipped by tissue detection, whose
  pixels count neither as expression nor as area; 0 → ``NaN`` predictions) and
  ``diameter_px`` (the spot's own diameter in full-resolution slide pixels).
* ``obsm["spatial"]``: ``(x, y)`` centres in full-resolution slide pixels (level 0).
* ``uns["spatial"][library_id]`` (``library_id`` = the slide file name without suffixes):
  ``images["hires"]`` (longest side ≤ 2000 px) and ``images["lowres"]`` (≤ 600 px), uint8
  RGB read from the slide's pyramid by :mod:`napari_histoexpress.io.thumbnails` (smallest
  stored level at least as large as the target, Lanczos-resized); ``scalefactors``:
  ``tissue_hires_scalef`` / ``tissue_lowres_scalef`` = image side / full-resolution side
  (exact along the longest side; the other side is rounded to whole pixels),
  ``spot_diameter_fullres``, ``microns_per_pixel``; ``metadata`` as in :mod:`.spatial`.
* ``uns["histoexpress"]``: provenance: ``map_store``, ``map_mpp``, ``aggregation``,
  ``run_dir``, ``model``, ``genes``, ``slide_path``, ``package_version``, ``exported``
  (ISO date), ``predicted`` (date of the map), the map's full ``provenance``, ``spot_sizes``
  (the note below) and ``warnings`` (only when something went wrong, e.g. no image).

**Spot sizes.** ``sc.pl.spatial`` draws every spot with one size,
``scalefactors["spot_diameter_fullres"]``, which is the *median* spot diameter. Drawn spots may
have mixed sizes: each spot's own diameter is ``obs["diameter_um"]`` (µm) and
``obs["diameter_px"]`` (full-resolution pixels); the predictions always use each spot's own
circle.

**No image.** When the slide file is missing or unreadable (or no longer the size the map was
predicted on), the file is still written, without ``images`` and without the
``tissue_*_scalef`` factors, and ``uns["histoexpress"]["warnings"]`` says why; plot it with
``sc.pl.spatial(adata, color=gene, img_key=None)``.

CSV (:func:`spots_csv_table`): one row per spot, columns ``id, x_um, y_um, diameter_um,
source, area_fraction`` then every gene.

Writes are atomic (:mod:`.export`): a failed export leaves no partial file and does not
replace an existing file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import HistoExpressError, InputFileError
from ..io import spatial
from ..io.export import h5ad_safe, write_csv_atomic, write_h5ad_atomic

__all__ = [
    "CSV_FIXED_COLUMNS",
    "EXPORT_FORMATS",
    "SPOT_SIZES_NOTE",
    "ExportError",
    "ExportResult",
    "combine_spot_tables",
    "export_spots",
    "slide_images",
    "spots_anndata",
    "spots_csv_table",
]

#: File formats :func:`export_spots` writes, by suffix.
EXPORT_FORMATS = (".h5ad", ".csv", ".geojson", ".zarr")
#: The columns of the CSV export before the genes.
CSV_FIXED_COLUMNS = ("id", "x_um", "y_um", "diameter_um", "source", "area_fraction")
SPOT_SIZES_NOTE = (
    "sc.pl.spatial draws every spot with one size: scalefactors['spot_diameter_fullres'] = "
    "the median spot diameter (full-resolution px). Each spot's own diameter is "
    "obs['diameter_um'] (µm) and obs['diameter_px'] (full-resolution px); predictions use "
    "each spot's own circle."
)


class ExportError(HistoExpressError, ValueError):
    """An export cannot be made (e.g. no spots); the message says why."""


@dataclass
class ExportResult:
    """What :func:`export_spots` wrote."""

    path: Path
    n_spots: int
    n_genes: int
    warnings: list[str] = field(default_factory=list)


def combine_spot_tables(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One spots table from several (e.g. one per drawn-spots layer, keyed by layer name).

    Ids must be unique in the result: when an id appears in more than one table, the ids of
    every table after the first are prefixed with ``"<table name>:"``.
    """
    from ..io.spot_table import empty_spots, validate_spots

    parts = [validate_spots(df) for df in tables.values() if len(df)]
    if not parts:
        return empty_spots()
    names = [name for name, df in tables.items() if len(df)]
    ids = pd.concat([p["id"] for p in parts])
    if ids.duplicated().any():
        for i in range(1, len(parts)):
            parts[i] = parts[i].assign(id=[f"{names[i]}:{v}" for v in parts[i]["id"]])
    return validate_spots(pd.concat(parts, ignore_index=True))


def slide_images(
    slide_path: str | os.PathLike[str] | None,
    expected_shape: Sequence[int] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float], str | None]:
    """``(images, scalefactors, warning)``: hires/lowres thumbnails of the slide and their
    ``tissue_*_scalef``; empty dicts and a warning when the slide cannot be used."""
    from ..io.slides import open_slide
    from ..io.thumbnails import thumbnails_from_slide

    if not slide_path:
        return {}, {}, "the map store does not record its slide file; exported without image"
    try:
        with open_slide(slide_path) as slide:
            if expected_shape is not None and tuple(slide.shape) != tuple(
                int(v) for v in expected_shape[:2]
            ):
                return (
                    {},
                    {},
                    f"{slide_path}: the slide is {slide.shape[0]} x {slide.shape[1]} px but the "
                    f"map was predicted on {expected_shape[0]} x {expected_shape[1]} px; "
                    "exported without image",
                )
            images, scalefactors = thumbnails_from_slide(slide)
    except Exception as exc:  # any unreadable slide: export without image, say why
        problem = str(exc) if isinstance(exc, InputFileError) else f"{slide_path}: {exc}"
        return {}, {}, f"{problem}; cannot read the slide image, exported without image"
    return images, scalefactors, None


def spots_anndata(
    store: Any,
    spots: pd.DataFrame,
    *,
    slide_path: str | os.PathLike[str] | None = None,
    library_id: str | None = None,
    reduce: str = "mean",
    with_images: bool = True,
) -> Any:
    """The AnnData of ``spots`` (a :mod:`~napari_histoexpress.project` spots table) with the
    expression predicted by the dense-map ``store`` (a store or its path); see the module
    docstring. ``slide_path`` defaults to the slide recorded in the store."""
    from .. import __version__
    from ..io.spot_table import validate_spots
    from .map_store import DenseMapStore
    from .spots import predict_circles

    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    if len(spots) == 0:
        raise ExportError("no spots to export: draw or grid spots on the slide first")
    spots = validate_spots(spots)
    slide_path = str(slide_path or store.slide_path or "") or None
    if library_id is None and slide_path:
        library_id = Path(slide_path).name.split(".")[0] or None

    adata = predict_circles(store, spots, library_id=library_id, reduce=reduce)
    lib_id, lib = spatial.library(adata)
    slide_mpp = float(lib["scalefactors"]["microns_per_pixel"])
    adata.obs["diameter_px"] = adata.obs["diameter_um"].to_numpy(float) / slide_mpp

    warnings: list[str] = []
    images: dict[str, np.ndarray] = {}
    scalef: dict[str, float] = {}
    if with_images:
        images, scalef, warning = slide_images(slide_path, store.slide_shape)
        if warning:
            warnings.append(warning)
    median_um = float(np.median(spots["diameter_um"]))
    spatial.set_library(
        adata,
        lib_id,
        images=images,
        scalefactors={
            **scalef,
            "spot_diameter_fullres": median_um / slide_mpp,
            "microns_per_pixel": slide_mpp,
        },
        metadata={
            **lib.get("metadata", {}),
            "source_image_path": os.path.abspath(slide_path) if slide_path else None,
            "spot_diameter_um": median_um,
        },
    )

    prov = h5ad_safe(store.provenance)
    info = dict(adata.uns.get("histoexpress", {}))
    info.update(
        run_dir=prov.get("run_dir"),
        model=prov.get("model") or prov.get("model_name"),
        genes=[str(g) for g in adata.var_names],
        slide_path=slide_path,
        package_version=__version__,
        exported=datetime.now(UTC).isoformat(timespec="seconds"),
        predicted=prov.get("created"),
        spot_sizes=SPOT_SIZES_NOTE,
    )
    if warnings:
        info["warnings"] = warnings
    adata.uns["histoexpress"] = {k: v for k, v in info.items() if v is not None}
    return adata


def spots_csv_table(adata: Any) -> pd.DataFrame:
    """One row per spot: :data:`CSV_FIXED_COLUMNS` then every gene (``adata.var_names``)."""
    fixed = adata.obs[list(CSV_FIXED_COLUMNS)].reset_index(drop=True).copy()
    for col in ("id", "source"):
        fixed[col] = fixed[col].astype(str)
    clash = [g for g in adata.var_names if g in CSV_FIXED_COLUMNS]
    if clash:
        raise ExportError(f"gene name(s) {clash} clash with the CSV's spot columns")
    genes = pd.DataFrame(
        np.asarray(adata.X, dtype=np.float64), columns=[str(g) for g in adata.var_names]
    )
    return pd.concat([fixed, genes], axis=1)


def _store_genes(store: Any) -> list[str]:
    from .map_store import DenseMapStore

    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    return list(store.genes)


def export_spots(
    store: Any,
    spots: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    slide_path: str | os.PathLike[str] | None = None,
    library_id: str | None = None,
    reduce: str = "mean",
    annotations: Sequence[Any] | None = None,
    gene_maps: Sequence[str] = (),
) -> ExportResult:
    """Write the spots' predicted expression to ``path`` (``.h5ad`` or ``.csv``, by suffix),
    atomically; ``.geojson`` writes QuPath objects (:mod:`.region_export`: the spots as
    detections and ``annotations``, regions, with every gene as a measurement). Raises
    ``.zarr`` writes a SpatialData store (:mod:`.spatialdata_export`: the slide, the spots
    as circles, their predictions as the table, and ``gene_maps`` as dense maps). Raises
    :class:`ExportError` (no spots, unknown format) or
    :class:`~napari_histoexpress.errors.InputFileError` (missing or unwritable folder)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ExportError(
            f"{path}: unknown export format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(EXPORT_FORMATS)}"
        )
    if suffix == ".geojson":
        from .region_export import export_geojson

        return export_geojson(store, path, spots=spots, annotations=annotations)
    if suffix == ".zarr":  # a SpatialData store (:mod:`.spatialdata_export`)
        from .spatialdata_export import export_spatialdata

        if len(spots) == 0:
            raise ExportError("no spots to export: draw or grid spots on the slide first")
        sd = export_spatialdata(store, path, spots, genes=gene_maps, slide_path=slide_path)
        return ExportResult(sd.path, sd.n_spots, len(_store_genes(store)), sd.warnings)
    adata = spots_anndata(
        store,
        spots,
        slide_path=slide_path,
        library_id=library_id,
        reduce=reduce,
        with_images=suffix == ".h5ad",
    )
    try:
        if suffix == ".csv":
            write_csv_atomic(spots_csv_table(adata), path, index=False)
        else:
            write_h5ad_atomic(adata, path)
    except OSError as exc:
        raise InputFileError(path, f"cannot write the export ({exc.strerror or exc})") from exc
    warnings = [str(w) for w in adata.uns["histoexpress"].get("warnings", [])]
    return ExportResult(path, adata.n_obs, adata.n_vars, warnings)
