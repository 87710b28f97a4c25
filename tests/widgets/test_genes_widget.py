"""The Genes widget on a real viewer: search, heatmap overlays, controls, measured vs predicted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

# timm -> torchvision -> torch._dynamo -> triton loads its own LLVM; loading it after a viewer
# made Mesa's llvmpipe (LLVM) live segfaults, so import it at collection, before any viewer.
import timm  # noqa: F401

from napari_histoexpress.inference import measured_vs_predicted as mvp
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.widgets import _common
from napari_histoexpress.widgets._genes import GENE_ROLE, GenesWidget

PLUGIN = "napari-histoexpress"


def _item(widget: GenesWidget, gene: str):
    for i in range(widget.gene_list.count()):
        item = widget.gene_list.item(i)
        if item.data(GENE_ROLE) == gene:
            return item
    raise AssertionError(f"{gene} not listed: {widget.listed_genes()}")


def _heatmaps(viewer) -> list:
    return [lyr for lyr in viewer.layers if lyr.metadata.get("histoexpress") == "heatmap"]


def test_status_without_slide_or_map(make_napari_viewer, slide_copy: Path) -> None:
    # a copy: the shipped sample's own project folder may hold a map from an earlier run
    viewer = make_napari_viewer()
    widget = GenesWidget(viewer)
    assert "No slide open" in widget.status.text() and widget.gene_list.count() == 0
    assert widget.show_gene("ERBB2") is None and not _heatmaps(viewer)
    viewer.open(str(slide_copy), plugin=PLUGIN)
    assert "No slide has a predicted map" in widget.status.text()
    assert widget.slide_combo.count() == 0


def test_search_click_overlays_and_controls(
    make_napari_viewer, sample_slide: Path, sample_map: Path
) -> None:
    viewer = make_napari_viewer()
    widget = GenesWidget(viewer)
    (slide,) = viewer.open(str(sample_slide), plugin=PLUGIN)
    _common.set_slide_map(slide, sample_map)
    assert widget.slide_combo.currentText() == slide.name and widget.store is not None
    assert widget.listed_genes() == widget.store.genes

    widget.filter_edit.setText("her2")
    assert widget.listed_genes() == ["ERBB2"]
    widget.filter_edit.setText("ki-67")
    assert widget.listed_genes() == ["MKI67"]
    widget.filter_edit.setText("C")  # prefix (COL1A1) before substring (PTPRC, ACTA2) hits
    assert widget.listed_genes()[:3] == ["COL1A1", "PTPRC", "ACTA2"]
    widget.filter_edit.setText("")

    widget.gene_list.itemClicked.emit(_item(widget, "ERBB2"))
    store = DenseMapStore.open(sample_map)
    (erbb2,) = _heatmaps(viewer)
    assert erbb2.name == "ERBB2" and erbb2.multiscale == (store.n_levels > 1)
    map_mpp, slide_mpp = store.map_mpp, store.attrs["slide"]["mpp"]
    np.testing.assert_allclose(erbb2.scale, [map_mpp, map_mpp])
    np.testing.assert_allclose(erbb2.translate, [(map_mpp - slide_mpp) / 2] * 2)
    lo, hi = erbb2.contrast_limits
    assert lo < hi
    assert widget.last_click_seconds is not None

    widget.gene_list.itemClicked.emit(_item(widget, "ERBB2"))  # again: no duplicate
    assert len(_heatmaps(viewer)) == 1
    widget.gene_list.itemClicked.emit(_item(widget, "KRT19"))
    assert [lyr.name for lyr in _heatmaps(viewer)] == ["ERBB2", "KRT19"]

    # controls act on the current heatmap (KRT19), then on the one the user selects
    krt19 = viewer.layers["KRT19"]
    widget.colormap_combo.setCurrentText("viridis")
    widget.opacity_slider.setValue(30)
    assert krt19.colormap.name == "viridis" and krt19.opacity == pytest.approx(0.3)
    assert erbb2.colormap.name == "magma" and erbb2.opacity == pytest.approx(0.6)
    erbb2.visible = False
    widget.gene_list.itemClicked.emit(_item(widget, "ERBB2"))  # shows and selects it
    assert erbb2.visible and viewer.layers.selection.active is erbb2
    assert widget.colormap_combo.currentText() == "magma"
    assert widget.opacity_slider.value() == 60
    widget.colormap_combo.setCurrentText("turbo")
    assert erbb2.colormap.name == "turbo" and krt19.colormap.name == "viridis"
    # no measured spots in the viewer: said so
    assert "No measured spots" in widget.pcc_label.text()


def test_measured_vs_predicted_pcc(make_napari_viewer, qtbot, sample_map: Path) -> None:
    from napari_histoexpress.io.synthetic import sample_paths

    viewer = make_napari_viewer()
    widget = GenesWidget(viewer)
    layers = viewer.open(str(sample_paths()["spots"]), plugin=PLUGIN)
    slide = next(lyr for lyr in layers if lyr.metadata.get("histoexpress") == "slide")
    spots = next(lyr for lyr in layers if lyr.metadata.get("histoexpress") == "spots")
    _common.set_slide_map(slide, sample_map)
    assert widget.measured_spots_layer() is spots

    widget.show_gene("ERBB2")
    qtbot.waitUntil(lambda: "PCC ERBB2" in widget.pcc_label.text(), timeout=30_000)
    expected = mvp.compare(sample_map, spots.metadata["adata"])
    shown = float(re.search(r":\s*(-?\d+\.\d+)$", widget.pcc_label.text()).group(1))
    assert shown == pytest.approx(expected.pcc_of("ERBB2"), abs=5e-4)
    mean = float(re.search(r"genes: (-?\d+\.\d+)", widget.mean_pcc_label.text()).group(1))
    assert mean == pytest.approx(expected.mean_pcc, abs=5e-4)
    assert f"{expected.n_spots_used} of {expected.n_spots_total} spots" in widget.pcc_label.text()
    # the spots are coloured by the measured gene
    assert spots._face.color_properties.name == "ERBB2"

    # a gene the spots layer's features lack gets its measured column added
    spots.features = spots.features.drop(columns=["KRT19"])
    widget.show_gene("KRT19")
    assert "KRT19" in spots.features.columns
    np.testing.assert_allclose(
        spots.features["KRT19"], mvp.measured_values(spots.metadata["adata"], "KRT19"), rtol=1e-6
    )
    assert spots._face.color_properties.name == "KRT19"
    qtbot.waitUntil(lambda: "PCC KRT19" in widget.pcc_label.text(), timeout=30_000)


def test_heatmap_goes_below_spots_with_colour_bars_and_units(
    make_napari_viewer, qtbot, sample_map: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari.utils.notifications as notifications

    from napari_histoexpress.io.synthetic import sample_paths

    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda m: errors.append(str(m)))
    viewer = make_napari_viewer()
    widget = GenesWidget(viewer)
    layers = viewer.open(str(sample_paths()["spots"]), plugin=PLUGIN)
    slide = next(lyr for lyr in layers if lyr.metadata.get("histoexpress") == "slide")
    spots = next(lyr for lyr in layers if lyr.metadata.get("histoexpress") == "spots")
    drawn = viewer.add_points([[10.0, 10.0]], name="my points")
    _common.set_slide_map(slide, sample_map)

    erbb2 = widget.show_gene("ERBB2")
    names = [lyr.name for lyr in viewer.layers]
    # above the slide, below every points layer: the spots stay visible
    assert names.index(slide.name) < names.index("ERBB2") < names.index(spots.name)
    assert names.index("ERBB2") < names.index(drawn.name)
    assert viewer.layers.selection.active is erbb2
    assert erbb2.colorbar.visible
    assert spots.face_colorbar.visible and spots._face.color_properties.name == "ERBB2"
    legend = widget.legend_label.text()
    assert "ERBB2 in log1p counts per 10k" in legend
    assert "heatmap = predicted (magma" in legend and "= measured ERBB2" in legend

    krt19 = widget.show_gene("KRT19")  # only the current heatmap shows its colour bar
    assert krt19.colorbar.visible and not erbb2.colorbar.visible
    names = [lyr.name for lyr in viewer.layers]
    assert names.index("KRT19") < names.index(spots.name)
    viewer.layers.selection.active = erbb2  # selecting a heatmap switches legend and bar
    assert erbb2.colorbar.visible and not krt19.colorbar.visible
    assert widget.legend_label.text().startswith("ERBB2 in")

    # errors lead with the problem, the map store comes last
    assert widget.show_gene("NOT_A_GENE") is None
    assert errors[-1].startswith("Cannot show NOT_A_GENE: ")
    assert errors[-1].endswith(str(sample_map))
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
