"""napari layer-data tuples for slides and spots, built from the Qt-free ``io`` layer.

Nothing here imports napari or Qt: the functions return ``(data, kwargs, layer_type)``
tuples that napari's reader and sample-data hooks accept, so they can be tested and reused
without a viewer.

World units: when a slide's µm/px is known every layer gets ``scale = (mpp, mpp)``, so the
viewer's coordinates, scale bar and drawn spot sizes are in **µm**. When it is unknown the
scale stays 1 (pixels) and the layer metadata says so (``microns_per_pixel: None``,
``mpp_source: "unknown"``); a warning names the file. :func:`set_microns_per_pixel` fixes it
later for one layer (the Predict widget's µm/px field does it for every layer of the slide
and remembers the value, :mod:`napari_histoexpress.slide_settings`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from .io import spatial

if TYPE_CHECKING:
    from .inference.map_store import DenseMapStore

#: Slide-layer metadata key holding the path of the slide's dense-map store (the reader sets
#: it for a stored map, the widgets for a new prediction).
MAP_KEY = "histoexpress_map"

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Genes whose measured values are copied into the spots layer's ``features`` table (the
#: highest-mean genes). All genes stay reachable through ``metadata["adata"]``; copying all
#: ~15k genes of a her2st section into napari's features table makes adding or moving a
#: point slow (every column is touched), so the table is capped.
MAX_FEATURE_GENES = 500


def _scale(mpp: float | None) -> tuple[float, float]:
    return (float(mpp), float(mpp)) if mpp else (1.0, 1.0)


def world_kwargs(mpp: float | None) -> dict[str, Any]:
    """``scale`` (and ``units`` = µm when known) so napari's world and scale bar are in µm."""
    kw: dict[str, Any] = {"scale": _scale(mpp)}
    if mpp:
        kw["units"] = ("micrometer", "micrometer")
    return kw


def slide_layer_data(slide: Any, name: str | None = None) -> LayerDataTuple:
    """One multiscale RGB image layer for an opened :class:`~.io.slides.Slide`."""
    path = Path(slide.path)
    if slide.mpp is None:
        warnings.warn(
            f"{path}: the slide's µm/px is unknown (no resolution metadata); it is shown in "
            "pixels. Type it in the Predict widget's 'slide µm/px' field (it is remembered "
            "for this slide); from Python use set_microns_per_pixel, on the command line "
            "--mpp.",
            stacklevel=2,
        )
    levels = list(slide.levels)
    kwargs: dict[str, Any] = {
        "name": name or path.name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        **world_kwargs(slide.mpp),
        "metadata": {
            "histoexpress": "slide",
            "path": str(path),
            "microns_per_pixel": slide.mpp,
            "mpp_source": slide.mpp_source,
            "shape": tuple(int(s) for s in slide.shape),
            "downsamples": list(slide.downsamples),
        },
    }
    data = levels if len(levels) > 1 else levels[0]
    return (data, kwargs, "image")


def _spot_features(adata: Any, max_genes: int = MAX_FEATURE_GENES) -> pd.DataFrame:
    """Per-spot table: library size plus log1p(counts per 10k) of the top genes by mean count."""
    from .expression import expression_matrix, raw_counts, select_genes

    totals = np.asarray(raw_counts(adata).sum(axis=1), dtype=np.float32).ravel()
    genes = select_genes([adata], n=min(max_genes, adata.n_vars))
    features = pd.DataFrame(expression_matrix(adata, genes), columns=genes)
    features.insert(0, "total_counts", totals)
    features.insert(0, "spot", [str(s) for s in adata.obs_names])
    return features


def spots_layer_data(
    adata: Any,
    *,
    name: str | None = None,
    library_id: str | None = None,
    color_by: str | None = None,
) -> LayerDataTuple:
    """A Points layer with one point per spot at its true diameter.

    ``features`` holds ``spot``, ``total_counts`` and log1p(counts per 10k) of the top
    :data:`MAX_FEATURE_GENES` genes, so any of them can colour the points
    (``layer.face_color = "ERBB2"``); the full AnnData is in ``metadata["adata"]``.
    """
    lib_id, _lib = spatial.library(adata, library_id)
    mpp = spatial.microns_per_pixel(adata, lib_id)
    xy = spatial.spot_centres_px(adata)
    diameter = spatial.spot_diameter_px(adata, lib_id)
    features = _spot_features(adata)
    colour = color_by if color_by in features.columns else "total_counts"
    kwargs: dict[str, Any] = {
        "name": name or f"{lib_id} spots",
        "size": diameter,
        **world_kwargs(mpp),
        "features": features,
        "face_color": colour,
        "face_colormap": "viridis",
        "border_width": 0.05,
        "border_color": "white",
        "opacity": 0.8,
        "metadata": {
            "histoexpress": "spots",
            "library_id": lib_id,
            "microns_per_pixel": mpp,
            "spot_diameter_px": diameter,
            "spot_diameter_um": diameter * mpp if mpp else None,
            "adata": adata,
        },
    }
    return (xy[:, ::-1].copy(), kwargs, "points")


def st_layers(adata: Any, source: str | Path | None = None) -> list[LayerDataTuple]:
    """Slide (full-resolution source image, else the hires thumbnail) plus the spots layer."""
    from .io.slides import open_slide

    lib_id, lib = spatial.library(adata)
    mpp = spatial.microns_per_pixel(adata, lib_id)
    layers: list[LayerDataTuple] = []
    image_path = spatial.source_image_path(adata, lib_id, relative_to=source)
    if image_path is not None and Path(image_path).exists():
        slide = open_slide(image_path, mpp=mpp)
        layers.append(slide_layer_data(slide, name=f"{lib_id} H&E"))
    elif "hires" in lib.get("images", {}):
        scalef = float(lib["scalefactors"]["tissue_hires_scalef"])
        full = mpp / scalef if mpp else 1.0 / scalef
        layers.append(
            (
                np.asarray(lib["images"]["hires"]),
                {
                    "name": f"{lib_id} H&E (hires thumbnail)",
                    "rgb": True,
                    "scale": (full, full),
                    **({"units": ("micrometer", "micrometer")} if mpp else {}),
                    "metadata": {"histoexpress": "slide", "microns_per_pixel": mpp},
                },
                "image",
            )
        )
        if image_path is not None:
            warnings.warn(
                f"{image_path}: full-resolution image not found; showing the hires thumbnail",
                stacklevel=2,
            )
    layers.append(spots_layer_data(adata, library_id=lib_id))
    return layers


#: Computed tiles read for the contrast limits of a map whose pyramid is not built yet.
HEATMAP_LIMIT_TILES = 16


def _heatmap_sample(store: DenseMapStore, gene: str) -> np.ndarray:
    """Predicted (non-background) values of ``gene`` read with bounded work for contrast limits.

    The coarsest stored pyramid level when the pyramid is built (a few thousand pixels);
    otherwise (a partial run) at most :data:`HEATMAP_LIMIT_TILES` computed tiles of level 0,
    evenly spread over the computed ones: pooling level 0 lazily would read the whole map.
    Values come from the store's :meth:`~.inference.map_store.DenseMapStore.head_block` (the
    per-chunk head of the heatmap itself); with nothing predicted yet, the gene's bias (the
    head of a zero feature vector) stands in, so the limits are still defined.
    """
    g = store.gene_index(gene)
    n = store.n_levels
    if store.pyramid_built:
        values = store.head_block(np.asarray(store.features_level(n - 1), np.float32), g)
        finite = values[np.isfinite(values)]  # background reads as NaN
        return finite if finite.size else _bias(store, g)
    rows, cols = np.nonzero(store.coverage == 1)
    if len(rows) == 0:
        return _bias(store, g)
    pick = np.unique(np.linspace(0, len(rows) - 1, min(HEATMAP_LIMIT_TILES, len(rows))).astype(int))
    level0 = store.features_level(0)
    ch, cw = store.chunk
    parts = []
    for r, c in zip(rows[pick], cols[pick], strict=True):
        feats = np.asarray(level0[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw], np.float32)
        parts.append(store.head_block(feats, g).ravel())
    return np.concatenate(parts)


def _bias(store: DenseMapStore, g: int) -> np.ndarray:
    """``[b_g]`` float32: the head applied to a zero feature vector."""
    return store.head_block(np.zeros((1, store.feature_dim), np.float32), g).astype(np.float32)


def gene_heatmap_layer_data(
    store: DenseMapStore,
    gene: str,
    *,
    colormap: str = "magma",
    opacity: float = 0.6,
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> LayerDataTuple:
    """A multiscale image layer of one gene's predicted map, aligned with its slide in µm.

    The data are the store's lazy per-level gene maps (``features · w + b`` per chunk), so
    only visible tiles are computed. Pixels never predicted (background tiles skipped by
    tissue detection, tiles still pending) are NaN at every level, which napari draws fully
    transparent (tested in a real viewer): the slide shows through, not the head's bias.
    Alignment: map pixel ``j`` covers slide µm
    ``[j, j + 1) · map_mpp`` from the slide's corner, and napari puts slide pixel ``p`` at
    world ``p · slide_mpp`` (pixel centres), so the layer's ``scale`` is ``map_mpp`` and its
    ``translate`` is ``(map_mpp − slide_mpp) / 2``. Contrast limits are the given robust
    percentiles of the coarsest level over predicted (non-background) pixels, or of a few
    computed tiles while the pyramid is not built (:func:`_heatmap_sample`): creating the
    layer never reads the whole map.
    """
    map_mpp = float(cast(float, store.map_mpp))
    slide_mpp = store.slide_mpp or map_mpp
    levels = [store.gene_map(gene, level=k) for k in range(store.n_levels)]
    values = _heatmap_sample(store, gene)
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if not hi > lo:
        hi = lo + 1e-6
    offset = (map_mpp - slide_mpp) / 2.0
    kwargs: dict[str, Any] = {
        "name": str(gene),
        "multiscale": len(levels) > 1,
        "scale": (map_mpp, map_mpp),
        "translate": (offset, offset),
        "units": ("micrometer", "micrometer"),
        "colormap": colormap,
        "opacity": opacity,
        "blending": "translucent",
        "contrast_limits": (lo, hi),
        "metadata": {"histoexpress": "heatmap", "gene": str(gene), "map": str(store.path)},
    }
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def heatmap_tiff_layers(path: str | Path) -> list[LayerDataTuple]:
    """The gene heatmap layers of a heatmap OME-TIFF written by
    :func:`~.inference.heatmap_export.export_heatmap_ome_tiff`: one multiscale image layer
    per gene, as :func:`gene_heatmap_layer_data` makes them (colormap, opacity, the recorded
    contrast limits), aligned with the slide in µm.

    Scale = the file's µm/px; on the map's grid the translate is ``(map_mpp − slide_mpp) / 2``
    (the file records the slide's µm/px), on the slide's grid 0, as for the slide layer.
    Background is transparent: NaN as written, or, in a zero-background file with the
    ``predicted`` mask channel, the pixels the mask marks as background (the mask itself is
    not shown). Read tile by tile (dask).
    """
    import dask.array as da

    from .io.heatmap_tiff import MASK_CHANNEL, open_heatmap_tiff

    hm = open_heatmap_tiff(path)
    mpp = hm.mpp
    offset = 0.0
    if mpp is not None and hm.grid == "map" and hm.slide_mpp is not None:
        offset = (mpp - hm.slide_mpp) / 2.0
    mask_at = hm.channels.index(MASK_CHANNEL) if MASK_CHANNEL in hm.channels else None
    layers: list[LayerDataTuple] = []
    for c, gene in enumerate(hm.channels):
        if c == mask_at:
            continue
        levels = []
        for lv in hm.levels:
            values = lv[c]
            if mask_at is not None:
                values = da.where(lv[mask_at] > 0, values, np.float32(np.nan))
            levels.append(values)
        kwargs: dict[str, Any] = {
            "name": gene,
            "multiscale": len(levels) > 1,
            **world_kwargs(mpp),
            "translate": (offset, offset),
            "colormap": "magma",
            "opacity": 0.6,
            "blending": "translucent",
            "metadata": {"histoexpress": "heatmap", "gene": gene, "file": str(hm.path)},
        }
        limits = hm.contrast_limits(gene)
        if limits is not None:
            kwargs["contrast_limits"] = limits
        layers.append((levels if len(levels) > 1 else levels[0], kwargs, "image"))
    return layers


def color_spots_by(layer: Any, column: str) -> None:
    """Colour a spots layer by a ``features`` column (a gene), rescaling the colormap to it.

    (Assigning ``layer.face_color = gene`` alone keeps the previous column's contrast
    limits in napari, which can leave every spot the same colour.)
    """
    if column not in layer.features.columns:
        raise KeyError(f"{column!r} is not a column of the spots' features")
    layer.face_color = column
    layer.refresh_colors(update_color_mapping=True)


def set_microns_per_pixel(layer: Any, mpp: float) -> None:
    """Set the µm/px of a slide or spots layer made by this plugin (updates scale + metadata)."""
    if not mpp or mpp <= 0 or not np.isfinite(mpp):
        raise ValueError(f"µm/px must be a positive number, got {mpp!r}")
    layer.scale = (float(mpp), float(mpp))
    layer.units = ("micrometer", "micrometer")
    layer.metadata["microns_per_pixel"] = float(mpp)
    layer.metadata["mpp_source"] = "user"
