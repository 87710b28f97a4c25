"""Bins layers (issue 15): large grids as napari Points — fill, select, drag, ids, saving,
restoring (also an older project's CSV grid), export to ``.h5ad`` that ``sc.pl.spatial``
draws. In a real viewer; mouse input goes through napari's own layer callbacks, as in
``test_spots_widget.py``. Timings are in ``benchmarks/bench_spot_bins.py``, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from napari.layers import Points, Shapes
from test_spots_widget import _add_slide, _move, _press, _release

from napari_histoexpress import project
from napari_histoexpress.inference.live_spots import SpotExpression
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_grid import lattice_centres, region_from_shape
from napari_histoexpress.inference.spots import predict_circles
from napari_histoexpress.io import spatial, spot_table
from napari_histoexpress.widgets import _common, _spot_layer
from napari_histoexpress.widgets._spot_bins import BIN_LAYER_MIN
from napari_histoexpress.widgets._spots import SpotsWidget

pytestmark = pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter`:FutureWarning")

#: (row, col) µm corners of the filled rectangle: 400 × 480 µm of 8 µm bins = 51 × 61 bins
RECT_UM = np.array([[300.0, 200.0], [300.0, 680.0], [700.0, 680.0], [700.0, 200.0]])
N_BINS = 51 * 61


@pytest.fixture
def setup(make_napari_viewer, qtbot, slide_copy, sample_map):
    viewer = make_napari_viewer()
    slide = _add_slide(viewer, slide_copy)
    _common.set_slide_map(slide, sample_map)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, slide, widget


def _fill(
    widget: SpotsWidget, slide, rect_um: np.ndarray = RECT_UM, preset: str = "Visium HD 8 µm"
):
    widget.preset_combo.setCurrentText(preset)
    region = widget.region_layer(create=True)
    region.selected_data = set()
    region.add(rect_um / _common.slide_mpp(slide), shape_type="rectangle")
    region.selected_data = {len(region.data) - 1}
    widget.viewer.layers.selection.active = region
    widget.fill_button.click()
    return widget.bins_layers()[-1]


def _settled(qtbot, widget: SpotsWidget, n: int) -> None:
    """Wait until the table shows ``n`` spots, computed (large ones take a worker)."""
    qtbot.waitUntil(
        lambda: (
            len(widget.last_spots) == n
            and "computing" not in widget.selection_label.text()
            and bool(widget.table_rows())
        ),
        timeout=30000,
    )


def _mean(sample_map: Path, spots: pd.DataFrame) -> np.ndarray:
    return np.asarray(predict_circles(DenseMapStore.open(sample_map), spots).X).mean(axis=0)


def _ids(viewer, slide) -> list[str]:
    return [
        i
        for lay in _spot_layer.any_spot_layers(viewer, slide)
        for i in _spot_layer.spots_table(lay)["id"]
    ]


def test_fill_makes_a_bins_layer_and_the_table_shows_every_bin(setup, qtbot, sample_map) -> None:
    viewer, slide, widget = setup
    widget.rank_combo.setCurrentText("Mean expression")
    drawn = widget.spots_layer(create=True)
    widget.add_spot(100.0, 100.0, 55.0)  # ids of the bins continue after it
    bins = _fill(widget, slide)
    assert isinstance(_spot_layer.unwrap(bins), Points) and _spot_layer.is_bins_layer(bins)
    assert isinstance(_spot_layer.unwrap(drawn), Shapes) and len(drawn.data) == 1  # untouched
    assert widget.spots_layer() is drawn  # clicks still add circles to the drawn layer
    mpp = _common.slide_mpp(slide)
    expected = lattice_centres(region_from_shape(RECT_UM, "rectangle"), 8.0, "square")
    assert len(expected) == N_BINS >= BIN_LAYER_MIN and len(bins.data) == N_BINS
    table = _spot_layer.spots_table(bins)
    np.testing.assert_allclose(table[["x_um", "y_um"]], expected, atol=1e-9)
    np.testing.assert_allclose(np.asarray(bins.size), 8.0 / mpp)  # true size, data units
    np.testing.assert_allclose(table["diameter_um"], 8.0)
    assert (table["source"] == "grid").all()
    assert table["id"].iloc[0] == "spot_1" and table["id"].iloc[-1] == f"spot_{N_BINS}"
    assert len(set(_ids(viewer, slide))) == N_BINS + 1
    # the new layer is the table's: every bin (none selected), in a worker thread
    assert widget.table_layer() is bins and viewer.layers.selection.active is bins
    _settled(qtbot, widget, N_BINS)
    assert f"All {N_BINS} spots of {bins.name}" in widget.selection_label.text()
    genes = DenseMapStore.open(sample_map).genes
    rows = dict(widget.table_rows())
    np.testing.assert_allclose([rows[g] for g in genes], _mean(sample_map, table), rtol=1e-5)
    # a small grid still makes circles of the drawn layer
    viewer.layers.selection.active = drawn
    _fill(widget, slide, RECT_UM / 4 + 800.0, preset="Visium 55 µm")
    assert len(widget.bins_layers()) == 1 and len(drawn.data) > 1


def test_selecting_and_dragging_bins_drives_the_table(setup, qtbot, sample_map) -> None:
    viewer, slide, widget = setup
    bins = _fill(widget, slide)
    genes = DenseMapStore.open(sample_map).genes
    # select a region of bins: the table shows them (a polygon drawn in the region layer)
    inner = np.array([[400.0, 300.0], [400.0, 500.0], [520.0, 500.0], [520.0, 300.0]])
    region = widget.region_layer()
    region.selected_data = set()
    region.add(inner / _common.slide_mpp(slide), shape_type="polygon")
    region.selected_data = {len(region.data) - 1}
    viewer.layers.selection.active = bins  # the table's layer
    viewer.layers.selection.active = region  # the region to select in
    widget.select_in_region()
    table = _spot_layer.spots_table(bins)
    inside = table["x_um"].between(300, 500) & table["y_um"].between(400, 520)
    assert bins.selected_data == set(np.flatnonzero(inside.to_numpy()).tolist())
    assert viewer.layers.selection.active is bins and bins.mode == "select"
    n_sel = int(inside.sum())
    assert 300 < n_sel < N_BINS
    _settled(qtbot, widget, n_sel)
    assert f"{n_sel} selected of {N_BINS} spots" in widget.selection_label.text()
    rows = dict(widget.table_rows())
    np.testing.assert_allclose(
        [rows[g] for g in genes], _mean(sample_map, table[inside]), rtol=1e-5, atol=1e-6
    )
    # napari's select tool: a click selects one bin, a drag moves it, the table follows
    target = table.iloc[[100]]
    world = np.array([target["y_um"].iloc[0], target["x_um"].iloc[0]]) + 1.0
    _press(bins, world)
    assert bins.selected_data == {100}
    qtbot.waitUntil(lambda: len(widget.last_spots) == 1, timeout=3000)
    for k in range(1, 4):
        _move(bins, world + np.array([0.0, 50.0 * k]))
        qtbot.waitUntil(
            lambda k=k: (
                abs(widget.last_spots["x_um"].iloc[0] - (target["x_um"].iloc[0] + 50 * k)) < 1e-6
            ),
            timeout=3000,
        )  # live, before the release
    _release(bins, world + np.array([0.0, 150.0]))
    moved = _spot_layer.spots_table(bins).iloc[[100]]
    assert moved["x_um"].iloc[0] == pytest.approx(target["x_um"].iloc[0] + 150.0)
    assert moved["id"].iloc[0] == target["id"].iloc[0]
    rows = dict(widget.table_rows())
    np.testing.assert_allclose(
        [rows[g] for g in genes], _mean(sample_map, moved), rtol=1e-5, atol=1e-6
    )
    live = SpotExpression(DenseMapStore.open(sample_map)).aggregate(moved)
    np.testing.assert_allclose(widget.last_values, live, rtol=1e-9)
    # Apply diameter to selected resizes the selected bins only
    widget.preset_combo.setCurrentText("Visium HD 16 µm")
    widget.apply_button.click()
    sizes = _spot_layer.spots_table(bins)["diameter_um"].to_numpy()
    assert sizes[100] == pytest.approx(16.0) and np.delete(sizes, 100) == pytest.approx(8.0)


def test_bins_ids_stay_unique_across_duplicates_pastes_and_deletes(setup, qtbot) -> None:
    viewer, slide, widget = setup
    bins = _fill(widget, slide)
    real = _spot_layer.unwrap(bins)
    # napari's "Duplicate layer" copies the features: the copy gets fresh numbers
    data, state, _ = real.as_layer_data_tuple()
    copy = viewer.add_points(data, **{**state, "name": "copy"})
    ids = _ids(viewer, slide)
    assert len(ids) == 2 * N_BINS and len(set(ids)) == len(ids)
    # paste: new points with copied features, no data event — fresh numbers too
    real.selected_data = {0, 1, 2}
    real._copy_data()
    real._paste_data()
    assert len(real.data) == N_BINS + 3
    ids = _ids(viewer, slide)
    assert len(set(ids)) == len(ids) == 2 * N_BINS + 3
    # napari's point tool adds a bin with a fresh id
    real.add(np.array([[600.0, 600.0]]) / _common.slide_mpp(slide))
    ids = _ids(viewer, slide)
    assert len(set(ids)) == len(ids) == 2 * N_BINS + 4
    # a drawn spot's id continues above every bin
    new_id = widget.add_spot(50.0, 50.0, 55.0)
    assert spot_table.id_numbers([new_id])[0] > max(spot_table.id_numbers(ids))
    # deleted bins leave the saved table; a removed layer's bins stay saved
    widget.flush_saves()
    removed = _spot_layer.spots_table(copy)["id"].iloc[:10].tolist()
    copy.selected_data = set(range(10))
    copy.remove_selected()
    viewer.layers.remove(bins)
    widget.flush_saves()
    saved = project.load_spots(_common.slide_path(slide))
    assert saved["id"].is_unique and len(saved) == 2 * N_BINS + 4 + 1 - 10
    assert not set(removed) & set(saved["id"])


def test_bins_saved_compactly_and_restored(make_napari_viewer, qtbot, slide_copy) -> None:
    viewer = make_napari_viewer()
    slide = _add_slide(viewer, slide_copy)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    widget.add_spot(100.0, 100.0, 55.0)
    bins = _fill(widget, slide)
    widget.flush_saves()
    csv = project.spots_path(slide_copy)
    packed = project.spot_bins_path(slide_copy)
    assert len(pd.read_csv(csv)) == 1  # the drawn spot; the bins in the columnar table
    assert packed.is_file() and packed.stat().st_size < 200_000
    saved = project.load_spots(slide_copy)
    assert len(saved) == N_BINS + 1 and saved["id"].is_unique
    before = _spot_layer.spots_table(bins)
    cols = list(spot_table.SPOT_COLUMNS)
    pd.testing.assert_frame_equal(
        saved[saved["layer"] == bins.name][cols].reset_index(drop=True), before, check_dtype=False
    )
    # a drawn spot's change rewrites the CSV only
    stamp = packed.stat().st_mtime_ns
    widget.add_spot(200.0, 100.0, 55.0)
    widget.flush_saves()
    assert packed.stat().st_mtime_ns == stamp and len(pd.read_csv(csv)) == 2
    # renaming the bins layer rewrites the bins table
    bins.name = "tumour bins"
    widget.flush_saves()
    assert set(project.load_spot_bins(slide_copy)["layer"]) == {"tumour bins"}
    # reopening: the bins layer comes back as Points, below the drawn spots
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    slide = _add_slide(viewer, slide_copy)
    qtbot.waitUntil(lambda: len(widget.bins_layers()) == 1, timeout=5000)
    (restored,) = widget.bins_layers()
    assert isinstance(_spot_layer.unwrap(restored), Points) and restored.name == "tumour bins"
    pd.testing.assert_frame_equal(_spot_layer.spots_table(restored), before, check_dtype=False)
    names = [layer.name for layer in viewer.layers]
    assert names.index("tumour bins") < names.index(widget.spots_layer().name)
    assert widget.spots_layer() is not None and len(widget.spots_layer().data) == 2
    # ids keep counting above the saved bins
    new_id = widget.add_spot(300.0, 300.0, 55.0)
    assert new_id == f"spot_{N_BINS + 2}"


def test_older_projects_large_csv_grid_comes_back_as_bins(
    make_napari_viewer, qtbot, slide_copy
) -> None:
    n = BIN_LAYER_MIN + 100
    xy = lattice_centres(region_from_shape(RECT_UM, "rectangle"), 16.0, "square")[:n]
    grid = pd.DataFrame(
        {"id": [f"spot_{i + 2}" for i in range(n)], "x_um": xy[:, 0], "y_um": xy[:, 1],
         "diameter_um": 16.0, "source": "grid", "layer": "old spots"}
    )  # fmt: skip
    drawn = pd.DataFrame(
        {"id": ["spot_0", "spot_1"], "x_um": [50.0, 90.0], "y_um": [50.0, 50.0],
         "diameter_um": 55.0, "source": "drawn", "layer": "old spots"}
    )  # fmt: skip
    project.save_spots(slide_copy, pd.concat([drawn, grid], ignore_index=True))
    viewer = make_napari_viewer()
    _add_slide(viewer, slide_copy)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: len(widget.bins_layers()) == 1, timeout=5000)
    (bins,) = widget.bins_layers()
    assert bins.name == "old spots bins" and len(bins.data) == n
    assert _spot_layer.spots_table(bins)["id"].tolist() == grid["id"].tolist()
    assert _spot_layer.spots_table(widget.spots_layer())["id"].tolist() == ["spot_0", "spot_1"]
    widget.flush_saves()  # the grid moves from the CSV to the bins table, nothing doubled
    assert len(pd.read_csv(project.spots_path(slide_copy))) == 2
    saved = project.load_spots(slide_copy)
    assert sorted(saved["id"]) == sorted([*drawn["id"], *grid["id"]])


def test_export_every_bin_to_h5ad_that_scanpy_draws(
    setup, qtbot, sample_map, slide_copy, monkeypatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    from matplotlib.collections import PatchCollection

    from napari_histoexpress.widgets import _export
    from napari_histoexpress.widgets._export import ExportWidget

    viewer, slide, widget = setup
    widget.add_spot(100.0, 100.0, 55.0)
    bins = _fill(widget, slide)
    export = ExportWidget(viewer)
    qtbot.addWidget(export)
    assert export.status.text().startswith(f"{N_BINS + 1} spot(s) in 2 layer(s)")
    out = project.project_dir(slide_copy) / "spots.h5ad"
    export.export_button.click()
    qtbot.waitUntil(lambda: export.last_result is not None, timeout=60000)
    adata = sc.read_h5ad(out)
    table = _spot_layer.spots_table(bins)
    assert adata.n_obs == N_BINS + 1 and set(table["id"]) <= set(adata.obs_names)
    grid = adata[adata.obs["source"] == "grid"]
    mpp = _common.slide_mpp(slide)
    by_id = table.set_index("id").loc[grid.obs_names]
    np.testing.assert_allclose(grid.obsm["spatial"], by_id[["x_um", "y_um"]] / mpp, atol=1e-6)
    np.testing.assert_allclose(
        grid.X, predict_circles(sample_map, by_id.reset_index()).X, rtol=1e-6, atol=1e-7
    )
    _, lib = spatial.library(adata)
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(8.0 / mpp)
    try:
        ax = sc.pl.spatial(adata, color="ERBB2", show=False)[0]
        (coll,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
        assert len(coll.get_paths()) == adata.n_obs
    finally:
        plt.close("all")
    # a large CSV export is announced with its size (3,112 bins × 6 genes are 0.4 MB)
    export.format_combo.setCurrentText(".csv")
    assert "MB" not in export.status.text()
    monkeypatch.setattr(_export, "CSV_WARN_MB", 0.1)
    export.format_combo.setCurrentText(".h5ad")
    assert "MB" not in export.status.text()  # only CSV is large
    export.format_combo.setCurrentText(".csv")
    assert "The CSV will be about 0 MB" in export.status.text() and ".h5ad" in export.status.text()


def test_bins_written_in_the_background_and_a_failed_write_is_shown(
    make_napari_viewer, qtbot, slide_copy, monkeypatch
) -> None:
    import threading

    viewer = make_napari_viewer()
    slide = _add_slide(viewer, slide_copy)
    widget = SpotsWidget(viewer)
    qtbot.addWidget(widget)
    writers: list[str] = []
    real_save = project.save_spot_bins

    def recording(*args, **kwargs):
        writers.append(threading.current_thread().name)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(project, "save_spot_bins", recording)
    bins = _fill(widget, slide)
    packed = project.spot_bins_path(slide_copy)
    # the debounced save: the bins table is written off the GUI thread
    qtbot.waitUntil(lambda: packed.exists() and not widget.saver._bins_jobs, timeout=10000)
    assert writers == ["save-bins"] and len(project.load_spot_bins(slide_copy)) == N_BINS
    errors: list[str] = []
    monkeypatch.setattr(_common, "notify_error", lambda m: errors.append(str(m)))

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(project, "save_spot_bins", fail)
    bins.selected_data = {0}
    bins.remove_selected()
    qtbot.waitUntil(lambda: "NOT saved" in widget.status.text(), timeout=10000)
    assert "disk full" in errors[-1] and "disk full" in widget.status.text()
    assert len(project.load_spot_bins(slide_copy)) == N_BINS  # the saved table is intact
    monkeypatch.setattr(project, "save_spot_bins", real_save)
    bins.selected_data = {0}
    bins.remove_selected()
    widget.flush_saves()  # waits for the write
    assert "NOT saved" not in widget.status.text()
    assert len(project.load_spot_bins(slide_copy)) == N_BINS - 2
