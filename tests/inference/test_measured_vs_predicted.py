"""Measured vs predicted: a map with tile-constant features and spots whose normalised counts
are known, so every PCC is known (1, -1, NaN)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_histoexpress.expression import expression_matrix
from napari_histoexpress.inference import measured_vs_predicted as mvp
from napari_histoexpress.inference.map_store import DenseMapStore

SLIDE_MPP, MAP_MPP, CHUNK, GRID = 0.5, 8.0, 16, 6
GENES = [
    "A",
    "B",
    "C",
    "D",
    "E",
]  # D is not measured; C predicted constant; E never detected (constant 0)


def _case(tmp_path: Path, *, skip_tile: tuple[int, int] | None = None, provenance=None):
    rng = np.random.default_rng(1)
    n = GRID * GRID
    lib = rng.integers(5_000, 20_000, n).astype(float)
    n_a, n_b = rng.integers(1, 400, n), rng.integers(1, 400, n)
    true_a = np.log1p(n_a * 1e4 / lib)  # what training normalisation gives
    true_b = np.log1p(n_b * 1e4 / lib)
    # features per tile: f0 = true A, f1 = 3 - 2 * true B  -> PCC(A) = 1, PCC(B) = -1
    W = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 1, 1]], np.float32)
    b = np.array([0, 0, 0.5, 0, 0], np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=(GRID * CHUNK, GRID * CHUNK), feature_dim=2, genes=GENES,
        head_W=W, head_b=b, map_mpp=MAP_MPP, chunk=CHUNK,
        attrs={"slide": {"path": str(tmp_path / "slide.tif"), "mpp": SLIDE_MPP},
               "provenance": provenance or {}},
    )  # fmt: skip
    centres = []
    for k in range(n):
        r, c = divmod(k, GRID)
        feats = np.empty((CHUNK, CHUNK, 2), np.float32)
        feats[..., 0], feats[..., 1] = true_a[k], 3 - 2 * true_b[k]
        t = SimpleNamespace(map_y0=r * CHUNK, map_x0=c * CHUNK, row=r, col=c)
        store.write_tile(t, feats)
        if (r, c) != skip_tile:
            store.mark_done(t)
        # spot centre at the tile centre, in slide pixels
        centres.append(((c * CHUNK + CHUNK / 2) * MAP_MPP / SLIDE_MPP,
                        (r * CHUNK + CHUNK / 2) * MAP_MPP / SLIDE_MPP))  # fmt: skip
    counts = np.stack([n_a, n_b, rng.integers(1, 50, n), np.zeros(n), np.zeros(n)], axis=1).astype(
        float
    )
    counts[:, 4] = lib - counts[:, :4].sum(1)  # filler "OTHER" gene: library size = lib
    adata = ad.AnnData(
        X=counts.astype(np.float32),
        obs=pd.DataFrame(index=[f"s{k}" for k in range(n)]),
        var=pd.DataFrame(index=["A", "B", "C", "E", "OTHER"]),
    )
    adata.obsm["spatial"] = np.asarray(centres, float)
    adata.uns["spatial"] = {
        "lib": {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": 50.0 / SLIDE_MPP},
            "metadata": {"source_image_path": str(tmp_path / "slide.tif")},
        }
    }
    return store, adata, true_a


def test_pcc_is_known(tmp_path: Path) -> None:
    store, adata, true_a = _case(tmp_path)
    res = mvp.compare(store, adata)
    assert res.n_spots_used == res.n_spots_total == GRID * GRID
    assert res.target_sum == 1e4 and "default" in res.normalisation_source
    # the spot disks lie inside constant tiles: predictions are exact
    np.testing.assert_allclose(res.predicted[:, 0], true_a, rtol=1e-5)
    np.testing.assert_allclose(res.measured[:, 0], true_a, rtol=1e-5)
    assert res.pcc_of("A") == pytest.approx(1.0, abs=1e-6)
    assert res.pcc_of("B") == pytest.approx(-1.0, abs=1e-6)
    assert np.isnan(res.pcc_of("C")) and np.isnan(res.pcc_of("E"))  # constant pred / measured
    assert np.isnan(res.pcc_of("D"))
    assert res.zero_variance_genes == ["C", "E"] and res.missing_genes == ["D"]
    assert res.n_genes_pcc == 2 and res.mean_pcc == pytest.approx(0.0, abs=1e-6)
    assert list(res.per_gene()["gene"]) == GENES  # NaN genes reported, not dropped
    np.testing.assert_allclose(
        mvp.measured_values(adata, "B"), expression_matrix(adata, ["B"])[:, 0]
    )


def test_spots_on_uncomputed_tiles_are_left_out(tmp_path: Path) -> None:
    store, adata, _ = _case(tmp_path, skip_tile=(2, 3))
    res = mvp.compare(store, adata)
    assert res.n_spots_used == GRID * GRID - 1 and f"s{2 * GRID + 3}" not in res.spots


def test_target_sum_comes_from_the_run_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"target_sum": 1e6}}))
    store, adata, _ = _case(tmp_path, provenance={"run_dir": str(run)})
    assert mvp.model_target_sum(store) == (1e6, f"run config {run / 'config.json'}")
    res = mvp.compare(store, adata)
    np.testing.assert_allclose(
        res.measured[:, :2], expression_matrix(adata, ["A", "B"], 1e6), rtol=1e-6
    )
    assert res.pcc_of("A") < 1.0 - 1e-6  # another scale than the one the features encode


def test_target_sum_recorded_in_the_store_comes_first(tmp_path: Path) -> None:
    """The store's typed normalisation (a bare provenance target_sum, as older stores record
    it) wins over the run config."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"target_sum": 1e6}}))
    store, _adata, _ = _case(tmp_path, provenance={"run_dir": str(run), "target_sum": 5e3})
    assert store.normalisation is not None and store.normalisation.target_sum == 5e3
    assert mvp.model_target_sum(store) == (5e3, "map provenance")


def test_cache_is_per_store_and_adata(tmp_path: Path) -> None:
    mvp.clear_cache()
    store, adata, _ = _case(tmp_path)
    first = mvp.cached_compare(store, adata)
    assert mvp.cached_compare(store, adata) is first
    assert mvp.cached_compare(store, adata.copy()) is not first


def test_too_few_spots_raise(tmp_path: Path) -> None:
    store, adata, _ = _case(tmp_path)
    adata.obsm["spatial"] = adata.obsm["spatial"] + 1e6  # all off the map
    with pytest.raises(ValueError, match="computed parts of the map"):
        mvp.compare(store, adata)


def test_matches_slide(tmp_path: Path) -> None:
    _, adata, _ = _case(tmp_path)
    assert mvp.matches_slide(adata, tmp_path / "slide.tif")
    assert not mvp.matches_slide(adata, tmp_path / "other.tif")
    adata.uns["spatial"]["lib"]["metadata"]["source_image_path"] = "slide.tif"  # relative
    assert mvp.matches_slide(adata, tmp_path / "elsewhere" / "slide.tif")
    del adata.uns["spatial"]["lib"]["metadata"]["source_image_path"]
    assert not mvp.matches_slide(adata, tmp_path / "slide.tif")
