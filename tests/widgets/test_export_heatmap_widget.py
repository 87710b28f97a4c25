"""Export widget, heatmaps as OME-TIFF: a real viewer, the sample slide and its predicted map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from napari.layers import Layer

from napari_histoexpress import project
from napari_histoexpress._layers import gene_heatmap_layer_data
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.widgets import _common, _export
from napari_histoexpress.widgets._export import ExportWidget


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(_export, "notify_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(_export, "notify_info", lambda m: seen["info"].append(str(m)))
    monkeypatch.setattr(_export, "notify_warning", lambda m: seen["warning"].append(str(m)))
    return seen


def _open_slide(viewer, path: Path):
    (layer,) = [
        lay
        for lay in viewer.open(str(path), plugin="napari-histoexpress")
        if _common.is_slide_layer(lay)
    ]
    return layer


def _run(qtbot, widget: ExportWidget, notes: dict[str, list[str]]) -> None:
    n_before = len(notes["info"]) + len(notes["error"])
    widget.heatmap_button.click()
    qtbot.waitUntil(
        lambda: len(notes["info"]) + len(notes["error"]) > n_before and widget._worker is None,
        timeout=60_000,
    )


def test_export_shown_heatmaps_and_open_them_in_napari(
    make_napari_viewer, qtbot, notes, slide_copy: Path, sample_map: Path
) -> None:
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    slide = _open_slide(viewer, slide_copy)
    _common.set_slide_map(slide, sample_map)
    store = DenseMapStore.open(sample_map)

    widget.heatmap_button.click()  # no heatmap shown, no gene typed
    assert notes["error"] and "no genes" in notes["error"][-1]
    notes["error"].clear()

    shown = viewer.add_layer(Layer.create(*gene_heatmap_layer_data(store, "KRT19")))
    assert widget.heatmap_genes(store) == ["KRT19"]
    out = project.project_dir(slide_copy) / "heatmaps.ome.tif"
    assert Path(widget.heatmap_path_edit.text()) == out
    _run(qtbot, widget, notes)
    assert notes["error"] == [], notes["error"]
    assert notes["info"][-1].startswith("Exported heatmaps of KRT19") and out.is_file()
    assert widget.last_heatmap is not None and widget.last_heatmap.genes == ["KRT19"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == store.n_levels
        level0 = tif.series[0].levels[0].asarray()
    np.testing.assert_allclose(
        level0, np.nan_to_num(np.asarray(store.gene_map("KRT19"))), rtol=1e-6, atol=1e-6
    )

    # napari opens it (this plugin's reader) as a heatmap over the slide, aligned as the
    # Genes widget's layer
    (opened,) = viewer.open(str(out), plugin="napari-histoexpress")
    assert opened.name.startswith("KRT19")  # napari numbers a second layer of that name
    assert opened.multiscale and tuple(opened.scale) == tuple(shown.scale)
    np.testing.assert_allclose(opened.translate, shown.translate)
    np.testing.assert_allclose(opened.contrast_limits, shown.contrast_limits, rtol=1e-6)
    np.testing.assert_allclose(opened.extent.world, shown.extent.world)

    # typed genes (an alias too), the slide's pixel grid, NaN background
    widget.heatmap_genes_edit.setText("her2, PTPRC")
    widget.heatmap_match_slide.setChecked(True)
    widget.heatmap_background.setCurrentText("nan")
    custom = slide_copy.parent / "two.ome.tif"
    widget.heatmap_path_edit.setText(str(custom))
    widget._on_heatmap_path_edited(str(custom))
    _run(qtbot, widget, notes)
    assert notes["error"] == [], notes["error"]
    with tifffile.TiffFile(custom) as tif:
        series = tif.series[0]
        assert series.shape == (2, *slide.data[0].shape[:2])
        assert np.isnan(series.levels[-1].asarray()).any() == bool((store.coverage == 2).any())
    assert widget.last_heatmap.grid == "slide" and widget.last_heatmap.genes == ["ERBB2", "PTPRC"]


def test_unknown_gene_is_notified(make_napari_viewer, qtbot, notes, slide_copy, sample_map) -> None:
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    slide = _open_slide(viewer, slide_copy)
    _common.set_slide_map(slide, sample_map)
    widget.heatmap_genes_edit.setText("ERBB3")
    _run(qtbot, widget, notes)
    assert notes["error"] and "ERBB3 (did you mean ERBB2" in notes["error"][-1]
    assert not (project.project_dir(slide_copy) / "heatmaps.ome.tif").exists()
    assert widget.heatmap_button.isEnabled()
