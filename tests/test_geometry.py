"""Exact O(r) circle aggregation against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Point, box

from napari_histoexpress.geometry import (
    CircleAggregator,
    brute_force_circle_sum,
    circle_pixel_weights,
    disk_rect_area,
    fullres_to_grid,
)


def test_disk_rect_area_matches_shapely() -> None:
    rng = np.random.default_rng(0)
    n = 300
    r = rng.uniform(0.1, 6.0, n)
    x0, y0 = rng.uniform(-7, 7, (2, n))
    x1, y1 = x0 + rng.uniform(0, 3, n), y0 + rng.uniform(0, 3, n)
    ours = disk_rect_area(x0, x1, y0, y1, r)
    for k in range(n):
        # fine polygon: its area deficit is ~ r² (2π³/3) / n_seg² of the disk
        disk = Point(0, 0).buffer(r[k], quad_segs=2048)
        ref = disk.intersection(box(x0[k], y0[k], x1[k], y1[k])).area
        assert ours[k] == pytest.approx(ref, abs=2e-6 * r[k] ** 2 + 1e-12), k
    assert disk_rect_area(-10, 10, -10, 10, 3.0) == pytest.approx(np.pi * 9)
    assert disk_rect_area(3.0, 4.0, 0.0, 1.0, 3.0) == 0.0


def test_pixel_weights_sum_to_disk_area_and_respect_geometry() -> None:
    for cx, cy, r in [(10.0, 10.0, 0.3), (10.5, 10.5, 0.3), (20.37, 15.81, 7.77), (30, 30, 25.0)]:
        rows, cols, w = circle_pixel_weights(cx, cy, r, (64, 64))
        assert w.sum() == pytest.approx(np.pi * r * r, rel=1e-12)
        assert np.all((w > 0) & (w <= 1 + 1e-12))
    # a small disk centred on pixel (row 10, col 12) lies in that pixel only
    rows, cols, w = circle_pixel_weights(12.0, 10.0, 0.3, (64, 64))
    assert rows.tolist() == [10] and cols.tolist() == [12]
    # centred on a pixel corner: four equal quarters
    rows, cols, w = circle_pixel_weights(12.5, 10.5, 0.3, (64, 64))
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (10, 12),
        (10, 13),
        (11, 12),
        (11, 13),
    ]
    np.testing.assert_allclose(w, np.pi * 0.09 / 4)


CASES = [
    (30.3, 20.7, 0.3),
    (30.0, 20.0, 0.5),
    (12.49, 7.51, 0.9),
    (10.2, 5.9, 7.3),  # crosses the top border
    (-3.2, 4.1, 9.0),  # centre outside the map
    (78.6, 58.2, 12.3),  # over the bottom-right corner
    (40.25, 31.125, 25.0),
    (40.0, 30.0, 300.0),  # covers the whole map
]


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(60, 80, 3))


@pytest.mark.parametrize(("cx", "cy", "r"), CASES)
def test_aggregate_matches_brute_force(values: np.ndarray, cx: float, cy: float, r: float) -> None:
    agg = CircleAggregator(values)
    fast = agg.aggregate(cx, cy, r, reduce="sum")
    exact = brute_force_circle_sum(values, cx, cy, r)
    np.testing.assert_allclose(fast, exact, rtol=1e-9, atol=1e-9)
    # independent of the analytic formula: point sampling, error ~ perimeter / s
    sampled = brute_force_circle_sum(values, cx, cy, r, supersample=64)
    np.testing.assert_allclose(fast, sampled, atol=0.01 + 2e-3 * r)


def test_mean_and_borders(values: np.ndarray) -> None:
    agg = CircleAggregator(values)
    centres = np.array([c[:2] for c in CASES])
    radii = np.array([c[2] for c in CASES])
    sums, area = agg.aggregate_many(centres, radii, reduce="sum", return_area=True)
    means = agg.aggregate_many(centres, radii)
    np.testing.assert_allclose(means, sums / area[:, None])
    inside = [0, 1, 2, 6]  # case 3 (cy - r = -1.4) crosses the top border
    np.testing.assert_allclose(area[inside], np.pi * radii[inside] ** 2, rtol=1e-12)
    assert area[7] == pytest.approx(60 * 80)  # whole map covered: mean = map mean
    np.testing.assert_allclose(means[7], values.reshape(-1, 3).mean(0))
    for k in (3, 4, 5):
        assert 0 < area[k] < np.pi * radii[k] ** 2
    # entirely outside: NaN mean, zero sum
    out = agg.aggregate_many(np.array([[500.0, 500.0]]), np.array([3.0]))
    assert np.isnan(out).all()
    assert np.all(agg.aggregate(500.0, 500.0, 3.0, reduce="sum") == 0)


def test_many_equals_single_and_chunking(
    values: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_histoexpress.geometry as mod

    rng = np.random.default_rng(2)
    centres = rng.uniform(-5, 85, size=(40, 2))
    radii = rng.uniform(0.2, 15, size=40)
    agg = CircleAggregator(values)
    many = agg.aggregate_many(centres, radii, reduce="sum")
    monkeypatch.setattr(mod, "_CHUNK_NNZ", 50)  # force many chunks
    chunked = agg.aggregate_many(centres, radii, reduce="sum")
    single = np.stack(
        [agg.aggregate(x, y, r, reduce="sum") for (x, y), r in zip(centres, radii, strict=True)]
    )
    np.testing.assert_allclose(many, single, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked, single, rtol=1e-12, atol=1e-12)


def test_constant_map_mean_is_constant() -> None:
    agg = CircleAggregator(np.full((50, 50), 2.5, dtype=np.float32))
    rng = np.random.default_rng(3)
    means = agg.aggregate_many(rng.uniform(0, 49, (100, 2)), rng.uniform(0.05, 40, 100))
    np.testing.assert_allclose(means, 2.5, rtol=1e-12)


def test_input_validation() -> None:
    agg = CircleAggregator(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        agg.aggregate(1, 1, -1)
    with pytest.raises(ValueError, match="finite"):
        agg.aggregate(np.nan, 1, 1)
    with pytest.raises(ValueError, match="reduce"):
        agg.aggregate(1, 1, 1, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        CircleAggregator(np.zeros(4))


def test_fullres_to_grid() -> None:
    # full-res pixel 3 (centre) of a 4× grid lies in grid pixel 0, at its right edge area
    c, r = fullres_to_grid(np.array([[1.5, 3.5]]), 8.0, 4.0)
    np.testing.assert_allclose(c, [[0.0, 0.5]])
    assert r == 2.0


def test_missing_pixels_have_no_value_and_no_weight() -> None:
    """NaN pixels (never-predicted background of a dense map) count neither as values nor
    as area: means are over the predicted part of each disk, areas are predicted areas."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(40, 50, 3)) + 5.0
    missing = np.zeros((40, 50), bool)
    missing[:, 25:] = True  # right half is background
    missing[10:14, 5:9] = True  # a hole
    with_nan = np.where(missing[..., None], np.nan, values)
    clean = np.where(missing[..., None], 0.0, values)
    agg = CircleAggregator(with_nan)
    assert agg.n_channels == 3
    circles = np.array([[20.0, 20.0], [24.7, 11.2], [10.0, 30.0], [40.0, 20.0], [7.0, 12.0]])
    radii = np.array([8.0, 6.3, 3.0, 5.0, 1.5])
    means, area = agg.aggregate_many(circles, radii, reduce="mean", return_area=True)
    sums = agg.aggregate_many(circles, radii, reduce="sum")
    for i, ((cx, cy), r) in enumerate(zip(circles, radii, strict=True)):
        want_area = brute_force_circle_sum((~missing).astype(float), cx, cy, r)[0]
        want_sum = brute_force_circle_sum(clean, cx, cy, r)
        np.testing.assert_allclose(area[i], want_area, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(sums[i], want_sum, rtol=1e-9, atol=1e-9)
        if want_area > 0:
            np.testing.assert_allclose(means[i], want_sum / want_area, rtol=1e-9)
    # the circle at x = 40 lies on background only: no value, no area
    assert area[3] == 0 and np.isnan(means[3]).all()
    np.testing.assert_allclose(sums[3], 0.0, atol=1e-9)
    # a disk half on background has the mean of its predicted half, not a diluted one
    assert 0 < area[1] < np.pi * radii[1] ** 2
    assert np.all(means[1] > 4.0)


# --------------------------------------------------------------------------------------
# knots on row-wise prefix sums (the engine of CircleAggregator and of the map-store cache)
def _prefix(values: np.ndarray, tile_w: int | None) -> np.ndarray:
    """Row-wise prefix sums ``(H, n_cols, C)``: global (``W + 1`` columns) or restarting at
    every tile of ``tile_w`` columns (``tile_w + 1`` entries per tile, the first 0)."""
    h, w, c = values.shape
    if tile_w is None:
        out = np.zeros((h, w + 1, c))
        out[:, 1:] = np.cumsum(values, axis=1)
        return out
    n_t = -(-w // tile_w)
    out = np.zeros((h, n_t * (tile_w + 1), c))
    for t in range(n_t):
        part = values[:, t * tile_w : (t + 1) * tile_w]
        a = t * (tile_w + 1)
        out[:, a + 1 : a + 1 + part.shape[1]] = np.cumsum(part, axis=1)
    return out


EDGE_CASES = [
    (30.0, 20.0, 5.0),  # integer centre and radius: run ends on pixel edges
    (30.5, 20.5, 4.5),  # centre on a pixel corner, radius to pixel edges
    (30.5, 20.5, 1e-3),  # far below one pixel, on a corner
    (17.25, 9.75, 0.0),  # zero radius: no weight anywhere
    (0.0, 0.0, 3.0),  # centred on the corner pixel of the map
    (79.0, 59.0, 0.5),  # last pixel
    (-0.5, 30.0, 6.0),  # centre on the map's left edge
    (40.0, 30.0, 300.0),  # whole map
]


@pytest.mark.parametrize("tile_w", [None, 1, 3, 7, 16, 80])
def test_prefix_knots_equal_brute_force(values: np.ndarray, tile_w: int | None) -> None:
    """Σ coef · P over the knots is the exact weighted sum (brute force with per-pixel
    analytic areas), for global and tiled prefix sums, sub-pixel to whole-map circles."""
    from napari_histoexpress.geometry import prefix_knots

    rng = np.random.default_rng(7)
    circles = [*CASES, *EDGE_CASES]
    circles += [(x, y, r) for x, y, r in zip(*rng.uniform(-10, 90, (2, 30)),
                                             rng.uniform(0.05, 20, 30), strict=True)]  # fmt: skip
    centres = np.array([c[:2] for c in circles])
    radii = np.array([c[2] for c in circles])
    knots = prefix_knots(centres, radii, values.shape[:2], tile_w=tile_w)
    assert np.all(np.diff(knots.circle) >= 0)  # ordered by circle (CSR rows)
    p = _prefix(values, tile_w)
    assert knots.col.min() >= 0 and knots.col.max() < p.shape[1]
    if tile_w is not None:  # never a tile's first (always zero) entry
        assert np.all(knots.col % (tile_w + 1) != 0)
    terms = knots.coef[:, None] * p[knots.row, knots.col]
    got = np.zeros((len(circles), values.shape[2]))
    np.add.at(got, knots.circle, terms)
    for k, (cx, cy, r) in enumerate(circles):
        want = brute_force_circle_sum(values, cx, cy, r)
        np.testing.assert_allclose(got[k], want, rtol=1e-9, atol=1e-9, err_msg=str(circles[k]))
    # the same knots on a map of ones give each disk's area inside the grid
    ones = _prefix(np.ones((*values.shape[:2], 1)), tile_w)[..., 0]
    area = np.bincount(knots.circle, knots.coef * ones[knots.row, knots.col], len(circles))
    for k, (cx, cy, r) in enumerate(circles):
        w = circle_pixel_weights(cx, cy, r, values.shape[:2])[2]
        assert area[k] == pytest.approx(w.sum(), rel=1e-10, abs=1e-10)


def _old_sums(values: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """The aggregation before the knots (reference): per (circle, row) the interior run from
    two prefix sums plus every boundary pixel's value times its :func:`disk_rect_area`."""
    from napari_histoexpress.geometry import _Runs

    h, w, c = values.shape
    prefix = _prefix(values, None)
    runs = _Runs(centres[:, 0].copy(), centres[:, 1].copy(), radii.astype(float), (h, w))
    out = np.zeros((len(radii), c))
    has = runs.f1 > runs.f0
    np.add.at(out, runs.pair_circle[has], prefix[runs.row[has], runs.f1[has]])
    np.subtract.at(out, runs.pair_circle[has], prefix[runs.row[has], runs.f0[has]])
    circ, row, col, wgt = runs.boundary()
    np.add.at(out, circ, wgt[:, None] * values[row, col])
    return out


def test_aggregator_equals_the_old_path() -> None:
    rng = np.random.default_rng(11)
    values = rng.normal(size=(70, 90, 4)) + 3.0
    centres = rng.uniform(-8, 98, size=(300, 2))
    radii = np.concatenate([rng.uniform(0.01, 1.5, 150), rng.uniform(1.5, 45, 150)])
    new = CircleAggregator(values).aggregate_many(centres, radii, reduce="sum")
    np.testing.assert_allclose(new, _old_sums(values, centres, radii), rtol=1e-11, atol=1e-11)
    # float32 maps: the prefix sums are float64 either way
    v32 = values.astype(np.float32)
    new32 = CircleAggregator(v32).aggregate_many(centres, radii, reduce="sum")
    old32 = _old_sums(v32.astype(np.float64), centres, radii)
    np.testing.assert_allclose(new32, old32, rtol=1e-10, atol=1e-10)


def test_large_circle_exact_at_partial_pixels() -> None:
    """A 2 mm-radius circle on a 4 µm/px map (r = 500 px): the knots' sum equals the
    brute-force masked sum over the whole disk."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(1010, 1010, 2)) + 1.0
    agg = CircleAggregator(values)
    for cx, cy in [(504.5, 504.5), (505.13, 503.77)]:
        s, area = agg.aggregate_many(np.array([[cx, cy]]), 500.0, "sum", return_area=True)
        np.testing.assert_allclose(s[0], brute_force_circle_sum(values, cx, cy, 500.0), rtol=1e-9)
        assert area[0] == pytest.approx(np.pi * 500.0**2, rel=1e-12)
