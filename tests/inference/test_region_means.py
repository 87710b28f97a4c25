"""Area-weighted gene means inside polygons: exact against per-pixel shapely areas and a
supersampled raster; holes, MultiPolygons, off-map parts and background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon

from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.region_means import (
    pixel_weights,
    region_gene_table,
    regions_to_map,
)
from napari_histoexpress.io.geojson import Annotation

SLIDE_MPP, MAP_MPP = 0.5, 4.0  # 8 slide px per map px


class _Tile:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x


def _store(tmp_path: Path, *, background: bool = False):
    rng = np.random.default_rng(5)
    shape, c, genes = (48, 40), 4, ["ERBB2", "PTPRC", "COL1A1"]
    W = rng.normal(size=(c, len(genes))).astype(np.float32)
    b = np.array([5.0, -3.0, 1.0], np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=c, genes=genes, head_W=W, head_b=b,
        map_mpp=MAP_MPP, chunk=16,
        attrs={"slide": {"path": "/data/s.tif", "shape": [384, 320], "mpp": SLIDE_MPP}},
    )  # fmt: skip
    feats = rng.normal(size=(*shape, c)).astype(np.float32)
    predicted = np.ones(shape, bool)
    if background:  # tile (0, 1) skipped as background
        for r in range(3):
            for col in range(3):
                if (r, col) == (0, 1):
                    continue
                store.write_tile(
                    _Tile(r * 16, col * 16), feats[r * 16 : (r + 1) * 16, col * 16 : (col + 1) * 16]
                )
                store.mark_done((r, col))
        grid = np.zeros((3, 3), bool)
        grid[0, 1] = True
        store.mark_background(grid)
        predicted[0:16, 16:32] = False
    else:
        store.write_all(feats)
    return store, feats.astype(np.float64), W.astype(np.float64), b.astype(np.float64), predicted


def _regions() -> list[Annotation]:
    # QuPath pixels; map px = slide px / 8
    holed = Polygon(
        [(13.3, 21.7), (201.9, 30.2), (170.4, 260.8), (25.0, 190.1)],
        [[(60.2, 80.7), (120.9, 90.1), (100.3, 150.6)]],
    )
    multi = MultiPolygon(
        [Point(250.3, 100.9).buffer(37.7, quad_segs=16), Polygon([(40, 300), (90, 310), (60, 370)])]
    )
    off_map = Polygon(
        [(-50.5, -30.2), (70.1, -20.3), (60.7, 55.5), (-20.2, 60.1)]
    )  # over the corner
    return [
        Annotation(holed, 0, name="holed", classification="Tumor"),
        Annotation(multi, 1, classification="Stroma"),
        Annotation(off_map, 2, id="abc"),
    ]


def _exact_weights(geom_map, shape) -> np.ndarray:
    """Brute force: shapely's area of every pixel square ∩ region."""
    h, w = shape
    r, c = np.mgrid[0:h, 0:w]
    squares = shapely.box(c.ravel(), r.ravel(), c.ravel() + 1, r.ravel() + 1)
    return shapely.area(shapely.intersection(geom_map, squares)).reshape(h, w)


def _raster_weights(geom_map, shape, n=24) -> np.ndarray:
    """Brute force: supersampled point-in-polygon, n × n samples per map pixel."""
    h, w = shape
    t = (np.arange(n) + 0.5) / n
    ys = (np.arange(h)[:, None] + t[None, :]).ravel()
    xs = (np.arange(w)[:, None] + t[None, :]).ravel()
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    inside = shapely.contains_xy(geom_map, xx.ravel(), yy.ravel()).reshape(h * n, w * n)
    return inside.reshape(h, n, w, n).mean(axis=(1, 3))


def _means(weights, feats, W, b, predicted):
    wts = weights * predicted
    pooled = np.einsum("ij,ijc->c", wts, feats) / wts.sum()
    return pooled @ W + b, wts.sum()


@pytest.mark.parametrize("background", [False, True])
def test_region_means_equal_brute_force(tmp_path: Path, background: bool) -> None:
    store, feats, W, b, predicted = _store(tmp_path, background=background)
    anns = _regions()
    table, x = region_gene_table(store, anns)
    geoms = regions_to_map([a.geometry for a in anns], slide_mpp=SLIDE_MPP, map_mpp=MAP_MPP)
    for k, g in enumerate(geoms):
        exact = _exact_weights(g, store.map_shape)
        want, area_px = _means(exact, feats, W, b, predicted)
        np.testing.assert_allclose(x[k], want, rtol=1e-9, atol=1e-9)
        raster, _ = _means(_raster_weights(g, store.map_shape), feats, W, b, predicted)
        np.testing.assert_allclose(x[k], raster, atol=5e-3)
        area_um2 = anns[k].geometry.area * SLIDE_MPP**2
        assert table["area_um2"].iloc[k] == pytest.approx(area_um2)
        assert table["area_fraction"].iloc[k] == pytest.approx(area_px * MAP_MPP**2 / area_um2)
    assert table["area_fraction"].iloc[2] < 0.6  # most of it off the map
    assert list(table["id"]) == ["region_0", "region_1", "abc"]
    assert list(table["classification"]) == ["Tumor", "Stroma", ""]
    if not background:
        assert table["area_fraction"].iloc[0] == pytest.approx(1.0)


def test_pixel_weights_match_shapely_everywhere() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 30, size=(12, 2))
    poly = shapely.make_valid(Polygon(pts)).buffer(0.7)  # ragged, some concave edges
    w = pixel_weights(poly, (2, 27), (-3, 31))
    want = _exact_weights(shapely.affinity.translate(poly, 3, -2), (25, 34))
    np.testing.assert_allclose(w, want, atol=1e-12)


def test_region_on_background_is_nan(tmp_path: Path) -> None:
    store, *_ = _store(tmp_path, background=True)
    inside_bg = Annotation(Polygon([(140, 20), (240, 20), (240, 100), (140, 100)]), 0)
    table, x = region_gene_table(store, [inside_bg])
    assert table["area_fraction"].iloc[0] == 0.0 and np.isnan(x).all()
