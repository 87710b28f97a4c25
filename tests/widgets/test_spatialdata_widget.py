"""SpatialData in a real viewer: the Export widget writes a store (with the heatmaps shown as
gene maps); the plugin's reader opens it back; napari-spatialdata opens it too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata  # the [spatialdata] extra, in the test extras: no skip

from napari_histoexpress import project
from napari_histoexpress._layers import gene_heatmap_layer_data
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.widgets import _common, _export, _spot_layer
from napari_histoexpress.widgets._export import ExportWidget

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                                        "ignore::DeprecationWarning")  # fmt: skip

SPOTS = pd.DataFrame(
    {
        "id": ["d0", "d1", "g0"],
        "x_um": [300.0, 700.5, 400.0],
        "y_um": [300.0, 1100.0, 800.0],
        "diameter_um": [55.0, 120.0, 8.0],
        "source": ["drawn", "drawn", "grid"],
    }
)


def test_export_widget_writes_a_spatialdata_store_that_opens_in_napari(
    make_napari_viewer, qtbot, slide_copy: Path, sample_map: Path, monkeypatch
) -> None:
    notes: list[str] = []
    monkeypatch.setattr(_export, "notify_info", notes.append)
    monkeypatch.setattr(_export, "notify_error", lambda m: notes.append(f"ERROR {m}"))
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    (slide,) = [lay for lay in viewer.open(str(slide_copy), plugin="napari-histoexpress")
                if _common.is_slide_layer(lay)]  # fmt: skip
    _common.set_slide_map(slide, sample_map)
    mpp = _common.slide_mpp(slide)
    viewer._add_layer_from_data(*_spot_layer.spots_layer_data(SPOTS, slide_name=slide.name,
                                                              mpp=mpp))  # fmt: skip
    store = DenseMapStore.open(sample_map)
    viewer._add_layer_from_data(*gene_heatmap_layer_data(store, "ERBB2"))

    widget.format_combo.setCurrentText(".zarr")
    out = project.project_dir(slide_copy) / "spots.sdata.zarr"
    assert Path(widget.path_edit.text()) == out
    widget.export_button.click()
    qtbot.waitUntil(lambda: bool(notes) and widget._worker is None, timeout=60_000)
    assert notes == [f"Exported 3 spots × {len(store.genes)} genes to {out}"]

    sdata = spatialdata.read_zarr(out)
    prefix = slide_copy.name.split(".")[0]
    assert set(sdata.images) == {f"{prefix}_image", f"{prefix}_gene_maps"}
    assert sdata.tables["table"].n_obs == 3
    np.testing.assert_allclose(
        np.stack([sdata.shapes[f"{prefix}_spots"].geometry.x,
                  sdata.shapes[f"{prefix}_spots"].geometry.y], axis=1),
        SPOTS[["x_um", "y_um"]].to_numpy() / mpp, atol=1e-6,
    )  # fmt: skip

    # the plugin's reader opens the store: the slide image in µm + the spots
    layers = viewer.open(str(out), plugin="napari-histoexpress")
    kinds = sorted(type(lay).__name__ for lay in layers)
    assert "Image" in kinds and len(layers) >= 2
    image = next(lay for lay in layers if type(lay).__name__ == "Image")
    np.testing.assert_allclose(image.scale[-2:], (mpp, mpp))


def test_napari_spatialdata_opens_an_exported_store(
    make_napari_viewer, qtbot, slide_copy: Path, sample_map: Path, tmp_path: Path
) -> None:
    import napari_spatialdata  # the test extras install it: a broken install fails here

    from napari_histoexpress.inference.spatialdata_export import export_spatialdata

    viewer = make_napari_viewer()
    out = export_spatialdata(sample_map, tmp_path / "x.zarr", SPOTS, genes=["ERBB2"],
                             slide_path=slide_copy).path  # fmt: skip
    sdata = spatialdata.read_zarr(out)
    interactive = napari_spatialdata.Interactive(sdata, headless=True)
    prefix = slide_copy.name.split(".")[0]
    shown = interactive._viewer  # napari.current_viewer(): the fixture's, or its own
    loader = interactive._sdata_widget.worker_thread  # napari-spatialdata loads in a thread
    for i, element in enumerate((f"{prefix}_image", f"{prefix}_spots", f"{prefix}_gene_maps")):
        interactive.add_element(element, "global")
        qtbot.waitUntil(lambda i=i: len(shown.layers) > i and not loader.isRunning(),
                        timeout=60_000)  # fmt: skip
    try:
        names = [lay.name for lay in shown.layers]
        assert any(f"{prefix}_image" in n for n in names), names
        assert any(f"{prefix}_gene_maps" in n for n in names), names
        spots = next(lay for lay in shown.layers if f"{prefix}_spots" in lay.name)
        assert len(spots.data) == 3
    finally:
        if shown is not viewer:
            shown.close()
