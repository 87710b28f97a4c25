"""SpatialData stores (Visium-like circles, Visium HD-like square bins) → the spatial AnnData."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import spatialdata  # the [spatialdata] extra, in the test extras: no skip
from anndata import AnnData

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io import spatial
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.io.spatialdata_import import (
    is_spatialdata_store,
    read_spatialdata,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _image(h: int = 600, w: int = 800) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(3, h, w), dtype=np.uint8)


def _counts(n: int, genes: int = 4) -> AnnData:
    rng = np.random.default_rng(2)
    return AnnData(rng.poisson(3, size=(n, genes)).astype(np.float32),
                   var=pd.DataFrame(index=[f"G{i}" for i in range(genes)]))  # fmt: skip


def _write_visium_like(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Full-res image (identity to global) and 55 µm circles, ids as spaceranger barcodes;
    the table lists one extra barcode with no shape."""
    import shapely
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    xy = np.array([[100.0, 120.0], [300.5, 200.0], [650.0, 480.0]])
    radius = 40.0  # px → 55 µm / 80 px = 0.6875 µm/px
    img = Image2DModel.parse(_image(), dims=("c", "y", "x"), scale_factors=[2],
                             transformations={"global": Identity()})  # fmt: skip
    ids = ["AAAC-1", "AAAG-1", "AACT-1"]
    circles = gpd.GeoDataFrame({"radius": [radius] * 3}, geometry=shapely.points(xy),
                               index=pd.Index(ids))  # fmt: skip
    shapes = ShapesModel.parse(circles, transformations={"global": Identity()})
    table = _counts(4)
    table.obs = pd.DataFrame({"region": pd.Categorical(["spots"] * 4),
                              "barcode": [*ids[::-1], "MISSING-1"]},
                             index=[f"r{i}" for i in range(4)])  # fmt: skip
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="barcode")
    sd = spatialdata.SpatialData(images={"he_full": img}, shapes={"spots": shapes},
                                 tables={"table": table})  # fmt: skip
    sd.write(path)
    return xy, np.full(3, 2 * radius)


def test_a_visium_like_store_imports_in_full_res_pixels(tmp_path: Path) -> None:
    store = tmp_path / "vis.zarr"
    xy, diameter = _write_visium_like(store)
    assert (diameter == 80.0).all()
    assert is_spatialdata_store(store) and not is_spatialdata_store(tmp_path)
    adata = read_spatialdata(store, spot_diameter_um=55.0)

    # rows follow the table; the barcode without a shape is dropped and counted
    assert list(adata.obs["barcode"]) == ["AACT-1", "AAAG-1", "AAAC-1"]
    np.testing.assert_allclose(adata.obsm["spatial"], xy[::-1], atol=1e-9)
    lib_id, lib = spatial.library(adata)
    assert lib_id == "vis"
    assert lib["metadata"]["n_dropped_rows"] == 1
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(80.0)
    assert spatial.microns_per_pixel(adata) == pytest.approx(55.0 / 80.0)
    assert lib["metadata"]["mpp_source"] == "spot-diameter"
    assert lib["images"]["hires"].shape[2] == 3 and "tissue_hires_scalef" in lib["scalefactors"]
    assert adata.X.shape == (3, 4) and adata.X.dtype == np.float32

    # the source image is the store's image group, which opens as a slide
    src = spatial.source_image_path(adata)
    assert src is not None and src.endswith("images/he_full")
    with open_slide(src, mpp=spatial.microns_per_pixel(adata)) as slide:
        assert slide.shape == (600, 800)
        np.testing.assert_array_equal(
            np.asarray(slide.levels[0][10:20, 30:40]), _image()[:, 10:20, 30:40].transpose(1, 2, 0)
        )


def test_hd_like_square_bins_map_into_the_image_through_the_transformations(
    tmp_path: Path,
) -> None:
    """Bins in 'global' = a full-res frame; the image is a 4x-downscaled copy
    (global ← image: scale 4), as spatialdata-io writes hires images."""
    import shapely
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    side_full = 8 / 0.25  # 8 µm bins at 0.25 µm/px → 32 full-res px
    corners = np.array([[0.0, 0.0], [side_full * 10, side_full * 3], [640.0, 1280.0]])
    squares = [shapely.box(x, y, x + side_full, y + side_full) for x, y in corners]
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=squares, index=pd.RangeIndex(3)),
        transformations={"global": Identity()},
    )
    to_global = {"global": Scale([4.0, 4.0], axes=("y", "x"))}
    img = Image2DModel.parse(_image(), dims=("c", "y", "x"), transformations=to_global)
    table = _counts(3)
    table.obs = pd.DataFrame({"region": pd.Categorical(["square_008um"] * 3),
                              "location_id": [0, 1, 2]}, index=["b0", "b1", "b2"])  # fmt: skip
    table = TableModel.parse(table, region="square_008um", region_key="region",
                             instance_key="location_id")  # fmt: skip
    sd = spatialdata.SpatialData(images={"hires": img}, shapes={"square_008um": shapes},
                                 tables={"square_008um_table": table})  # fmt: skip
    store = tmp_path / "hd.zarr"
    sd.write(store)

    adata = read_spatialdata(store)
    centres_img = (corners + side_full / 2) / 4.0
    np.testing.assert_allclose(adata.obsm["spatial"], centres_img, atol=1e-9)
    np.testing.assert_allclose(adata.obs["bin_side_px"], side_full / 4.0)
    # the µm/px of the image: 8 µm over the bin side in image pixels (8 px)
    assert spatial.microns_per_pixel(adata) == pytest.approx(1.0)
    _, lib = spatial.library(adata)
    assert lib["metadata"]["mpp_source"] == "bin-size"
    assert lib["metadata"]["spot_shape"] == "polygon"
    # equal-area circle of the bin
    assert lib["metadata"]["spot_diameter_um"] == pytest.approx(2 * 8 / np.sqrt(np.pi))


def test_bad_stores_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_spatialdata(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputFileError, match="not a SpatialData store"):
        read_spatialdata(tmp_path / "plain")
    store = tmp_path / "vis.zarr"
    _write_visium_like(store)
    with pytest.raises(InputFileError, match="no table 'other'"):
        read_spatialdata(store, table="other")
    with pytest.raises(InputFileError, match="no image 'x'"):
        read_spatialdata(store, image="x")


def test_an_imported_store_is_a_training_section(tmp_path: Path) -> None:
    """import → .h5ad → load_section (the image read from the store) → spot crops."""
    from napari_histoexpress.io.export import write_h5ad_atomic
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.spot_crops import SpotCropDataset

    store = tmp_path / "vis.zarr"
    _write_visium_like(store)
    h5 = write_h5ad_atomic(read_spatialdata(store, spot_diameter_um=55.0), tmp_path / "v.h5ad")
    section = load_section(h5)
    assert section.slide.mpp == pytest.approx(55.0 / 80.0)
    assert section.slide.shape == (600, 800)
    data = SpotCropDataset([section.pair()], ["G0", "G1"], mpp=2.0, crop_um=200.0,
                           jitter_um=0.0, augment=False)  # fmt: skip
    item = data[0]
    assert tuple(item["image"].shape) == (3, 100, 100) and item["targets"].shape[1] == 2
