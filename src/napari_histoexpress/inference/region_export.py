"""Regions (QuPath annotations) and spots with their predicted genes → ``.h5ad``, ``.csv`` or
QuPath GeoJSON (Qt-free).

- :func:`regions_anndata`: one observation per annotation (:func:`.region_means.region_gene_table`):
  ``X`` = every gene's area-weighted mean over the region's predicted pixels; ``obs`` =
  :data:`~.region_means.REGION_COLUMNS` (index = the annotation's id); ``obsm["spatial"]`` =
  the centroid in full-resolution pixels (as for spots: ``x_um / slide_mpp``);
  ``uns["histoexpress"]`` = the map's provenance and ``aggregation = "area-weighted mean"``.
- :func:`geojson_features`: spots as QuPath *detections* (circles as polygons, name = the
  spot id, measurements = every gene + ``area_fraction`` + ``diameter_um``) and regions as
  QuPath *annotations* (their own geometry, name, class and colour kept; measurements =
  every gene + ``area_fraction`` + ``area_um2``), in QuPath full-resolution pixels
  (:mod:`napari_histoexpress.io.geojson`).
- :func:`export_regions` / :func:`export_geojson` write them atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..io.export import h5ad_safe, write_csv_atomic, write_h5ad_atomic
from ..io.geojson import Annotation, annotation_feature, circle_feature, write_features
from .map_store import DenseMapStore
from .region_means import REGION_COLUMNS, region_gene_table
from .spot_export import ExportError, ExportResult

__all__ = [
    "REGION_FORMATS",
    "export_geojson",
    "export_regions",
    "geojson_features",
    "regions_anndata",
    "regions_csv_table",
]

#: File formats :func:`export_regions` writes, by suffix.
REGION_FORMATS = (".h5ad", ".csv", ".geojson")
AGGREGATION = "area-weighted mean over the region's predicted map pixels"


def _open(store: DenseMapStore | str | os.PathLike[str]) -> DenseMapStore:
    return store if isinstance(store, DenseMapStore) else DenseMapStore.open(store, mode="r")


def _slide_mpp(store: DenseMapStore) -> float:
    mpp = store.slide_mpp
    if mpp is None or store.map_mpp is None:
        raise InputFileError(
            store.path, "the map store does not record µm/px; cannot place regions on it"
        )
    return float(mpp)


def _check_genes(genes: Sequence[str], reserved: Sequence[str]) -> None:
    clash = [g for g in genes if g in reserved]
    if clash:
        raise ExportError(f"gene name(s) {clash} clash with the region columns")


def regions_anndata(
    store: DenseMapStore | str | os.PathLike[str], annotations: Sequence[Annotation]
) -> Any:
    """The AnnData of the regions (see the module docstring)."""
    import anndata as ad

    from .. import __version__

    store = _open(store)
    if not len(annotations):
        raise ExportError("no regions to aggregate")
    mpp = _slide_mpp(store)
    table, x = region_gene_table(store, annotations)
    obs = table.copy()
    ids = obs["id"].astype(str)
    if ids.duplicated().any():  # QuPath ids are unique; hand-made files may repeat them
        ids = pd.Series([f"{v}_{i}" for i, v in enumerate(ids)])
    obs.index = ids.to_list()
    genes = [str(g) for g in store.genes]
    adata = ad.AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = obs[["x_um", "y_um"]].to_numpy(float) / mpp
    prov = h5ad_safe(store.provenance)
    adata.uns["histoexpress"] = {
        k: v
        for k, v in {
            "map_store": str(store.path),
            "map_mpp": store.map_mpp,
            "slide_mpp": mpp,
            "slide_path": store.slide_path,
            "aggregation": AGGREGATION,
            "package_version": __version__,
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
            "provenance": prov,
        }.items()
        if v is not None
    }
    return adata


def regions_csv_table(adata: Any) -> pd.DataFrame:
    """One row per region: :data:`~.region_means.REGION_COLUMNS` then every gene."""
    _check_genes([str(g) for g in adata.var_names], REGION_COLUMNS)
    fixed = adata.obs[list(REGION_COLUMNS)].reset_index(drop=True).copy()
    genes = pd.DataFrame(
        np.asarray(adata.X, dtype=np.float64), columns=[str(g) for g in adata.var_names]
    )
    return pd.concat([fixed, genes], axis=1)


def geojson_features(
    store: DenseMapStore | str | os.PathLike[str],
    *,
    spots: pd.DataFrame | None = None,
    annotations: Sequence[Annotation] | None = None,
) -> list[dict[str, Any]]:
    """QuPath GeoJSON features of the spots (detections) and regions (annotations) with
    their predicted genes as measurements (see the module docstring)."""
    from ..io.spot_table import validate_spots
    from .spots import predict_circles

    store = _open(store)
    mpp = _slide_mpp(store)
    genes = [str(g) for g in store.genes]
    features: list[dict[str, Any]] = []
    if annotations:
        _check_genes(genes, ("area_fraction", "area_um2"))
        table, x = region_gene_table(store, annotations)
        for i, ann in enumerate(annotations):
            values = dict(zip(genes, x[i].tolist(), strict=True))
            values.update(
                area_fraction=float(table["area_fraction"].iloc[i]),
                area_um2=float(table["area_um2"].iloc[i]),
            )
            features.append(
                annotation_feature(
                    ann.geometry,
                    object_type=ann.object_type or "annotation",
                    name=ann.name,
                    classification=ann.classification,
                    color=ann.color,
                    measurements={**ann.measurements, **values},
                    id=ann.id,
                )
            )
    if spots is not None and len(spots):
        _check_genes(genes, ("area_fraction", "diameter_um"))
        spots = validate_spots(spots)
        adata = predict_circles(store, spots)
        xs = np.asarray(adata.X, dtype=np.float64)
        frac = adata.obs["area_fraction"].to_numpy(float)
        for i, row in enumerate(spots.itertuples(index=False)):
            values = dict(zip(genes, xs[i].tolist(), strict=True))
            values.update(area_fraction=float(frac[i]), diameter_um=float(row.diameter_um))
            features.append(
                circle_feature(
                    float(row.x_um) / mpp + 0.5,
                    float(row.y_um) / mpp + 0.5,
                    float(row.diameter_um) / 2.0 / mpp,
                    name=str(row.id),
                    measurements=values,
                    id=str(row.id),
                )
            )
    return features


def export_geojson(
    store: DenseMapStore | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    spots: pd.DataFrame | None = None,
    annotations: Sequence[Annotation] | None = None,
) -> ExportResult:
    """Write spots and/or regions with their genes to a QuPath GeoJSON file, atomically."""
    store = _open(store)
    n = (0 if spots is None else len(spots)) + (0 if annotations is None else len(annotations))
    if n == 0:
        raise ExportError("nothing to export: no spots and no regions")
    features = geojson_features(store, spots=spots, annotations=annotations)
    try:
        write_features(features, path)
    except OSError as exc:
        raise InputFileError(path, f"cannot write the export ({exc.strerror or exc})") from exc
    return ExportResult(Path(path), len(features), len(store.genes))


def export_regions(
    store: DenseMapStore | str | os.PathLike[str],
    annotations: Sequence[Annotation],
    path: str | os.PathLike[str],
) -> ExportResult:
    """Write the regions' genes to ``path`` by suffix: ``.h5ad`` / ``.csv`` (one row per
    region) or ``.geojson`` (the annotations with the genes as measurements)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in REGION_FORMATS:
        raise ExportError(
            f"{path}: unknown export format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(REGION_FORMATS)}"
        )
    if suffix == ".geojson":
        return export_geojson(store, path, annotations=annotations)
    adata = regions_anndata(store, annotations)
    try:
        if suffix == ".csv":
            write_csv_atomic(regions_csv_table(adata), path, index=False)
        else:
            write_h5ad_atomic(adata, path)
    except OSError as exc:
        raise InputFileError(path, f"cannot write the export ({exc.strerror or exc})") from exc
    return ExportResult(path, adata.n_obs, adata.n_vars)
