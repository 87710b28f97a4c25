"""The plugin in a real napari viewer (Xvfb): File > Open, Open Sample, µm scale, spots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

PLUGIN = "napari-histoexpress"


def _write_pyramid(path: Path, mpp: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1024, 768, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
        tif.write(
            base,
            subifds=2,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            **opts,
        )
        tif.write(base[::2, ::2], subfiletype=1, **opts)
        tif.write(base[::4, ::4], subfiletype=1, **opts)
    return base


def test_open_pyramidal_tiff_as_one_multiscale_layer(make_napari_viewer, tmp_path: Path) -> None:
    path = tmp_path / "slide.tif"
    base = _write_pyramid(path, mpp=0.5)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    assert len(layer.data) >= 3
    assert layer.data[0].shape[:2] == base.shape[:2]
    np.testing.assert_allclose(layer.scale, [0.5, 0.5])
    assert layer.metadata["microns_per_pixel"] == pytest.approx(0.5)
    assert layer.metadata["mpp_source"] == "tiff-resolution"
    np.testing.assert_array_equal(np.asarray(layer.data[0][:16, :16]), base[:16, :16])


def test_unknown_mpp_is_stated(make_napari_viewer, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "plain.png"
    Image.fromarray(np.full((300, 200, 3), 200, np.uint8)).save(path)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="unknown"):
        (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.metadata["microns_per_pixel"] is None
    assert layer.metadata["mpp_source"] == "unknown"
    np.testing.assert_allclose(layer.scale, [1, 1])

    from napari_histoexpress import set_microns_per_pixel

    set_microns_per_pixel(layer, 0.74)
    np.testing.assert_allclose(layer.scale, [0.74, 0.74])
    assert layer.metadata["mpp_source"] == "user"


def test_open_spaceranger_folder_shows_slide_and_spots(
    make_napari_viewer, shared_data: Path
) -> None:
    folder = shared_data / "visium_toy"
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin=PLUGIN)
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Image", "Points"]
    points = next(layer for layer in layers if type(layer).__name__ == "Points")
    assert len(points.data) == 100
    mpp = points.metadata["microns_per_pixel"]
    # Visium spots are 55 µm: their size in world units (µm) must be 55
    assert points.size[0] * points.scale[0] == pytest.approx(55.0, rel=1e-6)
    assert mpp == pytest.approx(55.0 / 89.42751063343188)
    genes = [c for c in points.features.columns if c not in ("spot", "total_counts")]
    assert len(genes) > 10
    from napari_histoexpress import color_spots_by

    gene = max(genes, key=lambda g: points.features[g].var())
    color_spots_by(points, gene)  # a gene's measured values colour the spots
    assert points.face_color.shape == (100, 4)
    assert len(np.unique(points.face_color.round(3), axis=0)) > 5  # not one flat colour


def test_open_her2st_h5ad(make_napari_viewer, her2st: Path, tmp_path: Path) -> None:
    from napari_histoexpress.io.export import write_h5ad_atomic
    from napari_histoexpress.io.st_datasets import read_legacy_st

    adata = read_legacy_st(
        her2st / "images" / "C2.jpg",
        her2st / "counts" / "C2.tsv.gz",
        her2st / "spots" / "C2_selection.tsv",
    )
    path = write_h5ad_atomic(adata, tmp_path / "C2.h5ad")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    image = next(layer for layer in layers if type(layer).__name__ == "Image")
    points = next(layer for layer in layers if type(layer).__name__ == "Points")
    assert image.multiscale
    from PIL import Image

    with Image.open(her2st / "images" / "C2.jpg") as jpg:
        assert image.data[0].shape[:2] == (jpg.height, jpg.width)
    assert len(points.data) == adata.n_obs
    np.testing.assert_allclose(points.scale, image.scale)
    assert points.size[0] * points.scale[0] == pytest.approx(100.0, rel=1e-6)
    assert "ERBB2" in points.features.columns
    from napari_histoexpress import color_spots_by

    color_spots_by(points, "ERBB2")
    assert len(np.unique(points.face_color.round(3), axis=0)) > 10
    assert str(points.units[0]) == "micrometer" and str(image.units[0]) == "micrometer"


def test_open_sample_data(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_tissue")
    names = [layer.name for layer in viewer.layers]
    assert names == ["synthetic H&E", "ground truth compartments", "synthetic spots"]
    slide, truth, spots = viewer.layers
    assert slide.multiscale
    np.testing.assert_allclose(slide.scale, truth.scale)
    np.testing.assert_allclose(slide.scale, spots.scale)
    assert spots.size[0] * spots.scale[0] == pytest.approx(55.0, rel=1e-3)
    assert truth.data.shape == slide.data[0].shape[:2]


def test_gene_heatmap_layer_aligns_with_the_slide(make_napari_viewer, tmp_path: Path) -> None:
    """A stored map shown as a heatmap: lazy multiscale, µm-aligned with the slide layer."""

    from napari.layers import Layer

    from napari_histoexpress import gene_heatmap_layer_data
    from napari_histoexpress.inference.map_store import DenseMapStore

    slide_mpp, map_mpp, shape, chunk = 0.5, 8.0, (160, 120), 32
    W = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    b = np.array([0.5, -1.0], np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=2, genes=["ERBB2", "PTPRC"], head_W=W,
        head_b=b, map_mpp=map_mpp, chunk=chunk,
        attrs={"slide": {"path": "s.tif", "shape": [2560, 1920], "mpp": slide_mpp}},
    )  # fmt: skip
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    feats = np.stack([xx + 1, yy + 1], axis=-1)
    store.write_all(feats)
    viewer = make_napari_viewer()
    layer = viewer.add_layer(Layer.create(*gene_heatmap_layer_data(store, "PTPRC")))
    assert layer.name == "PTPRC" and layer.multiscale
    lo, hi = layer.contrast_limits
    assert lo < hi
    # map pixel (j=10, i=3) covers slide µm [80, 88) x [24, 32): its centre in napari world
    # (slide-pixel-centre convention) is 84 - 0.25 = 83.75 and 28 - 0.25 = 27.75
    world = np.asarray(layer.data_to_world((10, 3)))
    np.testing.assert_allclose(world, [83.75, 27.75])
    value = float(np.asarray(layer.data[0][10, 3]))
    assert value == pytest.approx(2.0 * (10 + 1) - 1.0)  # features · w + b for PTPRC


def test_all_widgets_as_tabs_in_workflow_order(make_napari_viewer) -> None:
    from napari_histoexpress.widgets import (
        ExportWidget,
        GenesWidget,
        PredictWidget,
        SpotsWidget,
        ZeroShotWidget,
    )

    viewer = make_napari_viewer()
    _dock, tabs = viewer.window.add_plugin_dock_widget(PLUGIN, "All five (tabs)")
    titles = [tabs.tabText(i) for i in range(tabs.count())]
    assert titles == ["Predict", "Genes", "Zero-shot", "Spots", "Export"]
    assert tabs.currentIndex() == 0  # Predict in front: the first step
    kinds = (PredictWidget, GenesWidget, ZeroShotWidget, SpotsWidget, ExportWidget)
    assert all(isinstance(tabs.widget(i), k) for i, k in enumerate(kinds))


def test_docked_widgets_get_short_tab_titles(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    docks = {}
    for name in ("Predict", "Genes", "Zero-shot", "Export"):
        docks[name], _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    for name, dock in docks.items():
        assert dock.windowTitle() == name  # the tab text: never "Predict (nap…"
        assert dock.name == f"{name} ({PLUGIN})"  # napari's key is unchanged...
    again, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    assert again is docks["Predict"]  # ...so napari finds the dock again (no duplicate)
