"""Spot ids stay unique and saves keep every spot, whatever the order of clicks, grids,
pastes, restores and layers (issue 9, item 2).

The widget is opened as napari opens it from the Plugins menu
(``add_plugin_dock_widget``): napari then hands it the viewer through its
``PublicOnlyProxy``, so a layer reaches the widget as different Python objects — the path
where the ids used to repeat ("spot id 'spot_0' appears more than once") and nothing saved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_spots_widget import _click

from napari_histoexpress import project
from napari_histoexpress.widgets import _common, _spot_layer
from napari_histoexpress.widgets._spots import SpotsWidget

PLUGIN = "napari-histoexpress"


def _open(viewer, path: Path):
    viewer.open(str(path), plugin=PLUGIN)
    return _common.slide_layers(viewer)[0]


def _plugin_widget(viewer) -> SpotsWidget:
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Spots")
    assert isinstance(widget, SpotsWidget)
    return widget


def _rect(widget: SpotsWidget, slide, y0: float, x0: float, y1: float, x1: float) -> None:
    region = widget.region_layer(create=True)
    mpp = _common.slide_mpp(slide)
    rect = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) / mpp
    region.selected_data = set()
    region.add(rect, shape_type="rectangle")
    region.selected_data = {len(region.data) - 1}
    widget.viewer.layers.selection.active = region


def _all_ids(widget: SpotsWidget, slide) -> list[str]:
    return [i for lay in _spot_layer.spot_layers(widget.viewer, slide) for i in lay.features["id"]]


def _saved(slide_path: Path) -> pd.DataFrame:
    return project.load_spots(slide_path)


@pytest.fixture
def plugin(make_napari_viewer, qtbot, slide_copy):
    viewer = make_napari_viewer()
    slide = _open(viewer, slide_copy)
    widget = _plugin_widget(viewer)
    return viewer, slide, widget


def test_grid_grid_click_ids_unique_and_all_saved(plugin, qtbot, slide_copy) -> None:
    viewer, slide, widget = plugin
    widget.preset_combo.setCurrentText("ST 100 µm")
    _rect(widget, slide, 100.0, 100.0, 1300.0, 1300.0)
    widget.fill_button.click()
    layer = widget.spots_layer()
    n1 = len(layer.data)
    assert n1 > 10
    widget.preset_combo.setCurrentText("Visium HD 16 µm")
    _rect(widget, slide, 1400.0, 1400.0, 1700.0, 1700.0)
    widget.fill_button.click()
    n2 = len(layer.data)
    assert n2 > n1 + 100
    widget.add_button.click()
    _click(layer, (50.0, 50.0))
    assert len(layer.data) == n2 + 1
    ids = _all_ids(widget, slide)
    assert len(set(ids)) == len(ids) == n2 + 1
    widget.flush_saves()
    assert "NOT saved" not in widget.status.text()
    saved = _saved(slide_copy)
    assert sorted(saved["id"]) == sorted(ids)
    assert (saved["source"] == "grid").sum() == n2
    _dock, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    assert sorted(export.spots()["id"]) == sorted(ids)  # Export collects them all, no error
    # reopening brings every spot back
    viewer.layers.remove(layer)
    viewer.layers.remove(slide)
    slide = _open(viewer, slide_copy)
    qtbot.waitUntil(lambda: widget.spots_layer() is not None, timeout=3000)
    assert sorted(_all_ids(widget, slide)) == sorted(ids)


def test_restore_then_grid_continues_above_saved_ids(make_napari_viewer, qtbot, slide_copy):
    saved = pd.DataFrame(
        {
            "id": ["spot_0", "spot_7", "tumour_a"],
            "x_um": [100.0, 200.0, 300.0],
            "y_um": [100.0, 100.0, 100.0],
            "diameter_um": [55.0, 55.0, 55.0],
            "source": ["drawn", "grid", "drawn"],
        }
    )
    project.save_spots(slide_copy, saved)
    viewer = make_napari_viewer()
    slide = _open(viewer, slide_copy)
    widget = _plugin_widget(viewer)
    qtbot.waitUntil(lambda: widget.spots_layer() is not None, timeout=3000)
    widget.preset_combo.setCurrentText("Visium 55 µm")
    _rect(widget, slide, 300.0, 300.0, 800.0, 800.0)
    widget.fill_button.click()
    ids = _all_ids(widget, slide)
    assert ids[:3] == ["spot_0", "spot_7", "tumour_a"]
    assert ids[3] == "spot_8" and len(set(ids)) == len(ids)
    widget.flush_saves()
    assert sorted(_saved(slide_copy)["id"]) == sorted(ids)


def test_two_layers_unique_ids_and_nothing_lost(plugin, qtbot, slide_copy) -> None:
    viewer, slide, widget = plugin
    first = widget.spots_layer(create=True)
    widget.add_spot(100.0, 100.0, 55.0)
    widget.add_spot(200.0, 100.0, 55.0)
    second = widget.new_spots_layer()
    assert widget.spots_layer().name == second.name  # the active layer takes the spots
    widget.add_spot(300.0, 300.0, 55.0)
    _rect(widget, slide, 500.0, 500.0, 800.0, 800.0)
    widget.fill_button.click()
    assert len(second.data) > 2 and len(first.data) == 2
    ids = _all_ids(widget, slide)
    assert len(set(ids)) == len(ids)
    # a duplicated layer (napari's "Duplicate layer" copies features) gets new ids
    data, state, _ = first.as_layer_data_tuple()
    viewer.add_shapes(data, **{**state, "name": "copy"})
    ids = _all_ids(widget, slide)
    assert len(ids) == len(first.data) * 2 + len(second.data) and len(set(ids)) == len(ids)
    widget.flush_saves()
    saved = _saved(slide_copy)
    assert sorted(saved["id"]) == sorted(ids)
    assert set(saved["layer"]) == {first.name, second.name, "copy"}
    # removing a layer keeps its saved spots, even after the others change
    viewer.layers.remove(viewer.layers["copy"])
    first_ids = list(first.features["id"])
    viewer.layers.remove(first)
    widget.viewer.layers.selection.active = second
    second.selected_data = {0}
    second.remove_selected()  # deleting spots does delete them
    widget.flush_saves()
    saved = _saved(slide_copy)
    assert set(first_ids) <= set(saved["id"])
    assert len(saved) == len(ids) - 1
    # reopening restores one layer per saved layer
    viewer.layers.remove(second)
    viewer.layers.remove(slide)
    _open(viewer, slide_copy)
    qtbot.waitUntil(lambda: len(_spot_layer.spot_layers(viewer)) == 3, timeout=3000)
    names = {lay.name for lay in _spot_layer.spot_layers(viewer)}
    assert names == {first.name, second.name, "copy"}
    assert sorted(i for lay in _spot_layer.spot_layers(viewer) for i in lay.features["id"]) == (
        sorted(saved["id"])
    )


def test_copy_paste_gets_new_ids_and_is_saved(plugin, qtbot, slide_copy) -> None:
    _viewer, _slide, widget = plugin
    layer = widget.spots_layer(create=True)
    for x in (100.0, 200.0, 300.0):
        widget.add_spot(x, 100.0, 55.0)
    widget.flush_saves()
    real = _spot_layer.unwrap(layer)
    real.selected_data = {0, 1}
    real._copy_data()  # what Ctrl+C / Ctrl+V do in napari
    real._paste_data()
    assert len(real.data) == 5
    ids = list(real.features["id"])
    assert len(set(ids)) == 5
    qtbot.waitUntil(lambda: len(_saved(slide_copy)) == 5, timeout=3000)
    assert sorted(_saved(slide_copy)["id"]) == sorted(ids)


def test_failed_save_is_shown_and_keeps_the_saved_spots(
    plugin, qtbot, slide_copy, monkeypatch
) -> None:
    _viewer, _slide, widget = plugin
    widget.add_spot(100.0, 100.0, 55.0)
    widget.add_spot(200.0, 100.0, 55.0)
    widget.flush_saves()
    assert len(_saved(slide_copy)) == 2
    errors: list[str] = []
    monkeypatch.setattr(_common, "notify_error", lambda m: errors.append(str(m)))

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(project, "save_spots", fail)
    widget.add_spot(300.0, 100.0, 55.0)
    widget.flush_saves()
    assert errors and "disk full" in errors[-1]
    assert "NOT saved" in widget.status.text() and "disk full" in widget.status.text()
    assert len(_saved(slide_copy)) == 2  # the earlier table is intact
    monkeypatch.undo()
    widget.add_spot(400.0, 100.0, 55.0)
    widget.flush_saves()
    assert "NOT saved" not in widget.status.text()
    assert len(_saved(slide_copy)) == 4


def test_unreadable_saved_table_is_set_aside_not_overwritten(
    make_napari_viewer, qtbot, slide_copy, monkeypatch
) -> None:
    path = project.spots_path(slide_copy)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,x_um\nspot_0,not a number\n", encoding="utf-8")
    errors: list[str] = []
    monkeypatch.setattr(_common, "notify_error", lambda m: errors.append(str(m)))
    viewer = make_napari_viewer()
    slide = _open(viewer, slide_copy)
    widget = _plugin_widget(viewer)
    qtbot.wait(50)
    widget.add_spot(100.0, 100.0, 55.0)
    widget.flush_saves()
    kept = list(path.parent.glob("spots.csv.unreadable-*"))
    assert len(kept) == 1 and "not a number" in kept[0].read_text(encoding="utf-8")
    assert any(str(kept[0]) in e for e in errors)
    assert _saved(slide_copy)["id"].tolist() == _all_ids(widget, slide)


def test_id_rule_without_a_viewer() -> None:
    from napari_histoexpress.widgets._spot_ids import SlideIds, assign_ids, id_number

    assert [id_number(i) for i in ("spot_12", "spot_x", "tumour", "spot_0")] == [12, -1, -1, 0]
    counter = SlideIds()
    counter.bump(["spot_3", "tumour_a"])
    assert counter.next_number == 4
    ids = ["spot_0", "spot_0", "", "spot_9", "tumour_a", "spot_5"]
    sources = ["drawn", "drawn", "grid", "drawn", "grid", "pasted"]
    changed, seen = assign_ids(
        ids,
        sources,
        known={"spot_0", "spot_9", "tumour_a", "spot_5"},
        elsewhere={"spot_9"},  # held by another layer of the slide
        fresh=counter.fresh({"spot_4", *ids}),
    )
    assert changed
    # spot_4 and spot_5 are taken: the counter skips them (and never gives them later)
    assert ids == ["spot_0", "spot_6", "spot_7", "spot_8", "tumour_a", "spot_5"]
    assert sources == ["drawn", "drawn", "drawn", "drawn", "grid", "drawn"]
    assert seen == set(ids) and counter.next_number == 9


def test_merge_keeps_saved_rows_of_closed_layers_not_deleted_ones() -> None:
    from napari_histoexpress.widgets._spot_saving import merge_saved, saved_layers

    def table(ids: list[str], layer: list[str | None]) -> pd.DataFrame:
        n = len(ids)
        return pd.DataFrame(
            {"id": ids, "x_um": [1.0] * n, "y_um": [2.0] * n, "diameter_um": [55.0] * n,
             "source": ["drawn"] * n, "layer": layer}
        )  # fmt: skip

    live = table(["spot_0", "spot_1"], ["a", "a"])
    saved = table(["spot_0", "spot_2", "spot_3"], ["a", "b", "b"])
    merged = merge_saved(live, saved, deleted={"spot_3"})
    assert merged["id"].tolist() == ["spot_0", "spot_1", "spot_2"]
    assert merge_saved(live, saved.iloc[:1], deleted=set()) is live
    parts = saved_layers(table(["s0", "s1", "s2"], ["b", None, "b"]), default="slide spots")
    assert [(name, part["id"].tolist()) for name, part in parts] == [
        ("b", ["s0", "s2"]),
        ("slide spots", ["s1"]),
    ]
    assert "layer" not in parts[0][1]


def test_number_rule_of_bins_without_a_viewer() -> None:
    from napari_histoexpress.widgets._spot_ids import SlideIds, assign_numbers

    counter = SlideIds(next_number=10)
    assert counter.reserve(5) == 10 and counter.next_number == 15
    assert counter.reserve(2, taken=np.array([3, 40])) == 41 and counter.next_number == 43
    nums = np.array([41, 41, -1, 7, 42, 99], dtype=np.int64)
    out, changed = assign_numbers(
        nums,
        known=np.array([41, 7, 42]),  # 99 was never given to this layer (copied)
        elsewhere=np.array([7]),  # held by another layer of the slide
        ids=counter,
    )
    assert changed and nums.tolist() == [41, 41, -1, 7, 42, 99]  # the input is left alone
    # the first 41 keeps it; the repeat, the missing one, 7 and 99 get fresh numbers, above
    # the counter and every number kept
    assert out.tolist() == [41, 43, 44, 45, 42, 46] and counter.next_number == 47
    same, changed = assign_numbers(out, known=out, elsewhere=np.zeros(0, np.int64), ids=counter)
    assert not changed and same.tolist() == out.tolist() and counter.next_number == 47
