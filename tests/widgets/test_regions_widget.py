"""QuPath annotations in napari: the reader's regions layer (aligned in µm with the slide,
holes kept), Fill with grid inside a selected annotation, Load regions in the Spots widget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, mapping

from napari_histoexpress._layers import slide_layer_data
from napari_histoexpress._region_layers import REGIONS_KIND, layer_regions
from napari_histoexpress.inference.spot_grid import grid_spots
from napari_histoexpress.io.geojson import qupath_to_world_um
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.widgets import _common, _spot_layer
from napari_histoexpress.widgets._spots import SpotsWidget


def _write_geojson(path: Path, mpp: float) -> Polygon:
    s = 1.0 / mpp  # QuPath pixels of 1 µm
    holed = Polygon(
        [(150 * s, 150 * s), (900 * s, 180 * s), (850 * s, 800 * s), (200 * s, 750 * s)],
        [[(400 * s, 400 * s), (650 * s, 400 * s), (650 * s, 600 * s), (400 * s, 600 * s)]],
    )
    other = Polygon([(1000 * s, 100 * s), (1200 * s, 100 * s), (1100 * s, 300 * s)])
    feats = [
        {"type": "Feature", "id": "3f0c1d8e-2b7a-4c3e-9d51-0a1b2c3d4e5f", "geometry": mapping(g),
         "properties": {"objectType": "annotation", "name": n,
                        "classification": {"name": c, "color": [200, 0, 0]}}}
        for g, n, c in ((holed, "T1", "Tumor"), (other, "S1", "Stroma"))
    ]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return holed


@pytest.fixture
def setup(make_napari_viewer, qtbot, slide_copy, sample_map):
    viewer = make_napari_viewer()
    data, kwargs, _ = slide_layer_data(open_slide(slide_copy))
    slide = viewer.add_image(data, **kwargs)
    _common.set_slide_map(slide, sample_map)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, slide, widget


def test_reader_layer_and_fill_grid_inside_annotation(setup, slide_copy: Path) -> None:
    viewer, slide, widget = setup
    mpp = _common.slide_mpp(slide)
    path = slide_copy.with_name(slide_copy.name + ".geojson")  # QuPath's naming
    holed = _write_geojson(path, mpp)
    (layer,) = viewer.open(path, plugin="napari-histoexpress")
    assert layer.metadata["histoexpress"] == REGIONS_KIND
    assert layer.metadata["slide"] == slide.name
    np.testing.assert_allclose(layer.scale, slide.scale)
    assert len(layer.data) == 3  # exterior + hole + the triangle
    assert list(layer.features["ring"]) == ["exterior", "hole", "exterior"]
    # aligned: QuPath (X, Y) px → world ((Y − 0.5)·mpp, (X − 0.5)·mpp) µm
    x0, y0 = holed.exterior.coords[0]
    np.testing.assert_allclose(
        layer.data_to_world(layer.data[0][0]), [(y0 - 0.5) * mpp, (x0 - 0.5) * mpp], atol=1e-9
    )
    # the layer gives the annotations back (QuPath px), holes kept
    anns = layer_regions(
        [np.array([layer.data_to_world(v) for v in s]) for s in layer.data],
        layer.features, mpp=mpp, metadata=layer.metadata,
    )  # fmt: skip
    assert anns[0].geometry.symmetric_difference(holed).area < 1e-6
    assert anns[0].classification == "Tumor" and anns[0].id == layer.metadata["ids"][0]
    # select the tumour's outline, fill with a Visium grid: nothing inside the hole
    widget.preset_combo.setCurrentText("Visium 55 µm")
    viewer.layers.selection.active = layer
    layer.selected_data = {0}
    widget.fill_button.click()
    table = _spot_layer.spots_table(widget.spots_layer())
    expected = grid_spots(qupath_to_world_um(holed, mpp), 55.0)
    assert len(table) == len(expected) > 10
    np.testing.assert_allclose(
        table[["x_um", "y_um"]].to_numpy(), expected[["x_um", "y_um"]].to_numpy(), atol=1e-6
    )
    hole = qupath_to_world_um(Polygon(holed.interiors[0]), mpp)
    xy = table[["x_um", "y_um"]].to_numpy()
    assert not shapely.contains_xy(hole, xy[:, 0], xy[:, 1]).any()


def test_load_regions_button_places_them_on_the_slide(setup, tmp_path: Path) -> None:
    viewer, slide, widget = setup
    mpp = _common.slide_mpp(slide)
    path = tmp_path / "elsewhere.geojson"  # no slide beside it: the widget's slide is used
    _write_geojson(path, mpp)
    layer = widget.grid_box.load_regions(str(path))
    assert layer is not None and layer.metadata["slide"] == slide.name
    np.testing.assert_allclose(layer.scale, slide.scale)
    assert layer in viewer.layers and len(layer.data) == 3


def test_export_widget_writes_spots_and_regions_to_geojson(
    make_napari_viewer, qtbot, slide_copy: Path, sample_map: Path, monkeypatch
) -> None:
    import pandas as pd

    from napari_histoexpress.inference.region_means import region_gene_table
    from napari_histoexpress.inference.spots import predict_circles
    from napari_histoexpress.io.geojson import read_annotations
    from napari_histoexpress.widgets import _export
    from napari_histoexpress.widgets._export import ExportWidget

    seen: list[str] = []
    monkeypatch.setattr(_export, "notify_info", lambda m: seen.append(str(m)))
    monkeypatch.setattr(_export, "notify_error", lambda m: seen.append("error " + str(m)))
    viewer = make_napari_viewer()
    data, kwargs, _ = slide_layer_data(open_slide(slide_copy))
    slide = viewer.add_image(data, **kwargs)
    _common.set_slide_map(slide, sample_map)
    mpp = _common.slide_mpp(slide)
    path = slide_copy.with_name(slide_copy.name + ".geojson")
    holed = _write_geojson(path, mpp)
    viewer.open(path, plugin="napari-histoexpress")
    spots = pd.DataFrame(
        {"id": ["a", "b"], "x_um": [300.0, 700.0], "y_um": [300.0, 900.0],
         "diameter_um": [55.0, 100.0], "source": ["drawn", "drawn"]}
    )  # fmt: skip
    viewer._add_layer_from_data(
        *_spot_layer.spots_layer_data(spots, slide_name=slide.name, mpp=mpp)
    )
    widget = ExportWidget(viewer)
    qtbot.addWidget(widget)
    widget.format_combo.setCurrentText(".geojson")
    out = Path(widget.path_edit.text())
    assert out.name == "spots_regions.geojson"
    widget.export_button.click()
    qtbot.waitUntil(lambda: bool(seen) and widget._worker is None, timeout=60_000)
    assert not any(m.startswith("error") for m in seen), seen
    objs = read_annotations(out)
    assert [o.object_type for o in objs] == ["annotation", "annotation", "detection", "detection"]
    assert objs[0].geometry.symmetric_difference(holed).area < 1e-6
    genes = _genes(sample_map)
    _, x = region_gene_table(sample_map, [objs[0]])
    np.testing.assert_allclose([objs[0].measurements[g] for g in genes], x[0], rtol=1e-9)
    ref = np.asarray(predict_circles(sample_map, spots).X)
    np.testing.assert_allclose([objs[2].measurements[g] for g in genes], ref[0], rtol=1e-5)
    assert objs[2].name == "a" and objs[2].measurements["diameter_um"] == 55.0


def _genes(path: Path) -> list[str]:
    from napari_histoexpress.inference.map_store import DenseMapStore

    return DenseMapStore.open(path).genes
