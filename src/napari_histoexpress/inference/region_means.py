"""Every gene's area-weighted mean inside polygons (QuPath annotations) on a dense map.

Geometry. Regions are shapely polygons (holes and ``MultiPolygon`` parts allowed) in
**QuPath full-resolution pixels** (:mod:`napari_histoexpress.io.geojson`: the slide's
top-left corner at ``(0, 0)``). ``X · slide_mpp`` is then µm from the slide's corner, and the
stored map's pixel ``(r, c)`` covers ``[c, c + 1) × [r, r + 1) · map_mpp`` µm from that corner
(:mod:`.predict_slide` places tiles that way; :mod:`.spots` uses the same placement), so a
region goes to map pixels by one scale, ``u = X · slide_mpp / map_mpp``.

Weights. Each map pixel counts with the exact area of ``pixel square ∩ region``: pixels
near the boundary (found by walking the boundary densified to half-pixel steps, plus their
eight neighbours) get it from shapely's intersection of the polygon with their squares;
every other pixel is wholly inside or outside, decided by its centre
(``shapely.contains_xy``), all vectorised per map chunk. Pixels never predicted (background
tiles skipped by tissue detection, pending tiles: NaN in the store) and the part of a
region off the map count neither as expression nor as area, as for circles (:mod:`.spots`):
the mean is over the region's predicted part, ``area_fraction`` says which share of the
region that is (0 → ``NaN`` genes).

Cost: features are read chunk by chunk (only the predicted chunks a region touches), so
memory stays at one chunk whatever the region's size; the head is applied once per region
to its mean features (the head is affine: the mean of a gene map equals the head of the
mean features).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from shapely import affinity
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from ..errors import InputFileError
from .map_store import DenseMapStore

__all__ = [
    "REGION_COLUMNS",
    "pixel_weights",
    "region_feature_means",
    "region_gene_table",
    "regions_to_map",
]

#: The columns of :func:`region_gene_table` before the genes.
REGION_COLUMNS = (
    "id",
    "name",
    "classification",
    "object_type",
    "x_um",
    "y_um",
    "area_um2",
    "area_fraction",
)


def regions_to_map(
    regions: Sequence[BaseGeometry], *, slide_mpp: float, map_mpp: float
) -> list[BaseGeometry]:
    """Regions in QuPath pixels → map-pixel units (``u = X · slide_mpp / map_mpp``)."""
    s = float(slide_mpp) / float(map_mpp)
    return [affinity.scale(g, s, s, origin=(0.0, 0.0)) for g in regions]


def pixel_weights(region: BaseGeometry, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``(r1 − r0, c1 − c0)`` float64: the area of each unit pixel square
    ``[c, c + 1) × [r, r + 1)`` of the window covered by ``region`` (map-pixel units), exact
    (see the module docstring)."""
    r0, r1 = rows
    c0, c1 = cols
    h, w = r1 - r0, c1 - c0
    weights = np.zeros((h, w))
    if h <= 0 or w <= 0 or region.is_empty:
        return weights
    window = box(c0, r0, c1, r1)
    clipped = shapely.intersection(region, window)
    if clipped.is_empty or clipped.area <= 0:
        return weights
    if math.isclose(clipped.area, float(h * w), rel_tol=0.0, abs_tol=1e-9 * h * w):
        return np.ones((h, w))  # the window lies inside the region
    # boundary pixels: cells of the boundary densified to ≤ 1/2 px, dilated by one
    edge = shapely.segmentize(shapely.boundary(clipped), 0.5)
    pts = shapely.get_coordinates(edge)
    near = np.zeros((h + 2, w + 2), dtype=bool)
    ci = np.clip(np.floor(pts[:, 0]).astype(np.int64) - c0, -1, w) + 1
    ri = np.clip(np.floor(pts[:, 1]).astype(np.int64) - r0, -1, h) + 1
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            near[np.clip(ri + dr, 0, h + 1), np.clip(ci + dc, 0, w + 1)] = True
    near = near[1:-1, 1:-1]
    # interior / exterior: the centres of every other pixel
    shapely.prepare(clipped)
    far_r, far_c = np.nonzero(~near)
    if len(far_r):
        inside = shapely.contains_xy(clipped, far_c + c0 + 0.5, far_r + r0 + 0.5)
        weights[far_r[inside], far_c[inside]] = 1.0
    nr, nc = np.nonzero(near)
    if len(nr):
        squares = shapely.box(nc + c0, nr + r0, nc + c0 + 1, nr + r0 + 1)
        weights[nr, nc] = shapely.area(shapely.intersection(clipped, squares))
    return weights


def region_feature_means(
    store: DenseMapStore, regions_map: Sequence[BaseGeometry]
) -> tuple[np.ndarray, np.ndarray]:
    """``(means (N, C) float64, predicted area (N,) map px²)`` of regions given in map-pixel
    units (:func:`regions_to_map`): the area-weighted mean features over each region's
    predicted pixels (``NaN`` rows where the area is 0)."""
    h, w = store.map_shape
    ch, cw = store.chunk
    c = store.feature_dim
    computed = store.coverage == 1
    sums = np.zeros((len(regions_map), c))
    area = np.zeros(len(regions_map))
    for k, region in enumerate(regions_map):
        if region.is_empty:
            continue
        minx, miny, maxx, maxy = region.bounds
        r_lo, r_hi = max(0, math.floor(miny)), min(h, math.ceil(maxy))
        c_lo, c_hi = max(0, math.floor(minx)), min(w, math.ceil(maxx))
        if r_lo >= r_hi or c_lo >= c_hi:
            continue
        shapely.prepare(region)
        for tr in range(r_lo // ch, (r_hi - 1) // ch + 1):
            for tc in range(c_lo // cw, (c_hi - 1) // cw + 1):
                if not computed[tr, tc]:
                    continue  # background or pending: no value, no area
                rows = (max(r_lo, tr * ch), min(r_hi, (tr + 1) * ch))
                cols = (max(c_lo, tc * cw), min(c_hi, (tc + 1) * cw))
                if not shapely.intersects(region, box(cols[0], rows[0], cols[1], rows[1])):
                    continue
                wts = pixel_weights(region, rows, cols)
                if not wts.any():
                    continue
                feats = store.read_features(slice(*rows), slice(*cols)).astype(np.float64)
                valid = np.isfinite(feats).all(axis=2)
                wts = np.where(valid, wts, 0.0)
                feats[~valid] = 0.0
                sums[k] += np.einsum("ij,ijc->c", wts, feats)
                area[k] += wts.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / area[:, None]
    means[area <= 0] = np.nan
    return means, area


def region_gene_table(
    store: DenseMapStore | str | os.PathLike[str],
    annotations: Sequence[Any],
) -> tuple[pd.DataFrame, np.ndarray]:
    """``(table, X)``: one row per annotation (:class:`~..io.geojson.Annotation`: its
    ``geometry`` in QuPath pixels, ``id``, ``name``, ``classification``, ``object_type``) with
    :data:`REGION_COLUMNS` — ``x_um, y_um`` the region's centroid in napari world µm (as the
    spots tables), ``area_um2`` the annotation's area, ``area_fraction`` the share of it on
    predicted map pixels — and ``X (N, G)`` float64, every gene's area-weighted mean."""
    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
    if slide_mpp is None or map_mpp is None:
        raise InputFileError(
            store.path, "the map store does not record µm/px; cannot place regions on it"
        )
    geoms = [a.geometry for a in annotations]
    pooled, area_px = region_feature_means(
        store, regions_to_map(geoms, slide_mpp=slide_mpp, map_mpp=map_mpp)
    )
    x = store.apply_head(pooled) if len(geoms) else np.zeros((0, len(store.genes)))
    area_um2 = np.array([g.area for g in geoms], dtype=np.float64) * slide_mpp**2
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(area_um2 > 0, area_px * map_mpp**2 / area_um2, 0.0)
    centroids = [g.centroid for g in geoms]
    table = pd.DataFrame(
        {
            "id": [str(a.id) if a.id else f"region_{a.index}" for a in annotations],
            "name": [a.name or "" for a in annotations],
            "classification": [a.classification or "" for a in annotations],
            "object_type": [a.object_type for a in annotations],
            "x_um": [(p.x - 0.5) * slide_mpp for p in centroids],
            "y_um": [(p.y - 0.5) * slide_mpp for p in centroids],
            "area_um2": area_um2,
            "area_fraction": np.clip(fraction, 0.0, 1.0),
        }
    )
    return table, np.asarray(x, dtype=np.float64)
