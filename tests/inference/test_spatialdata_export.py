"""A slide's predictions → a SpatialData store; read back by spatialdata itself."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata  # the [spatialdata] extra, in the test extras: no skip

from dense_toys import random_slide_store
from napari_histoexpress.errors import HistoExpressError, MissingExtraError
from napari_histoexpress.inference import spatialdata_export as sx
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_export import export_spots
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.io.synthetic import sample_paths

GENES = ["ERBB2", "PTPRC", "COL1A1"]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def slide_info() -> dict:
    path = Path(sample_paths()["image"])
    with open_slide(path) as slide:
        return {"path": str(path), "shape": list(slide.shape), "mpp": float(slide.mpp)}


@pytest.fixture
def store(tmp_path: Path, slide_info: dict) -> DenseMapStore:
    return random_slide_store(tmp_path, slide_info, GENES, unpredicted_corner=True)


def _spots() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["d0", "d1", "g0", "g1"],
            "x_um": [100.0, 700.5, 300.0, 1200.0],
            "y_um": [300.0, 1200.0, 900.0, 250.0],
            "diameter_um": [55.0, 100.0, 8.0, 2.0],
            "source": ["drawn", "drawn", "grid", "grid"],
        }
    )


def _level0(element: Any) -> Any:
    """Level 0 of a multiscale image (a DataTree) or the single-scale image itself."""
    return element["scale0"]["image"] if hasattr(element, "children") else element


def test_store_reads_back_and_agrees_with_the_h5ad_export(
    tmp_path: Path, store: DenseMapStore, slide_info: dict
) -> None:
    from spatialdata.transformations import get_transformation

    out = tmp_path / "C1.sdata.zarr"
    result = sx.export_spatialdata(store, out, _spots(), genes=["ERBB2", "COL1A1"])
    assert result.warnings == []
    h5 = ad.read_h5ad(export_spots(store, _spots(), tmp_path / "spots.h5ad").path)

    sdata = spatialdata.read_zarr(out)
    prefix = sx.element_prefix(Path(slide_info["path"]).name.split(".")[0])
    assert set(sdata.images) == {f"{prefix}_image", f"{prefix}_gene_maps"}
    assert set(sdata.shapes) == {f"{prefix}_spots"} and set(sdata.tables) == {"table"}
    assert result.elements[f"{prefix}_spots"] == "shapes"

    # circles: centres and radii in full-res pixels, as the .h5ad's obsm / diameter_px
    circles = sdata.shapes[f"{prefix}_spots"]
    xy = np.stack([circles.geometry.x, circles.geometry.y], axis=1)
    np.testing.assert_allclose(xy, h5.obsm["spatial"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(circles["radius"], h5.obs["diameter_px"] / 2, rtol=0, atol=1e-6)

    # the table annotates the circles by the SpatialData convention; values = the .h5ad's
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {"region": f"{prefix}_spots", "region_key": "region",
                     "instance_key": "instance_id"}  # fmt: skip
    assert list(table.obs["instance_id"]) == list(circles.index)
    assert list(table.obs_names) == list(h5.obs_names) == ["d0", "d1", "g0", "g1"]
    np.testing.assert_allclose(np.asarray(table.X), np.asarray(h5.X), rtol=1e-6, equal_nan=True)

    # µm: a scale of the slide's µm/px for the image and spots, the map's for the gene maps
    mpp = slide_info["mpp"]
    for name, scale in ((f"{prefix}_image", mpp), (f"{prefix}_spots", mpp),
                        (f"{prefix}_gene_maps", 8.0)):  # fmt: skip
        t = get_transformation(sdata[name], to_coordinate_system=sx.MICRON_SYSTEM)
        m = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        np.testing.assert_allclose(m, [[scale, 0, 0], [0, scale, 0], [0, 0, 1]], rtol=1e-12)
    t = get_transformation(sdata[f"{prefix}_gene_maps"], to_coordinate_system=sx.PIXEL_SYSTEM)
    m = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(np.diag(m)[:2], 8.0 / mpp, rtol=1e-12)

    # the gene maps: one channel per gene, the store's values (NaN where not predicted)
    maps = _level0(sdata.images[f"{prefix}_gene_maps"])
    assert list(maps.coords["c"].values) == ["ERBB2", "COL1A1"]
    expected = np.asarray(store.gene_maps(["ERBB2", "COL1A1"])).transpose(2, 0, 1)
    np.testing.assert_allclose(maps.values, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(maps.values[:, :5, :7]).all()

    # the image: the slide's pixels, multiscale, and the plugin reopens it as a slide in µm
    image = sdata.images[f"{prefix}_image"]
    assert len(image.children) >= 2
    with open_slide(slide_info["path"]) as slide:
        window = np.asarray(slide.levels[0][200:260, 300:380])
    np.testing.assert_array_equal(
        image["scale0"]["image"].values[:, 200:260, 300:380].transpose(1, 2, 0), window
    )
    with open_slide(out / "images" / f"{prefix}_image") as again:
        assert again.shape == tuple(slide_info["shape"])
        assert again.mpp == pytest.approx(mpp) and again.mpp_source == "spatialdata"
        np.testing.assert_array_equal(np.asarray(again.levels[0][200:260, 300:380]), window)


def test_without_a_readable_slide_the_store_has_no_image_and_says_why(
    tmp_path: Path, store: DenseMapStore
) -> None:
    result = sx.export_spatialdata(
        store, tmp_path / "x.zarr", _spots(), slide_path=tmp_path / "gone.ome.tif"
    )
    assert len(result.warnings) == 1 and "gone.ome.tif" in result.warnings[0]
    sdata = spatialdata.read_zarr(result.path)
    assert not sdata.images and len(sdata.shapes) == 1


def test_a_failed_export_keeps_the_existing_store(
    tmp_path: Path, store: DenseMapStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.zarr"
    sx.export_spatialdata(store, out, _spots(), with_image=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def fail(self: Any, *args: Any, **kwargs: Any) -> None:
        Path(args[0]).mkdir()
        (Path(args[0]) / "half").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(spatialdata.SpatialData, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        sx.export_spatialdata(store, out, _spots(), with_image=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_genes_and_nothing_to_write_are_clear_errors(
    tmp_path: Path, store: DenseMapStore
) -> None:
    with pytest.raises(HistoExpressError, match=r"\['NOPE'\] are not in the map"):
        sx.spatialdata_of(store, genes=["NOPE"])
    with pytest.raises(HistoExpressError, match="nothing to write"):
        sx.spatialdata_of(store, with_image=False)


def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_spatialdata(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "spatialdata":
            raise ImportError("No module named 'spatialdata'", name="spatialdata")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spatialdata)
    with pytest.raises(MissingExtraError, match=r"napari-histoexpress\[spatialdata\]"):
        sx.require_spatialdata()


def test_an_exported_store_imports_back_as_the_same_spots(
    tmp_path: Path, store: DenseMapStore, slide_info: dict
) -> None:
    """export → import: centres, diameters and µm/px as the .h5ad export; the image reopens."""
    from napari_histoexpress.io import spatial
    from napari_histoexpress.io.spatialdata_import import read_spatialdata

    out = sx.export_spatialdata(store, tmp_path / "C1.zarr", _spots()).path
    back = read_spatialdata(out)
    h5 = ad.read_h5ad(export_spots(store, _spots(), tmp_path / "spots.h5ad").path)
    np.testing.assert_allclose(back.obsm["spatial"], h5.obsm["spatial"], rtol=0, atol=1e-6)
    assert list(back.obs_names) == list(h5.obs_names)
    np.testing.assert_allclose(np.asarray(back.X.todense()), np.asarray(h5.X), rtol=1e-6)
    assert spatial.microns_per_pixel(back) == pytest.approx(slide_info["mpp"])
    assert spatial.library(back)[1]["metadata"]["mpp_source"] == "spatialdata"
    np.testing.assert_allclose(back.obs["diameter_um"], h5.obs["diameter_um"])


def test_cli_export_and_import_spatialdata(
    tmp_path: Path, store: DenseMapStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_histoexpress.cli import main

    circles = tmp_path / "circles.csv"
    _spots().to_csv(circles, index=False)
    out = tmp_path / "C1.sdata.zarr"
    argv = ["export", "spatialdata", "--map", str(store.path), "--spots", str(circles),
            "--genes", "ERBB2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 spots" in printed and "(shapes)" in printed and str(out) in printed
    sdata = spatialdata.read_zarr(out)
    assert len(sdata.images) == 2 and sdata.tables["table"].n_obs == 4

    h5 = tmp_path / "back.h5ad"
    assert main(["import", "spatialdata", str(out), "--out", str(h5)]) == 0
    back = ad.read_h5ad(h5)
    assert back.n_obs == 4 and list(back.var_names) == GENES

    # a bad store: exit 2 with the file named
    assert main(["import", "spatialdata", str(tmp_path), "--out", str(h5)]) == 2
    assert "not a SpatialData store" in capsys.readouterr().err
