"""The whole plugin as a user drives it, in one real viewer with the four dock widgets:
open the sample slide → Predict (bundled demo run) → Genes (search "her2", click ERBB2) →
Spots (clicks + a grid in a region) → Export (.h5ad) → scanpy reads and plots it.

Mouse clicks on the spots layer go through napari's own layer-callback path with read-only
mouse events (as ``test_spots.py`` does), so the Spots widget's click handler runs as under
a real mouse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spots import predict_circles
from napari_histoexpress.widgets import _common, _spot_layer

pytestmark = [
    pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter`:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The set_bad function:PendingDeprecationWarning"),
]

TIMEOUT_MS = 120_000


def _click(layer: Any, world: tuple[float, float]) -> None:
    """A mouse press + release without motion at ``world`` (y, x in µm)."""
    for kind, callbacks in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        callbacks(layer, read_only_mouse_event(type=kind, position=world, pos=np.zeros(2)))


def test_open_predict_show_gene_draw_spots_export(
    make_napari_viewer: Any, qtbot: Any, slide_copy: Path, tmp_path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    from napari_histoexpress.demo import bundled_demo_run
    from napari_histoexpress.widgets import ExportWidget, GenesWidget, PredictWidget, SpotsWidget

    viewer = make_napari_viewer()
    predict, genes, spots, export = (
        cls(viewer) for cls in (PredictWidget, GenesWidget, SpotsWidget, ExportWidget)
    )
    for widget in (predict, genes, spots, export):
        viewer.window.add_dock_widget(widget)

    # --- open the slide: every widget lists it; no map yet
    (slide,) = viewer.open(str(slide_copy), plugin="napari-histoexpress")
    assert _common.is_slide_layer(slide) and _common.slide_map(slide) is None
    assert predict.slide_combo.currentText() == slide.name
    assert spots.slide_combo.currentText() == slide.name
    assert export.slide_layer is slide and "no predicted map" in export.status.text()
    assert genes.slide_combo.count() == 0 and "No slide has a predicted map" in genes.status.text()

    # --- Predict with the bundled demo run
    predict.demo_button.click()
    assert Path(predict.run_edit.text()) == bundled_demo_run()
    assert predict.status_label.text().startswith("Ready")
    predict.predict_button.click()
    assert predict.busy
    qtbot.waitUntil(lambda: not predict.busy, timeout=TIMEOUT_MS)
    assert predict.last_report is not None and predict.last_report.status == "complete"
    assert predict.status_label.text().startswith("Done")
    store_path = _common.slide_map_path(slide)
    assert store_path is not None and store_path == predict.output_path()
    store = DenseMapStore.open(store_path)
    assert store.status == "complete" and "ERBB2" in store.genes

    # --- Genes: the map's genes are listed; search HER2 by alias, click ERBB2
    assert genes.slide_layer is slide and genes.listed_genes() == list(store.genes)
    genes.filter_edit.setText("her2")
    assert genes.listed_genes()[0] == "ERBB2"
    item = genes.gene_list.item(0)
    genes.gene_list.itemClicked.emit(item)
    heat = genes.heatmap_layer("ERBB2")
    assert heat is not None and heat in viewer.layers
    assert heat.metadata["gene"] == "ERBB2" and heat.metadata["map"] == str(store_path)
    assert "ERBB2: shown" in genes.status.text()

    # --- Spots: three 55 µm clicks, then a 100 µm-pitch grid in a drawn rectangle
    spots.preset_combo.setCurrentText("Visium 55 µm")
    spots.add_button.click()
    layer = spots.spots_layer()
    assert layer is not None and layer.mode == "pan_zoom"
    for yx in ((400.0, 600.0), (900.0, 300.0), (1100.0, 1200.0)):
        _click(layer, yx)
    spots.add_button.click()  # add mode off
    assert len(layer.data) == 3
    spots.region_button.click()
    region = spots.region_layer()
    assert region is not None and region.mode == "add_rectangle"
    mpp = _common.slide_mpp(slide)
    rect_um = np.array([[200.0, 800.0], [200.0, 1100.0], [450.0, 1100.0], [450.0, 800.0]])
    region.add(rect_um / mpp, shape_type="rectangle")
    spots.fill_button.click()
    table = _spot_layer.spots_table(layer)
    n_grid = int((table["source"] == "grid").sum())
    assert (table["source"] == "drawn").sum() == 3 and n_grid >= 4
    assert table["id"].is_unique
    # the table shows every gene's mean over all spots, ERBB2 equal to predict_circles
    qtbot.waitUntil(lambda: len(spots.last_spots) == len(table), timeout=10_000)
    qtbot.waitUntil(lambda: len(spots.table_rows()) == len(store.genes), timeout=10_000)
    ref = predict_circles(store, table)
    erbb2 = list(store.genes).index("ERBB2")
    rows = dict(spots.table_rows())
    assert rows["ERBB2"] == pytest.approx(float(np.mean(ref.X[:, erbb2])), rel=1e-5, abs=1e-6)
    assert f"All {len(table)} spots" in spots.selection_label.text()

    # --- Export: .h5ad of all spots; scanpy reads and plots it; values = predict_circles
    assert export.status.text().startswith(f"{len(table)} spot(s) in 1 layer(s)")
    out = tmp_path / "exports" / "workflow.h5ad"
    out.parent.mkdir()
    export.path_edit.setText(str(out))
    export.path_edit.textEdited.emit(str(out))
    export.export_button.click()
    qtbot.waitUntil(
        lambda: export._worker is None and export.last_result is not None, timeout=60_000
    )
    assert export.last_result.path == out and out.is_file()
    assert export.status.text().startswith(f"Exported {len(table)} spots")
    adata = sc.read_h5ad(out)
    assert list(adata.obs_names) == table["id"].tolist()
    assert list(adata.var_names) == list(store.genes)
    np.testing.assert_array_equal(np.asarray(adata.X), np.asarray(ref.X))
    assert np.isfinite(np.asarray(adata.X)).all() and np.ptp(adata[:, "ERBB2"].X) > 0
    try:
        axes = sc.pl.spatial(adata, color="ERBB2", show=False)
        assert axes and axes[0].get_images()  # the slide image under the spots
    finally:
        plt.close("all")
