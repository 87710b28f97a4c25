"""Circles in µm on a stored dense map: exact, all genes, bounded memory; CLI predict/spots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.geometry import brute_force_circle_sum
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spots import circles_to_grid, predict_circles, read_circles


def _store(tmp_path: Path, shape=(90, 70), c=5, genes=("ERBB2", "PTPRC", "COL1A1"), chunk=16):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(c, len(genes))).astype(np.float32)
    b = rng.normal(size=len(genes)).astype(np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=c, genes=list(genes), head_W=W,
        head_b=b, map_mpp=8.0, chunk=chunk,
        attrs={"slide": {"path": "/data/slide.tif", "shape": [720, 560], "mpp": 1.0}},
    )  # fmt: skip
    feats = rng.normal(size=(*shape, c)).astype(np.float32)
    store.write_all(feats)
    return store, feats, W, b


def test_predict_circles_equals_brute_force_on_gene_maps(tmp_path: Path) -> None:
    store, feats, W, b = _store(tmp_path)
    circles = pd.DataFrame(
        {
            "x_um": [100.0, 333.3, 27.5, 500.0, 2.0],
            "y_um": [200.0, 410.7, 600.0, 90.0, 2.0],
            "diameter_um": [55.0, 100.0, 2.0, 300.0, 40.0],
            "id": ["a", "b", "c", "d", "e"],
        }
    )
    adata = predict_circles(store, circles)
    assert adata.shape == (5, 3) and list(adata.obs_names) == ["a", "b", "c", "d", "e"]
    gene_maps = feats.astype(np.float64) @ W.astype(np.float64) + b
    centres, radii = circles_to_grid(
        circles.x_um.to_numpy(), circles.y_um.to_numpy(), circles.diameter_um.to_numpy(),
        map_mpp=8.0, slide_mpp=1.0,
    )  # fmt: skip
    for i in range(len(circles)):
        (cx, cy), r = centres[i], radii[i]
        total = brute_force_circle_sum(gene_maps, cx, cy, r)
        area = brute_force_circle_sum(np.ones((*gene_maps.shape[:2], 1)), cx, cy, r)[0]
        np.testing.assert_allclose(adata.X[i], total / area, rtol=1e-4, atol=1e-4)
    assert adata.obs["area_fraction"].iloc[0] == pytest.approx(1.0)
    assert adata.obs["area_fraction"].iloc[4] < 1.0  # over the map's corner
    # spatial convention: slide pixels and the median diameter
    np.testing.assert_allclose(adata.obsm["spatial"][1], [333.3, 410.7])
    assert adata.uns["spatial"]["slide"]["scalefactors"]["spot_diameter_fullres"] == 55.0


def test_blocks_do_not_change_results(tmp_path: Path) -> None:
    from napari_histoexpress.inference.spots import aggregate_circles

    store, *_ = _store(tmp_path)
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 70, size=(40, 2))
    radii = rng.uniform(0.2, 12, size=40)
    one, a1 = aggregate_circles(store, centres, radii, block_px=4096)
    many, a2 = aggregate_circles(store, centres, radii, block_px=8)
    np.testing.assert_allclose(one, many, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a1, a2)


def test_background_counts_neither_as_expression_nor_as_area(tmp_path: Path) -> None:
    """A circle over skipped background tiles gets the mean of its predicted part and an
    area_fraction below 1; one entirely on background gets NaN and 0 (not the bias)."""
    rng = np.random.default_rng(2)
    W = rng.normal(size=(5, 2)).astype(np.float32)
    b = np.array([10.0, -10.0], np.float32)  # a bias far from any predicted value
    store = DenseMapStore.create(
        tmp_path / "bg.zarr", map_shape=(64, 64), feature_dim=5, genes=["ERBB2", "PTPRC"],
        head_W=W, head_b=b, map_mpp=8.0, chunk=32,
        attrs={"slide": {"path": "/data/slide.tif", "shape": [512, 512], "mpp": 1.0}},
    )  # fmt: skip
    feats = rng.normal(size=(64, 64, 5)).astype(np.float32)
    store.write_tile(_Tile(0, 0), feats[:32, :32])  # tissue: top-left tile only
    store.mark_done((0, 0))
    background = np.ones((2, 2), bool)
    background[0, 0] = False
    store.mark_background(background)
    circles = pd.DataFrame(
        {"x_um": [100.0, 256.0, 400.0], "y_um": [100.0, 100.0, 400.0],
         "diameter_um": [100.0, 200.0, 100.0], "id": ["tissue", "edge", "glass"]}
    )  # fmt: skip
    adata = predict_circles(store, circles)
    frac = adata.obs["area_fraction"].to_numpy()
    assert frac[0] == pytest.approx(1.0) and 0.3 < frac[1] < 0.7 and frac[2] == 0.0
    assert np.isnan(adata.X[2]).all()
    # the edge circle's value is the mean over its predicted pixels only
    gene_maps = feats.astype(np.float64) @ W.astype(np.float64) + b
    clean = np.where(_tissue_mask()[..., None], gene_maps, 0.0)
    centres, radii = circles_to_grid(
        circles.x_um.to_numpy(), circles.y_um.to_numpy(), circles.diameter_um.to_numpy(),
        map_mpp=8.0, slide_mpp=1.0,
    )  # fmt: skip
    (cx, cy), r = centres[1], radii[1]
    area = brute_force_circle_sum(_tissue_mask().astype(float), cx, cy, r)[0]
    want = brute_force_circle_sum(clean, cx, cy, r) / area
    np.testing.assert_allclose(adata.X[1], want, rtol=1e-3, atol=1e-3)
    assert frac[1] == pytest.approx(area / (np.pi * r * r), rel=1e-6)


class _Tile:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x


def _tissue_mask() -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    return mask


def test_read_circles_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("x,y,d\n1,2,3\n")
    with pytest.raises(InputFileError, match="missing column"):
        read_circles(bad)
    bad.write_text("x_um,y_um,diameter_um\n1,2,3\n1,2,-1\n")
    with pytest.raises(InputFileError, match="line"):
        read_circles(bad)


@pytest.mark.slow
def test_cli_train_predict_spots_on_sample(tmp_path: Path) -> None:
    import anndata as ad

    from napari_histoexpress.cli import main
    from napari_histoexpress.io.synthetic import sample_paths

    paths = sample_paths()
    run = tmp_path / "run"
    assert main(["train", "--data", str(paths["spots"]), "--genes", "5", "--epochs", "1",
                 "--crops-per-epoch", "4", "--batch-size", "4", "--mpp", "4", "--crop-um", "256",
                 "--decoder-dim", "16", "--device", "cpu", "--out", str(run)]) == 0  # fmt: skip
    store = tmp_path / "sample.zarr"
    assert main(["predict", "--run", str(run), "--slide", str(paths["image"]), "--out",
                 str(store), "--tile-px", "128", "--device", "cpu"]) == 0  # fmt: skip
    opened = DenseMapStore.open(store)
    assert opened.status == "complete" and len(opened.genes) == 5
    circles = tmp_path / "circles.csv"
    pd.DataFrame({"x_um": [400.0, 800.0], "y_um": [400.0, 900.0],
                  "diameter_um": [55.0, 8.0]}).to_csv(circles, index=False)  # fmt: skip
    out = tmp_path / "spots.h5ad"
    assert main(["spots", "--map", str(store), "--circles", str(circles), "--out", str(out)]) == 0
    spots = ad.read_h5ad(out)
    assert spots.shape == (2, 5) and np.isfinite(spots.X).all()
    (lib,) = spots.uns["spatial"].values()  # ready for sc.pl.spatial: image + scalefactors
    assert lib["images"]["hires"].ndim == 3 and lib["scalefactors"]["tissue_hires_scalef"] > 0
    csv = tmp_path / "spots.csv"
    assert main(["spots", "--map", str(store), "--circles", str(circles), "--out", str(csv)]) == 0
    assert len(pd.read_csv(csv)) == 2


def test_an_added_gene_is_aggregated_like_the_others(tmp_path: Path) -> None:
    """mean and sum aggregation of a gene added after prediction (``apply_head``)."""
    store, feats, _W, _b = _store(tmp_path)
    w = np.array([0.5, -1.0, 0.0, 2.0, 1.0], np.float32)
    store.add_genes(["NEW"], w, -0.5, source="zero-shot")
    circles = pd.DataFrame({"x_um": [100.0, 5000.0], "y_um": [200.0, 10.0], "diameter_um": 55.0})
    mean = predict_circles(store, circles)
    total = predict_circles(store, circles, reduce="sum")
    assert list(mean.var_names) == ["ERBB2", "PTPRC", "COL1A1", "NEW"]
    gene = feats.astype(np.float64) @ w.astype(np.float64) - 0.5
    centres, radii = circles_to_grid(
        circles.x_um.to_numpy(), circles.y_um.to_numpy(), circles.diameter_um.to_numpy(),
        map_mpp=8.0, slide_mpp=1.0,
    )  # fmt: skip
    (cx, cy), r = centres[0], radii[0]
    s = brute_force_circle_sum(gene[..., None], cx, cy, r)[0]
    area = brute_force_circle_sum(np.ones((*gene.shape, 1)), cx, cy, r)[0]
    np.testing.assert_allclose(mean.X[0, 3], s / area, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(total.X[0, 3], s, rtol=1e-4, atol=1e-3)  # bias once per px²
    assert np.isnan(mean.X[1]).all()  # off the map: NaN in every gene, the new one too


def test_a_visium_hd_grid_streams_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of 8 µm bins (and 2 µm ones) over the whole map and past its border: the
    batched, streamed aggregation equals the brute force on the gene maps, and tiny batches
    with a one-chunk cache give the same X (the streaming does not change values)."""
    import napari_histoexpress.inference.prefix_cache as pc

    store, feats, W, b = _store(tmp_path)
    yy, xx = np.mgrid[0:75, 0:60]
    circles = pd.DataFrame(
        {
            "x_um": -4.0 + xx.ravel() * 10.0,  # map: 560 x 720 µm
            "y_um": -4.0 + yy.ravel() * 10.0,
            "diameter_um": np.where((xx + yy).ravel() % 3 == 0, 2.0, 8.0),
        }
    )
    adata = predict_circles(store, circles)
    assert adata.X.dtype == np.float32 and adata.shape == (4500, 3)
    gene_maps = feats.astype(np.float64) @ W.astype(np.float64) + b
    centres, radii = circles_to_grid(
        circles.x_um.to_numpy(), circles.y_um.to_numpy(), circles.diameter_um.to_numpy(),
        map_mpp=8.0, slide_mpp=1.0,
    )  # fmt: skip
    ones = np.ones((*gene_maps.shape[:2], 1))
    for i in [*range(0, 4500, 61), *range(4380, 4410)]:  # + a row below the map's edge
        (cx, cy), r = centres[i], radii[i]
        area = brute_force_circle_sum(ones, cx, cy, r)[0]
        if area < 1e-12:  # off the map (the brute force's rounding: ~1e-17)
            assert np.isnan(adata.X[i]).all() and adata.obs["area_fraction"].iloc[i] == 0
            continue
        np.testing.assert_allclose(
            adata.X[i], brute_force_circle_sum(gene_maps, cx, cy, r) / area, rtol=1e-4, atol=1e-4
        )
        assert adata.obs["area_fraction"].iloc[i] == pytest.approx(area / (np.pi * r * r))
    monkeypatch.setattr(pc, "BATCH_KNOTS", 100)
    monkeypatch.setattr("napari_histoexpress.inference.spots.DEFAULT_CACHE_MB", 0.01)
    streamed = predict_circles(store, circles)
    np.testing.assert_allclose(streamed.X, adata.X, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.isnan(streamed.X), np.isnan(adata.X))


def test_sums_of_circles_off_the_map_are_nan(tmp_path: Path) -> None:
    from napari_histoexpress.inference.spots import aggregate_circles

    store, *_ = _store(tmp_path)
    centres = np.array([[30.0, 40.0], [500.0, 500.0]])
    pooled, area = aggregate_circles(store, centres, np.array([3.0, 3.0]), reduce="sum")
    assert np.isfinite(pooled[0]).all() and np.isnan(pooled[1]).all() and area[1] == 0
    with pytest.raises(ValueError, match="reduce"):
        aggregate_circles(store, centres, np.array([3.0, 3.0]), reduce="max")
