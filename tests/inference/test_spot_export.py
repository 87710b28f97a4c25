"""Spots + predicted expression → .h5ad (scanpy/squidpy spatial convention) or .csv."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from dense_toys import random_slide_store
from napari_histoexpress.errors import InputFileError
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_export import (
    CSV_FIXED_COLUMNS,
    ExportError,
    combine_spot_tables,
    export_spots,
    spots_anndata,
    spots_csv_table,
)
from napari_histoexpress.inference.spots import predict_circles
from napari_histoexpress.io import spatial
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.io.synthetic import sample_paths

GENES = ["ERBB2", "PTPRC", "COL1A1"]
pytestmark = pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter`:FutureWarning")


@pytest.fixture(scope="module")
def slide_info() -> dict:
    path = Path(sample_paths()["image"])
    with open_slide(path) as slide:
        return {"path": str(path), "shape": list(slide.shape), "mpp": float(slide.mpp)}


def _store(folder: Path, slide: dict, *, map_mpp: float = 8.0, c: int = 4) -> DenseMapStore:
    """A complete random store covering the slide (the sample slide's path in its attrs)."""
    prov = {"run_dir": "/runs/r1", "model": "pixnet", "created": "2025-01-01T00:00:00+00:00"}
    return random_slide_store(folder, slide, GENES, map_mpp=map_mpp, c=c, provenance=prov)


@pytest.fixture
def store(tmp_path: Path, slide_info: dict) -> DenseMapStore:
    return _store(tmp_path, slide_info)


def _spots() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["d0", "d1", "g0", "g1", "g2"],
            "x_um": [100.0, 700.5, 300.0, 1200.0, 1400.0],
            "y_um": [300.0, 1200.0, 900.0, 250.0, 1300.0],
            "diameter_um": [55.0, 100.0, 30.0, 55.0, 80.0],
            "source": ["drawn", "drawn", "grid", "grid", "grid"],
        }
    )


def test_h5ad_follows_the_spatial_convention(tmp_path: Path, store, slide_info) -> None:
    spots = _spots()
    out = tmp_path / "spots.h5ad"
    result = export_spots(store, spots, out)
    assert result.path == out and (result.n_spots, result.n_genes) == (5, 3)
    assert result.warnings == []
    adata = ad.read_h5ad(out)
    mpp = slide_info["mpp"]
    assert list(adata.obs_names) == spots["id"].tolist()
    assert list(adata.var_names) == GENES
    np.testing.assert_allclose(
        adata.obsm["spatial"], spots[["x_um", "y_um"]].to_numpy() / mpp, rtol=1e-12
    )
    # each spot's own size in obs; the one plotting size is the median
    np.testing.assert_allclose(adata.obs["diameter_um"], spots["diameter_um"])
    np.testing.assert_allclose(adata.obs["diameter_px"], spots["diameter_um"] / mpp)
    assert list(adata.obs["source"]) == spots["source"].tolist()
    lib_id, lib = spatial.library(adata)
    assert lib_id == "synthetic_tissue"
    sf = lib["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(55.0 / mpp)
    assert spatial.spot_diameter_px(adata) == pytest.approx(55.0 / mpp)
    assert spatial.microns_per_pixel(adata) == pytest.approx(mpp)
    assert spatial.source_image_path(adata) == slide_info["path"]
    # images: uint8 RGB, Space Ranger sizes, scale factor = image side / full-res side
    full_h, full_w = slide_info["shape"]
    for key, side in (("hires", 2000), ("lowres", 600)):
        img = lib["images"][key]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert max(img.shape[:2]) == min(side, max(full_h, full_w))
        scalef = sf[f"tissue_{key}_scalef"]
        assert scalef == pytest.approx(max(img.shape[:2]) / max(full_h, full_w), rel=1e-12)
        assert img.shape[:2] == (round(full_h * scalef), round(full_w * scalef))
    # squidpy-style reader: image + its scale factor + spot size from uns alone
    img = adata.uns["spatial"][lib_id]["images"]["hires"]
    xy = adata.obsm["spatial"] * sf["tissue_hires_scalef"]
    assert ((xy >= 0) & (xy < np.array(img.shape[1::-1]))).all()
    # provenance
    info = adata.uns["histoexpress"]
    assert info["run_dir"] == "/runs/r1" and info["model"] == "pixnet"
    assert list(info["genes"]) == GENES and info["aggregation"] == "mean"
    assert info["map_store"] == str(store.path) and info["package_version"]
    assert info["exported"][:4].isdigit() and info["predicted"].startswith("2025")
    assert "median" in info["spot_sizes"] and "warnings" not in info


def test_hires_image_is_the_slide_downsampled(store, slide_info) -> None:
    from PIL import Image

    adata = spots_anndata(store, _spots())
    _, lib = spatial.library(adata)
    hires = lib["images"]["hires"]
    with open_slide(slide_info["path"]) as slide:
        level = np.asarray(slide.levels[2])  # 768 px
    small = np.asarray(Image.fromarray(hires).resize(level.shape[1::-1], Image.Resampling.BOX))
    a, b = small.astype(float).mean(axis=2), level.astype(float).mean(axis=2)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95  # same picture, same orientation
    assert np.corrcoef(a.ravel(), b.T.ravel())[0, 1] < 0.9  # ... and not transposed


def test_values_equal_predict_circles(store) -> None:
    spots = _spots()
    adata = spots_anndata(store, spots)
    ref = predict_circles(store, spots)
    np.testing.assert_array_equal(adata.X, ref.X)
    np.testing.assert_array_equal(adata.obs["area_fraction"], ref.obs["area_fraction"])


def test_a_gene_added_to_the_map_is_exported(tmp_path: Path, store) -> None:
    store.add_genes(["ZS"], np.ones(store.feature_dim), 0.0, source="zero-shot")
    adata = spots_anndata(store, _spots(), with_images=False)
    assert list(adata.var_names) == [*GENES, "ZS"]
    assert adata.uns["histoexpress"]["genes"][-1] == "ZS"
    np.testing.assert_array_equal(adata.X, predict_circles(store, _spots()).X)
    table = spots_csv_table(adata)
    assert table.columns[-1] == "ZS"


def test_sc_pl_spatial_draws_spots_on_the_hires_image(tmp_path: Path, store) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    from matplotlib.collections import PatchCollection

    out = export_spots(store, _spots(), tmp_path / "s.h5ad").path
    adata = sc.read_h5ad(out)
    _, lib = spatial.library(adata)
    scalef = lib["scalefactors"]["tissue_hires_scalef"]
    hires = lib["images"]["hires"]
    try:
        axs = sc.pl.spatial(adata, color="ERBB2", show=False)
        ax = axs[0]
        (coll,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
        paths = coll.get_paths()
        assert len(paths) == adata.n_obs
        ext = np.array([[p.vertices.min(0), p.vertices.max(0)] for p in paths])
        centres = ext.mean(axis=1)
        radii = (ext[:, 1] - ext[:, 0]) / 2
        want = adata.obsm["spatial"] * scalef
        order = np.lexsort(centres.T[::-1])
        np.testing.assert_allclose(
            centres[order], want[np.lexsort(want.T[::-1])], atol=1e-6, rtol=1e-9
        )
        expect_r = lib["scalefactors"]["spot_diameter_fullres"] * scalef / 2
        np.testing.assert_allclose(radii, expect_r, rtol=1e-6)
        (image,) = ax.get_images()
        h, w = hires.shape[:2]
        np.testing.assert_allclose(image.get_extent(), (-0.5, w - 0.5, h - 0.5, -0.5))
        np.testing.assert_array_equal(image.get_array()[..., :3], hires)
    finally:
        plt.close("all")


def test_csv_has_spot_columns_then_genes(tmp_path: Path, store) -> None:
    spots = _spots()
    result = export_spots(store, spots, tmp_path / "spots.csv")
    df = pd.read_csv(result.path, dtype={"id": str})
    assert list(df.columns) == [*CSV_FIXED_COLUMNS, *GENES]
    assert df["id"].tolist() == spots["id"].tolist()
    np.testing.assert_allclose(df[["x_um", "y_um", "diameter_um"]], spots.iloc[:, 1:4])
    ref = predict_circles(store, spots)
    np.testing.assert_allclose(df[GENES].to_numpy(), ref.X, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".h5ad", ".csv"])
def test_failed_write_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, store, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    out = tmp_path / "out" / f"spots{suffix}"
    out.parent.mkdir()
    out.write_bytes(b"previous good export")

    def half_write(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    target = (ad.AnnData, "write_h5ad") if suffix == ".h5ad" else (pd.DataFrame, "to_csv")
    monkeypatch.setattr(*target, half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        export_spots(store, _spots(), out)
    assert out.read_bytes() == b"previous good export"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_unwritable_folder_is_a_clear_error(
    tmp_path: Path, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(InputFileError, match=r"cannot write.*Permission denied"):
        export_spots(store, _spots(), tmp_path / "s.h5ad")
    assert not (tmp_path / "s.h5ad").exists()
    with pytest.raises(InputFileError, match="does not exist"):
        export_spots(store, _spots(), tmp_path / "missing" / "s.h5ad")


def test_missing_slide_exports_without_image_and_warns(tmp_path: Path, slide_info) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    gone = {**slide_info, "path": str(tmp_path / "moved_away.ome.tif")}
    store = _store(tmp_path, gone)
    result = export_spots(store, _spots(), tmp_path / "s.h5ad")
    assert len(result.warnings) == 1 and "moved_away.ome.tif" in result.warnings[0]
    assert "without image" in result.warnings[0]
    adata = ad.read_h5ad(result.path)
    assert list(adata.uns["histoexpress"]["warnings"]) == result.warnings
    _, lib = spatial.library(adata)
    assert not lib.get("images")
    assert "tissue_hires_scalef" not in lib["scalefactors"]
    np.testing.assert_array_equal(adata.X, predict_circles(store, _spots()).X)
    try:
        sc.pl.spatial(adata, color="ERBB2", img_key=None, show=False)
    finally:
        plt.close("all")


def test_slide_of_another_size_is_not_used(tmp_path: Path, slide_info) -> None:
    other = {**slide_info, "shape": [100, 200]}
    adata = spots_anndata(_store(tmp_path, other), _spots())
    assert not spatial.library(adata)[1].get("images")
    assert "100 x 200" in adata.uns["histoexpress"]["warnings"][0]


def test_bad_requests(tmp_path: Path, store) -> None:
    with pytest.raises(ExportError, match="no spots"):
        export_spots(store, _spots().iloc[:0], tmp_path / "s.h5ad")
    with pytest.raises(ExportError, match="unknown export format"):
        export_spots(store, _spots(), tmp_path / "s.xlsx")
    assert list(tmp_path.glob("s.*")) == []


def test_combine_spot_tables_keeps_ids_unique() -> None:
    a = _spots().iloc[:2]
    b = _spots().iloc[:3]
    both = combine_spot_tables({"A spots": a, "B spots": b, "empty": a.iloc[:0]})
    assert both["id"].tolist() == ["d0", "d1", "B spots:d0", "B spots:d1", "B spots:g0"]
    assert combine_spot_tables({"A": a, "C": _spots().iloc[2:]})["id"].tolist() == (
        _spots()["id"].tolist()
    )
    assert len(combine_spot_tables({})) == 0
