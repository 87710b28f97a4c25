"""Spots widget: click to add, live table during a drag, snapping, presets, grid, persistence.

Mouse input goes through napari's own event path for layer callbacks
(``napari.utils.interactions.mouse_*_callbacks`` with read-only mouse events, as napari's
tests drive the Shapes tools), so the widget's drag callback and napari's select / ellipse
tools run exactly as under a real mouse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)
from qtpy.QtCore import Qt

from napari_histoexpress import project
from napari_histoexpress._layers import slide_layer_data
from napari_histoexpress.inference.live_spots import SpotExpression
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_grid import grid_spots, region_from_shape
from napari_histoexpress.inference.spots import predict_circles
from napari_histoexpress.io import spot_table
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.widgets import _common, _spot_layer
from napari_histoexpress.widgets._spots import SpotsWidget


def _add_slide(viewer, path: Path):
    data, kwargs, _ = slide_layer_data(open_slide(path))
    return viewer.add_image(data, **kwargs)


def _press(layer, world, *, modifiers=()):
    ev = read_only_mouse_event(type="mouse_press", position=tuple(world), modifiers=list(modifiers))
    mouse_press_callbacks(layer, ev)


def _move(layer, world, pos=(0.0, 0.0)):
    ev = read_only_mouse_event(
        type="mouse_move", is_dragging=True, position=tuple(world), pos=np.asarray(pos)
    )
    mouse_move_callbacks(layer, ev)


def _release(layer, world, pos=(0.0, 0.0)):
    ev = read_only_mouse_event(
        type="mouse_release", is_dragging=True, position=tuple(world), pos=np.asarray(pos)
    )
    mouse_release_callbacks(layer, ev)


def _click(layer, world):
    _press(layer, world)
    _release(layer, world)


@pytest.fixture
def setup(make_napari_viewer, qtbot, slide_copy, sample_map):
    viewer = make_napari_viewer()
    slide = _add_slide(viewer, slide_copy)
    _common.set_slide_map(slide, sample_map)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, slide, widget


def _expected(sample_map: Path, spots: pd.DataFrame) -> np.ndarray:
    """Reference: predict_circles per spot, then the mean over the spots."""
    return np.asarray(predict_circles(DenseMapStore.open(sample_map), spots).X).mean(axis=0)


def _table(widget: SpotsWidget) -> dict[str, float]:
    return dict(widget.table_rows())


def test_click_adds_spots_and_table_matches_predict_circles(setup, qtbot, sample_map) -> None:
    viewer, _slide, widget = setup
    assert "Map:" in widget.status.text()
    widget.rank_combo.setCurrentText("Mean expression")
    widget.preset_combo.setCurrentText("Visium 55 µm")
    widget.add_button.click()
    layer = widget.spots_layer()
    assert layer is not None and viewer.layers.selection.active is layer
    assert layer.mode == "pan_zoom"
    _click(layer, (400.0, 600.0))  # world (y, x) in µm
    _click(layer, (900.0, 300.0))
    spots = _spot_layer.spots_table(layer)
    assert spots["id"].tolist() == ["spot_0", "spot_1"]
    assert (spots["source"] == "drawn").all()
    np.testing.assert_allclose(spots[["x_um", "y_um"]].to_numpy(), [[600, 400], [300, 900]])
    np.testing.assert_allclose(spots["diameter_um"], 55.0)
    # a drag in add mode pans, it does not add
    _press(layer, (100.0, 100.0))
    _move(layer, (100.0, 100.0), pos=(40.0, 0.0))
    _release(layer, (100.0, 100.0), pos=(40.0, 0.0))
    assert len(layer.data) == 2
    # none selected: all spots; values = mean of predict_circles (and SpotExpression)
    qtbot.waitUntil(lambda: len(widget.table_rows()) == 6, timeout=3000)
    expected = _expected(sample_map, spots)
    table = _table(widget)
    genes = DenseMapStore.open(sample_map).genes
    np.testing.assert_allclose([table[g] for g in genes], expected, rtol=1e-5, atol=1e-6)
    values = [v for _, v in widget.table_rows()]
    assert values == sorted(values, reverse=True)  # top genes first
    assert [g for g, _ in widget.bars.bars()] == [g for g, _ in widget.table_rows()][:6]
    live = SpotExpression(DenseMapStore.open(sample_map)).values(spots)
    np.testing.assert_allclose(widget.last_values, live.mean(axis=0), rtol=1e-9)
    # selecting one spot shows that spot only
    layer.selected_data = {1}
    qtbot.waitUntil(lambda: len(widget.last_spots) == 1, timeout=3000)
    table = _table(widget)
    np.testing.assert_allclose(
        [table[g] for g in genes], _expected(sample_map, spots.iloc[[1]]), rtol=1e-5, atol=1e-6
    )
    assert "1 selected of 2" in widget.selection_label.text()
    # sortable: by gene name
    widget.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert [g for g, _ in widget.table_rows()] == sorted(genes)


def test_table_updates_during_a_drag(setup, qtbot, sample_map) -> None:
    viewer, slide, widget = setup
    layer = widget.spots_layer(create=True)
    widget.add_spot(500.0, 500.0, 100.0)
    widget.add_spot(1000.0, 700.0, 100.0)
    widget.select_button.click()
    assert layer.mode == "select" and viewer.layers.selection.active is layer
    # (y, x) world µm inside spot_0 (napari's hit test misses the exact centre of an
    # ellipse: the centre is a vertex of all its face triangles)
    start = np.array([510.0, 505.0])
    _press(layer, start)
    assert layer.selected_data == {0}
    qtbot.waitUntil(lambda: len(widget.last_spots) == 1, timeout=3000)
    before = dict(widget.table_rows())
    _move(layer, start)
    for k in range(1, 6):
        pos = start + np.array([0.0, 40.0 * k])
        _move(layer, pos)
        # napari reports the data change only on release; the table follows before it
        qtbot.waitUntil(
            lambda k=k: abs(widget.last_spots["x_um"].iloc[0] - (500 + 40 * k)) < 1e-6,
            timeout=2000,
        )
    moved = _spot_layer.spots_table(layer).iloc[[0]]
    assert moved["x_um"].iloc[0] == pytest.approx(700.0)
    table = _table(widget)
    assert table != before
    genes = DenseMapStore.open(sample_map).genes
    np.testing.assert_allclose(
        [table[g] for g in genes], _expected(sample_map, moved), rtol=1e-5, atol=1e-6
    )
    _release(layer, start + np.array([0.0, 200.0]))
    # saved after the drag ended (debounced)
    path = project.spots_path(_common.slide_path(slide))
    qtbot.waitUntil(lambda: path.exists(), timeout=3000)
    qtbot.waitUntil(
        lambda: project.load_spots(_common.slide_path(slide))["x_um"].iloc[0] == pytest.approx(700),
        timeout=3000,
    )


def test_resize_and_ellipse_tool_snap_to_circles(setup, qtbot) -> None:
    viewer, _slide, widget = setup
    layer = widget.spots_layer(create=True)
    widget.add_spot(500.0, 500.0, 100.0)
    mpp = _spot_layer.layer_mpp(layer)
    # a non-uniform resize (as napari's select tool leaves it) snaps back to a circle
    corners = layer.data[0].copy()
    stretched = corners.copy()
    stretched[:, 1] = corners[:, 1].mean() + (corners[:, 1] - corners[:, 1].mean()) * 2.0
    layer.data = [stretched]  # napari emits "changed" (an edit of the shape)
    x, y, d = _spot_layer.circle_of(layer.data[0], mpp)
    assert (x, y) == pytest.approx((500.0, 500.0))
    assert d == pytest.approx((100.0 + 200.0) / 2)
    v = np.asarray(layer.data[0])
    assert np.ptp(v[:, 0]) == pytest.approx(np.ptp(v[:, 1]))  # a circle again
    assert _spot_layer.spots_table(layer)["id"].tolist() == ["spot_0"]
    # draw an ellipse with napari's ellipse tool: it becomes a circle with a new id
    viewer.layers.selection.active = layer
    layer.mode = "add_ellipse"
    p0, p1 = np.array([800.0, 800.0]), np.array([900.0, 1000.0])  # 100 µm tall, 200 wide
    _press(layer, p0)
    _move(layer, (p0 + p1) / 2)
    _move(layer, p1)
    _release(layer, p1)
    table = _spot_layer.spots_table(layer)
    assert table["id"].tolist() == ["spot_0", "spot_1"]
    assert table["source"].tolist() == ["drawn", "drawn"]
    v = np.asarray(layer.data[1])
    assert np.ptp(v[:, 0]) == pytest.approx(np.ptp(v[:, 1]))
    assert table["diameter_um"].iloc[1] == pytest.approx(150.0)
    assert (table["x_um"].iloc[1], table["y_um"].iloc[1]) == pytest.approx((900.0, 850.0))
    # a deleted spot's id is never given again
    layer.selected_data = {1}
    layer.remove_selected()
    widget.add_spot(100.0, 100.0)
    assert _spot_layer.spots_table(layer)["id"].tolist() == ["spot_0", "spot_2"]


def test_presets_and_apply_to_selected(setup, qtbot) -> None:
    _viewer, _slide, widget = setup
    widget.preset_combo.setCurrentText("Visium HD 8 µm")
    assert widget.diameter_um == 8.0 and not widget.custom_spin.isEnabled()
    assert widget.pitch_spin.value() == 8.0 and widget.lattice_combo.currentText() == "square"
    widget.preset_combo.setCurrentText("Visium 55 µm")
    assert widget.pitch_spin.value() == 100.0
    assert widget.lattice_combo.currentText() == "hexagonal"
    widget.preset_combo.setCurrentText("ST 100 µm")
    assert widget.diameter_um == 100.0 and widget.pitch_spin.value() == 200.0
    widget.preset_combo.setCurrentText("Custom")
    assert widget.custom_spin.isEnabled()
    widget.custom_spin.setValue(30.0)
    assert widget.diameter_um == 30.0 and widget.pitch_spin.value() == 60.0
    widget.add_button.click()
    layer = widget.spots_layer()
    _click(layer, (300.0, 300.0))
    _click(layer, (600.0, 300.0))
    assert _spot_layer.spots_table(layer)["diameter_um"].tolist() == pytest.approx([30, 30])
    widget.preset_combo.setCurrentText("Visium HD 16 µm")
    layer.selected_data = {1}
    widget.apply_button.click()
    table = _spot_layer.spots_table(layer)
    assert table["diameter_um"].tolist() == pytest.approx([30, 16])
    assert (table["x_um"].iloc[1], table["y_um"].iloc[1]) == pytest.approx((300.0, 600.0))


def test_fill_region_with_grid(setup, qtbot) -> None:
    _viewer, slide, widget = setup
    widget.preset_combo.setCurrentText("Visium 55 µm")
    widget.region_button.click()
    region = widget.region_layer()
    assert region is not None and region.mode == "add_rectangle"
    mpp = _common.slide_mpp(slide)
    rect_um = np.array([[200.0, 100.0], [200.0, 900.0], [700.0, 900.0], [700.0, 100.0]])
    region.add(rect_um / mpp, shape_type="rectangle")  # data px
    widget.add_spot(50.0, 50.0)  # a drawn spot first: ids continue after it
    widget.fill_button.click()
    layer = widget.spots_layer()
    table = _spot_layer.spots_table(layer)
    expected = grid_spots(region_from_shape(rect_um, "rectangle"), 55.0)
    grid = table[table["source"] == "grid"]
    assert len(grid) == len(expected) > 10
    np.testing.assert_allclose(
        grid[["x_um", "y_um"]].to_numpy(), expected[["x_um", "y_um"]].to_numpy(), atol=1e-6
    )
    assert table["id"].is_unique and grid["id"].iloc[0] == "spot_1"
    assert grid["x_um"].between(100, 900).all() and grid["y_um"].between(200, 700).all()
    # square lattice, custom pitch
    widget.lattice_combo.setCurrentText("square")
    widget.pitch_spin.setValue(250.0)
    widget.fill_button.click()
    assert len(layer.data) == 1 + len(expected) + 4 * 3


def test_spots_saved_and_restored(make_napari_viewer, qtbot, slide_copy) -> None:
    viewer = make_napari_viewer()
    slide = _add_slide(viewer, slide_copy)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    assert "No map" in widget.status.text()  # no map: spots still drawn and saved
    widget.add_button.click()
    layer = widget.spots_layer()
    _click(layer, (400.0, 600.0))
    widget.add_spot(700.0, 200.0, 16.0)
    qtbot.waitUntil(lambda: "no map" in widget.selection_label.text(), timeout=3000)
    assert widget.table_rows() == []
    saved_before = _spot_layer.spots_table(layer)
    viewer.layers.remove(layer)  # removing the layer flushes, never erases
    viewer.layers.remove(slide)
    saved = project.load_spots(slide_copy)
    cols = list(spot_table.SPOT_COLUMNS)
    pd.testing.assert_frame_equal(saved[cols], saved_before, check_dtype=False)
    assert saved["layer"].tolist() == [layer.name] * 2
    assert widget.spots_layer() is None and widget.current_slide() is None
    assert "No slide" in widget.status.text()
    slide = _add_slide(viewer, slide_copy)
    qtbot.waitUntil(lambda: widget.spots_layer() is not None, timeout=3000)
    restored = _spot_layer.spots_table(widget.spots_layer())
    pd.testing.assert_frame_equal(restored, saved_before, check_dtype=False)
    # restored spots keep counting ids above the saved ones
    widget.add_spot(10.0, 10.0)
    assert _spot_layer.spots_table(widget.spots_layer())["id"].iloc[-1] == "spot_2"


def test_no_slide_is_not_an_error(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    assert "No slide" in widget.status.text()
    widget.add_button.click()  # a notification, no layer, no crash
    assert not widget.add_button.isChecked() and len(viewer.layers) == 0
    widget.fill_button.click()
    widget.update_table()
    assert widget.table_rows() == []


def test_select_tool_resize_is_live_and_snaps(setup, qtbot) -> None:
    from napari.layers.shapes._shapes_constants import Box

    _viewer, _slide, widget = setup
    layer = widget.spots_layer(create=True)
    widget.add_spot(500.0, 500.0, 100.0)
    widget.select_button.click()
    layer.selected_data = {0}
    layer.scale_factor = 0.01  # zoomed in: handles are hit exactly
    mpp = _spot_layer.layer_mpp(layer)
    corner = np.asarray(layer._selected_box[Box.BOTTOM_RIGHT]) * mpp  # world µm
    assert layer.get_value(tuple(corner), world=True)[1] is not None  # on a handle
    _press(layer, corner)
    _move(layer, corner)
    target = corner + np.array([0.0, 100.0])  # widen only: 100 → 200 µm wide
    _move(layer, target)
    # live, before release: the table's spot is the stretched shape (mean side)
    qtbot.waitUntil(
        lambda: (
            len(widget.last_spots) == 1
            and abs(widget.last_spots["diameter_um"].iloc[0] - 150.0) < 1.0
        ),
        timeout=2000,
    )
    _release(layer, target)
    v = np.asarray(layer.data[0])
    assert np.ptp(v[:, 0]) == pytest.approx(np.ptp(v[:, 1]))  # snapped back to a circle
    x, y, d = _spot_layer.circle_of(v, mpp)
    assert d == pytest.approx(150.0, abs=1.0)
    assert (x, y) == pytest.approx((550.0, 500.0), abs=1.0)  # centre of the stretched box


def test_table_ranks_against_the_slide_and_compares_two_groups(setup, qtbot, sample_map) -> None:
    from napari_histoexpress.inference.spot_compare import slide_stats

    viewer, _slide, widget = setup
    store = DenseMapStore.open(sample_map)
    genes = store.genes
    assert widget.ranking == "delta"  # slide-relative by default
    layer_a = widget.spots_layer(create=True)
    widget.add_spot(500.0, 500.0, 100.0)
    widget.add_spot(1000.0, 700.0, 100.0)
    qtbot.waitUntil(lambda: widget.slide_stats() is not None, timeout=10000)
    widget.update_table()
    rec = widget.table_records()
    expected_slide = slide_stats(store)
    by_gene = rec.set_index("gene")
    np.testing.assert_allclose(by_gene.loc[genes, "ref_mean"], expected_slide.mean, rtol=1e-6)
    spots_a = _spot_layer.spots_table(layer_a)
    np.testing.assert_allclose(
        by_gene.loc[genes, "mean"], _expected(sample_map, spots_a), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(rec["delta"], rec["mean"] - rec["ref_mean"], atol=1e-12)
    sd = pd.Series(expected_slide.sd, index=genes).loc[rec["gene"]].to_numpy()
    np.testing.assert_allclose(rec["z"], rec["delta"] / sd, rtol=1e-9)
    assert rec["delta"].tolist() == sorted(rec["delta"], reverse=True)  # ranked by Δ
    assert [g for g, _ in widget.bars.bars()] == rec["gene"].tolist()[:6]
    headers = [widget.model.headerData(i, Qt.Orientation.Horizontal) for i in range(5)]
    assert headers[1] == "mean" and "slide" in headers[2] and "Δ vs slide" in headers[3]
    units = widget.units_label.text()  # the units of every column, under the table
    assert "log1p counts per 10k" in units and "log fold change" in units
    assert "slide SD" in units
    # z-score ranking
    widget.rank_combo.setCurrentText("z-score (Δ in slide SDs)")
    widget.update_table()
    z = widget.table_records()["z"].tolist()
    assert z == sorted(z, reverse=True)
    widget.rank_combo.setCurrentText("Δ vs reference (log fold change)")

    # a second layer as the reference: Δ = mean(A) − mean(B)
    layer_b = widget.new_spots_layer()
    widget.add_spot(1500.0, 1500.0, 100.0)
    viewer.layers.selection.active = layer_a
    items = [widget.ref_combo.itemText(i) for i in range(widget.ref_combo.count())]
    assert f"Layer: {layer_b.name}" in items
    widget.ref_combo.setCurrentText(f"Layer: {layer_b.name}")
    widget.update_table()
    rec = widget.table_records().set_index("gene")
    ref_b = _expected(sample_map, _spot_layer.spots_table(layer_b))
    np.testing.assert_allclose(rec.loc[genes, "ref_mean"], ref_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        rec.loc[genes, "delta"], _expected(sample_map, spots_a) - ref_b, rtol=1e-5, atol=1e-6
    )
    assert "vs layer" in widget.model.headerData(3, Qt.Orientation.Horizontal)

    # two selections of one layer: store spot_1 as the reference, then select spot_0
    layer_a.selected_data = {1}
    widget.update_table()
    widget.ref_button.click()
    assert widget.ref_combo.currentText().startswith("Stored reference group (1 spots)")
    layer_a.selected_data = {0}
    widget.update_table()
    rec = widget.table_records().set_index("gene")
    np.testing.assert_allclose(
        rec.loc[genes, "delta"],
        _expected(sample_map, spots_a.iloc[[0]]) - _expected(sample_map, spots_a.iloc[[1]]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_hiding_the_widget_saves_pending_spots(make_napari_viewer, qtbot, slide_copy) -> None:
    viewer = make_napari_viewer()
    _add_slide(viewer, slide_copy)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    widget.show()
    widget.add_spot(300.0, 400.0, 55.0)
    assert not project.spots_path(slide_copy).exists()  # debounced: not written yet
    widget.hide()  # the viewer closes, another tab is shown: nothing waits for the timer
    assert project.load_spots(slide_copy)["id"].tolist() == ["spot_0"]
