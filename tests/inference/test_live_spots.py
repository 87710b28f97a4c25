"""Live spot expression: same numbers as predict_circles, chunk cache, memoised spots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.inference.live_spots import SpotExpression, rank_genes
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spots import aggregate_circles, circles_to_grid, predict_circles

GENES = [f"g{i}" for i in range(7)]


def _store(tmp_path: Path, shape=(150, 130), c=6, chunk=32, dtype="float32", mpp=True):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(c, len(GENES))).astype(np.float32)
    b = rng.normal(size=len(GENES)).astype(np.float32)
    slide = {"path": "/data/slide.tif", "shape": [shape[0] * 4, shape[1] * 4], "mpp": 0.5}
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=c, genes=GENES, head_W=W, head_b=b,
        map_mpp=2.0 if mpp else None, chunk=chunk, dtype=dtype,
        attrs={"slide": slide if mpp else {**slide, "mpp": None}},
    )  # fmt: skip
    feats = rng.normal(size=(*shape, c)).astype(np.float32)
    store.write_all(feats)
    return store


def _spots(n: int, seed: int = 0, diameters=(2.0, 8.0, 16.0, 55.0, 100.0)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(n)],
            "x_um": rng.uniform(-20, 280, n),  # some over the map's border (260 µm wide)
            "y_um": rng.uniform(-20, 320, n),
            "diameter_um": rng.choice(diameters, n),
        }
    )


def test_values_equal_predict_circles(tmp_path: Path) -> None:
    store = _store(tmp_path, dtype="float16")
    spots = _spots(40)
    expr = SpotExpression(store)
    vals = expr.values(spots)
    ref = predict_circles(store, spots)
    assert vals.shape == (40, len(GENES))
    assert np.array_equal(np.isnan(vals), np.isnan(ref.X))
    np.testing.assert_allclose(vals, ref.X, rtol=1e-5, atol=1e-5)  # X is float32
    # float64 pooled features: equal to aggregate_circles to rounding, bit for bit alone
    centres, radii = circles_to_grid(
        spots.x_um.to_numpy(), spots.y_um.to_numpy(), spots.diameter_um.to_numpy(),
        map_mpp=2.0, slide_mpp=0.5,
    )  # fmt: skip
    pooled_ref, area_ref = aggregate_circles(store, centres, radii)
    fresh = SpotExpression(store)
    pooled, area = fresh.features(spots)
    np.testing.assert_allclose(pooled, pooled_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(area, area_ref, rtol=1e-12)
    for i in (0, 5, 17):
        one, a1 = SpotExpression(store).features(spots.iloc[[i]])
        p1, r1 = aggregate_circles(store, centres[[i]], radii[[i]])
        assert np.array_equal(one, p1, equal_nan=True) and np.array_equal(a1, r1)


def test_outside_map_is_nan_and_aggregate_skips_it(tmp_path: Path) -> None:
    expr = SpotExpression(_store(tmp_path))
    spots = pd.DataFrame(
        {"x_um": [100.0, 5000.0, 60.0], "y_um": [100.0, 5000.0, 80.0], "diameter_um": [55.0] * 3}
    )
    vals = expr.values(spots)
    assert np.isnan(vals[1]).all() and np.isfinite(vals[[0, 2]]).all()
    np.testing.assert_allclose(expr.aggregate(spots), vals[[0, 2]].mean(axis=0), rtol=1e-10)
    assert np.isnan(expr.aggregate(spots.iloc[[1]])).all()
    assert np.isnan(expr.aggregate(spots.iloc[[]])).all()


def test_chunk_cache_and_memo(tmp_path: Path) -> None:
    expr = SpotExpression(_store(tmp_path), cache_mb=1.0)
    spot = pd.DataFrame({"x_um": [100.0], "y_um": [100.0], "diameter_um": [16.0]})
    first = expr.values(spot)
    misses = expr.stats.misses
    assert misses >= 1 and expr.pending(spot) == 0
    np.testing.assert_array_equal(expr.values(spot), first)  # memoised: no read at all
    assert expr.stats.misses == misses and expr.stats.hits == 0
    moved = spot.assign(x_um=101.5)  # same chunk: served from the chunk cache
    assert expr.pending(moved) == 1
    assert not np.allclose(expr.values(moved), first)
    assert expr.stats.misses == misses and expr.stats.hits >= 1
    # the byte budget bounds the cache (32x32x6 float32 chunks = 24 KiB, budget 1 MiB)
    many = _spots(200, seed=5, diameters=(100.0,))
    expr.values(many)
    assert 0 < expr.stats.bytes <= 1 * 2**20
    expr.clear_cache()
    assert expr.stats.bytes == 0 and expr.pending(spot) == 1


def test_needs_mpp_and_valid_spots(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="µm/px"):
        SpotExpression(_store(tmp_path, mpp=False))
    expr = SpotExpression(_store(tmp_path / "b"))
    with pytest.raises(ValueError, match="positive"):
        expr.values(pd.DataFrame({"x_um": [1.0], "y_um": [1.0], "diameter_um": [0.0]}))


def test_rank_genes() -> None:
    table = rank_genes(["a", "b", "c", "d"], np.array([0.5, np.nan, 2.0, -1.0]))
    assert table["gene"].tolist() == ["c", "a", "d", "b"]
    assert table["value"].iloc[0] == 2.0 and np.isnan(table["value"].iloc[-1])


def test_genes_added_to_the_map_show_at_the_next_query(tmp_path: Path) -> None:
    """A SpotExpression built before add_genes sees the new gene (the head is the store's);
    the memoised pooled features are reused, the old genes are unchanged."""
    store = _store(tmp_path)
    expr = SpotExpression(store)
    spots = _spots(12, seed=2)
    before = expr.values(spots)
    pooled, _area = expr.features(spots)
    w, b = np.linspace(-1, 1, store.feature_dim), 0.25
    store.add_genes(["NEW"], w, b, source="zero-shot")
    after = expr.values(spots)
    assert expr.genes == [*GENES, "NEW"] and after.shape == (12, len(GENES) + 1)
    np.testing.assert_array_equal(after[:, :-1], before)
    np.testing.assert_allclose(after[:, -1], pooled @ w + b, rtol=1e-6)
    assert np.array_equal(np.isnan(after[:, -1]), np.isnan(before[:, 0]))
    assert expr.aggregate(spots).shape == (len(GENES) + 1,)
    # a read-only instance (what a viewer holds) sees it too
    ro = SpotExpression(DenseMapStore.open(store.path))
    np.testing.assert_allclose(ro.values(spots), after, rtol=1e-12)


def _old_window_path(store: DenseMapStore, centres: np.ndarray, radii: np.ndarray):
    """The aggregation before the vectorised engine (reference): each circle alone on the
    window of the map around it (bounding box + 2 px), an in-memory CircleAggregator."""
    from napari_histoexpress.geometry import CircleAggregator

    h, w = store.map_shape
    pooled = np.full((len(radii), store.feature_dim), np.nan)
    area = np.zeros(len(radii))
    for i, ((cx, cy), r) in enumerate(zip(centres, radii, strict=True)):
        m = int(np.ceil(r)) + 2
        x0, x1 = int(max(0, np.floor(cx) - m)), int(min(w, np.ceil(cx) + m + 1))
        y0, y1 = int(max(0, np.floor(cy) - m)), int(min(h, np.ceil(cy) + m + 1))
        if x1 <= x0 or y1 <= y0:
            continue
        window = store.read_features(slice(y0, y1), slice(x0, x1)).astype(np.float64)
        vals, cov = CircleAggregator(window).aggregate_many(
            np.array([[cx - x0, cy - y0]]), np.array([r]), return_area=True
        )
        pooled[i], area[i] = vals[0], cov[0]
    return pooled, area


def test_thousands_of_bins_equal_the_old_path_and_brute_force(tmp_path: Path) -> None:
    """A selection of 2,500 Visium HD bins (2, 8, 16 µm; one vectorised aggregation, with a
    cache too small for all its chunks) equals each circle aggregated alone on its window
    (the old path) and the brute-force masked sum on the gene maps."""
    from napari_histoexpress.geometry import brute_force_circle_sum

    store = _store(tmp_path, dtype="float16")
    yy, xx = np.mgrid[0:50, 0:50]
    spots = pd.DataFrame(
        {
            "x_um": 3.0 + xx.ravel() * 5.3,  # runs over the map's right border (260 µm)
            "y_um": 7.0 + yy.ravel() * 5.9,
            "diameter_um": np.resize([2.0, 8.0, 16.0], 2500),
        }
    )
    expr = SpotExpression(store, cache_mb=0.1)  # 3 chunks of 32 x 32 x 7 float64
    pooled, area = expr.features(spots)
    centres, radii = circles_to_grid(
        spots.x_um.to_numpy(), spots.y_um.to_numpy(), spots.diameter_um.to_numpy(),
        map_mpp=2.0, slide_mpp=0.5,
    )  # fmt: skip
    old, old_area = _old_window_path(store, centres, radii)
    assert np.array_equal(np.isnan(pooled), np.isnan(old)) and np.isnan(pooled).any()
    np.testing.assert_allclose(pooled, old, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(area, old_area, rtol=1e-11, atol=1e-11)
    feats = store.read_features(slice(None), slice(None)).astype(np.float64)
    W, b = store.head
    genes = feats @ W.astype(np.float64) + b
    vals = expr.values(spots)
    ones = np.ones((*genes.shape[:2], 1))
    for i in range(0, 2500, 97):
        (cx, cy), r = centres[i], radii[i]
        a = brute_force_circle_sum(ones, cx, cy, r)[0]
        if a < 1e-12:  # off the map (the brute force's rounding: ~1e-17)
            assert np.isnan(vals[i]).all()
            continue
        want = brute_force_circle_sum(genes, cx, cy, r) / a
        np.testing.assert_allclose(vals[i], want, rtol=1e-6, atol=1e-6)
    assert expr.stats.bytes <= 0.1 * 2**20
    # the selection's mean is the mean of the circles on the map
    np.testing.assert_allclose(
        expr.aggregate(spots), np.nanmean(np.where(area[:, None] > 0, vals, np.nan), axis=0),
        rtol=1e-9,
    )  # fmt: skip


def test_a_small_memo_evicts_but_never_mixes_up_circles(tmp_path: Path) -> None:
    """memo_size smaller than a query (and duplicate spots in it): every value is still its
    own circle's, and the memo holds at most memo_size circles."""
    store = _store(tmp_path)
    spots = _spots(12, seed=8)
    spots = pd.concat([spots, spots.iloc[[3, 3]]], ignore_index=True)  # duplicates
    want = SpotExpression(store).values(spots)
    expr = SpotExpression(store, memo_size=5)
    for part in (spots, spots.iloc[::-1], spots.iloc[4:9], spots):
        np.testing.assert_array_equal(expr.values(part), want[part.index.to_numpy()])
        assert len(expr._memo) <= 5
    assert expr.pending(spots.iloc[:6]) >= 1
