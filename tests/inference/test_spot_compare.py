"""Slide-relative ranking and two-group comparison of spots (issue 9, item 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_compare import (
    compare_groups,
    rank,
    slide_stats,
    stats_level,
)


def _store(tmp_path: Path, *, background: bool) -> tuple[DenseMapStore, np.ndarray]:
    """A 96 x 128 map (4 µm/px, 16-px tiles), 5 channels, 4 genes; with ``background`` the
    left quarter of the tiles is skipped (never predicted)."""
    rng = np.random.default_rng(1)
    c, genes = 5, ["MALAT1", "ERBB2", "KRT19", "PTPRC"]
    W = rng.normal(size=(c, len(genes))).astype(np.float32)
    b = np.array([6.0, 1.0, 2.0, 0.5], np.float32)  # MALAT1: high everywhere
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=(96, 128), feature_dim=c, genes=genes, head_W=W,
        head_b=b, map_mpp=4.0, chunk=16, attrs={"slide": {"mpp": 1.0}},
    )  # fmt: skip
    feats = rng.normal(size=(96, 128, c)).astype(np.float32)
    feats[..., 0] += np.linspace(-2, 2, 128)[None, :]  # a gradient: levels differ
    if background:
        ch, cw = store.chunk
        for r in range(store.tile_grid[0]):
            for col in range(store.tile_grid[1]):
                if col < 2:
                    store.mark_done((r, col), computed=False)
                    continue
                tile = type("T", (), {"map_y0": r * ch, "map_x0": col * cw})()
                store.write_tile(tile, feats[r * ch : (r + 1) * ch, col * cw : (col + 1) * cw])
                store.mark_done((r, col))
    else:
        store.write_all(feats)
    store.set_status("complete")
    return DenseMapStore.open(store.path), feats


@pytest.mark.parametrize("background", [False, True])
def test_slide_stats_match_the_gene_maps_over_tissue(tmp_path: Path, background: bool) -> None:
    store, _feats = _store(tmp_path, background=background)
    level = stats_level(store, pixel_um=8.0)
    assert level == 1  # 4 µm/px → the level of 8 µm pixels
    stats = slide_stats(store, pixel_um=8.0, min_pixels=16)
    assert stats.level == 1 and stats.pixel_um == 8.0
    maps = np.asarray(store.gene_maps(store.genes, level=1).compute(), dtype=np.float64)
    finite = np.isfinite(maps).all(axis=2)
    values = maps[finite]
    assert stats.n_pixels == len(values)
    if background:
        assert stats.n_pixels == 48 * 48  # the 32 background columns (16 px at level 1) drop
    np.testing.assert_allclose(stats.mean, values.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.sd, values.std(axis=0), rtol=1e-4, atol=1e-5)
    assert stats.genes == store.genes


def test_slide_stats_go_finer_when_a_level_has_too_few_pixels(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, background=False)
    coarse = slide_stats(store, pixel_um=1000.0, min_pixels=1)
    assert coarse.level == store.n_levels - 1
    fine = slide_stats(store, pixel_um=1000.0, min_pixels=96 * 128 // 4)
    assert fine.level == 1 and fine.n_pixels == 48 * 64


def test_compare_groups_delta_and_z() -> None:
    genes = ["MALAT1", "ERBB2", "KRT19"]
    a = np.array([6.0, 3.0, 1.0])
    slide = np.array([6.2, 1.0, 1.5])
    sd = np.array([0.5, 1.0, 0.0])
    table = compare_groups(genes, a, slide, sd)
    assert table.columns.tolist() == ["gene", "mean", "ref_mean", "delta", "z"]
    np.testing.assert_allclose(table["delta"], [-0.2, 2.0, -0.5])
    np.testing.assert_allclose(table["z"], [-0.4, 2.0, np.nan])
    # the raw mean puts MALAT1 first; the slide-relative ranking puts ERBB2 first
    assert rank(table, "mean")["gene"].tolist()[0] == "MALAT1"
    assert rank(table, "delta")["gene"].tolist() == ["ERBB2", "MALAT1", "KRT19"]
    assert rank(table, "z")["gene"].tolist() == ["ERBB2", "MALAT1", "KRT19"]  # NaN last
    assert rank(table, "delta", descending=False)["gene"].tolist()[0] == "KRT19"
    no_sd = compare_groups(genes, a, slide, None)
    assert no_sd["z"].isna().all()
    with pytest.raises(ValueError, match="ranking"):
        rank(table, "pvalue")
    with pytest.raises(ValueError, match="genes"):
        compare_groups(genes, a[:2], slide, sd)


def test_two_groups_of_spots_rank_by_their_difference(tmp_path: Path) -> None:
    from napari_histoexpress.inference.live_spots import SpotExpression

    store, _ = _store(tmp_path, background=False)
    expr = SpotExpression(store, cache_mb=8)
    left = pd.DataFrame({"x_um": [60.0, 80.0], "y_um": [200.0, 240.0], "diameter_um": 40.0})
    right = pd.DataFrame({"x_um": [440.0], "y_um": [200.0], "diameter_um": 40.0})
    a, b = expr.aggregate(left), expr.aggregate(right)
    stats = slide_stats(store, pixel_um=8.0)
    table = compare_groups(store.genes, a, b, stats.sd)
    np.testing.assert_allclose(table["delta"], a - b)
    np.testing.assert_allclose(table["z"], (a - b) / stats.sd)
    assert rank(table, "delta")["gene"].iloc[0] == store.genes[int(np.argmax(a - b))]


@pytest.mark.parametrize("background", [False, True])
def test_slide_stats_are_the_stores_gene_stats(tmp_path: Path, background: bool) -> None:
    """One computation: slide_stats is the store's gene_stats at the chosen level, whose mean
    is the store's gene_means there (weighted by predicted share)."""
    store, _ = _store(tmp_path, background=background)
    stats = slide_stats(store, pixel_um=8.0, min_pixels=16)
    same = store.gene_stats(level=stats.level)
    np.testing.assert_array_equal(stats.mean, same.mean)
    np.testing.assert_array_equal(stats.sd, same.sd)
    assert stats.n_pixels == same.n_pixels and stats.genes == same.genes
    np.testing.assert_allclose(stats.mean, store.gene_means(level=stats.level), rtol=1e-12)
    w = np.ones(store.feature_dim)
    store_rw = DenseMapStore.open(store.path, mode="r+")
    store_rw.add_genes(["NEW"], w, 1.0, source="zero-shot")
    grown = slide_stats(store, pixel_um=8.0, min_pixels=16)  # the read-only store sees it
    assert grown.genes == [*store.genes[:-1], "NEW"] == store.genes
    np.testing.assert_array_equal(grown.mean[:-1], stats.mean)
