"""Circles of any size on a stored dense map → expression of every gene (AnnData).

Coordinates. Circles are given in **µm** as napari shows them for a slide layer with
``scale = (mpp, mpp)``: ``x_um = column · slide_mpp``, ``y_um = row · slide_mpp`` with pixel
*centres* at integer pixel indices (so ``obsm['spatial'] = (x_um, y_um) / slide_mpp``). The
stored map's pixel ``j`` covers slide µm ``[j, j + 1) · map_mpp`` measured from the slide's
corner (:mod:`.predict_slide` places tiles that way), so a circle goes to map-grid
coordinates as ``q = (x_um + slide_mpp / 2) / map_mpp − 1/2`` and ``r_q = r_um / map_mpp``,
in :mod:`napari_histoexpress.geometry`'s pixel-centre convention.

Aggregation. Exact area weights at partial pixels and O(radius) per circle, every circle of a
table in one vectorised pass (:mod:`.prefix_cache`: per-chunk row-wise prefix sums of the
stored *features*, C channels, and :func:`~napari_histoexpress.geometry.prefix_knots`), then
the linear head once per circle — equal to aggregating each gene map because the head is
affine and the weights of a mean sum to one.

Background. Pixels the prediction never computed (background tiles skipped by tissue
detection, tiles still pending in a partial map) read as NaN from the store and have no value
and no weight (:mod:`napari_histoexpress.geometry`): a circle overlapping background gets the
mean over its *predicted* part, never the head's bias counted as expression, and
``area_fraction`` says which share of the circle that is (1 = fully on predicted map,
0 = entirely on background or off the map → ``NaN`` predictions).
Filter on it when a spot must be fully on tissue.

Memory stays bounded whatever the map size and the number of circles: circles are taken in
spatial order in batches of bounded size, the chunks' prefix sums live in an LRU cache of a
fixed byte budget, and the head is applied block by block into the float32 ``X``; a whole
Visium HD capture area (~660,000 bins of 8 µm) needs memory for its ``X`` and little else
(``benchmarks/bench_live_spots.py`` measures it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..io.export import h5ad_safe
from .map_store import DenseMapStore
from .prefix_cache import PrefixChunkCache, circle_sums, iter_circle_sums, pooled_means

CIRCLE_COLUMNS = ("x_um", "y_um", "diameter_um")
#: Prefix-sum cache of one :func:`aggregate_circles` call (MiB): 30 chunks of 128 × 128 × 64.
DEFAULT_CACHE_MB = 256.0


def read_circles(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a circles table (CSV/TSV) with columns ``x_um, y_um, diameter_um`` (+ any others)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep=None, engine="python")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot read the circles table ({exc})") from exc
    missing = [c for c in CIRCLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputFileError(path, f"missing column(s) {missing}; need {list(CIRCLE_COLUMNS)}")
    values = df[list(CIRCLE_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1) | (values["diameter_um"] <= 0)
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy())[:5] + 2).tolist()  # 1-based + header line
        raise InputFileError(path, f"invalid or non-positive values on line(s) {rows}")
    df[list(CIRCLE_COLUMNS)] = values
    return df


def circles_to_grid(
    x_um: np.ndarray,
    y_um: np.ndarray,
    diameter_um: np.ndarray,
    *,
    map_mpp: float,
    slide_mpp: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(centres (N, 2) (x, y), radii (N,))`` in map-grid pixels (see module docstring)."""
    cx = (np.asarray(x_um, float) + slide_mpp / 2.0) / map_mpp - 0.5
    cy = (np.asarray(y_um, float) + slide_mpp / 2.0) / map_mpp - 0.5
    return np.stack([cx, cy], axis=1), np.asarray(diameter_um, float) / 2.0 / map_mpp


def aggregate_circles(
    store: DenseMapStore,
    centres: np.ndarray,
    radii: np.ndarray,
    *,
    block_px: int = 1024,
    reduce: str = "mean",
    progress: Callable[[int, int], None] | None = None,
    cache: PrefixChunkCache | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``(N, C)`` and predicted area ``(N,)`` (map px²) of circles on the
    store: means (``reduce="mean"``) or sums (``"sum"``) over the predicted pixels of each
    circle; rows of circles with no predicted pixel (area 0) are ``NaN``.

    All circles go through one vectorised aggregation
    (:func:`~.prefix_cache.circle_sums`): exact, in spatial batches of ``block_px`` map
    blocks, reading each feature chunk about once into a prefix-sum cache of ``cache_mb``
    MiB (or the given ``cache``), so memory is bounded whatever the number of circles.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if cache is None:
        cache = PrefixChunkCache(store, budget_bytes=int(cache_mb * 2**20))
    sums, area = circle_sums(cache, centres, radii, block_px=block_px, progress=progress)
    if reduce == "mean":
        return pooled_means(sums, area), area
    sums[area <= 0] = np.nan
    return sums, area


def _stream_genes(
    store: DenseMapStore, centres: np.ndarray, radii: np.ndarray, n_genes: int, *, reduce: str
) -> tuple[np.ndarray, np.ndarray]:
    """``X (N, n_genes)`` float32 (the head's first ``n_genes`` genes, so genes added while
    it runs do not change the columns) and the predicted areas: each batch of circles is
    aggregated and goes through the head straight into its rows of ``X`` (no ``(N, C)``
    or ``(N, G)`` float64 array for the whole table)."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    cache = PrefixChunkCache(store, budget_bytes=int(DEFAULT_CACHE_MB * 2**20))
    columns = list(range(n_genes))
    x = np.empty((len(radii), n_genes), dtype=np.float32)
    area = np.zeros(len(radii))
    for idx, sums, a in iter_circle_sums(cache, centres, radii):
        pooled = (
            pooled_means(sums, a) if reduce == "mean" else np.where(a[:, None] > 0, sums, np.nan)
        )
        x[idx] = store.apply_head(pooled, genes=columns, area=a, reduce=reduce)
        area[idx] = a
    return x, area


def predict_circles(
    store: DenseMapStore | str | os.PathLike[str],
    circles: pd.DataFrame,
    *,
    library_id: str | None = None,
    reduce: str = "mean",
) -> Any:
    """An AnnData of the circles: ``X`` = every gene's aggregated prediction.

    ``X`` is on the model's scale (log1p counts per 10k for PixNet runs: the mean over the
    circle of the dense map, over its predicted pixels). ``obs`` keeps the input columns plus
    ``area_fraction`` (share of the circle on predicted map pixels, i.e. inside the map and
    not on skipped background; 0 → ``NaN`` predictions); ``obsm['spatial']`` are slide
    pixels; ``uns['spatial'][library_id]`` follows :mod:`napari_histoexpress.io.spatial`
    (``spot_diameter_fullres`` = median circle diameter; each circle's own diameter is in
    ``obs['diameter_um']``); ``var`` says where each gene's column came from
    (``zero_shot``: predicted from its description by a zero-shot model, ``gene_source``,
    ``gene_description``: the text it was predicted from, when one was given);
    ``uns['histoexpress']`` records the map's provenance.
    """
    import anndata as ad

    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
    if slide_mpp is None or map_mpp is None:
        raise InputFileError(
            store.path, "the map store does not record µm/px; cannot place circles in µm"
        )
    centres, radii = circles_to_grid(
        circles["x_um"].to_numpy(),
        circles["y_um"].to_numpy(),
        circles["diameter_um"].to_numpy(),
        map_mpp=map_mpp,
        slide_mpp=slide_mpp,
    )
    genes = list(store.genes)
    genes_x, area = _stream_genes(store, centres, radii, len(genes), reduce=reduce)
    obs = circles.reset_index(drop=True).copy()
    obs.index = [str(v) for v in (obs["id"] if "id" in obs else range(len(obs)))]
    obs["area_fraction"] = area / (np.pi * radii**2)
    sources = store.gene_sources
    var = pd.DataFrame(
        {
            "zero_shot": [src.source == "zero-shot" for src in sources],
            "gene_source": [src.source for src in sources],
            "gene_description": [src.description or "" for src in sources],
        },
        index=genes,
    )
    adata = ad.AnnData(X=genes_x, obs=obs, var=var)
    xy_px = np.stack([circles["x_um"].to_numpy(), circles["y_um"].to_numpy()], 1) / slide_mpp
    adata.obsm["spatial"] = xy_px
    lib = library_id or Path(store.slide_path or "slide").name.split(".")[0]
    diam_px = float(np.median(circles["diameter_um"])) / slide_mpp if len(circles) else 0.0
    adata.uns["spatial"] = {
        lib: {
            "images": {},
            "scalefactors": {
                "spot_diameter_fullres": diam_px,
                "tissue_hires_scalef": 1.0,
                "microns_per_pixel": slide_mpp,
            },
            "metadata": {
                "source_image_path": store.slide_path or "",
                "microns_per_pixel": slide_mpp,
                "mpp_source": "map-store",
                "technology": "predicted",
            },
        }
    }
    adata.uns["histoexpress"] = {
        "map_store": str(store.path),
        "map_mpp": map_mpp,
        "aggregation": reduce,
        "provenance": h5ad_safe(store.provenance),
    }
    return adata
