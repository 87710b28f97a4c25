"""The Predict dock widget, driven as a user would: choose a run, click Predict / Cancel."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.widgets import _common

TIMEOUT_MS = 90_000
#: The conftest's GENES (the tiny model's outputs).
GENES = ["ERBB2", "KRT19", "PTPRC", "COL1A1", "MKI67", "ACTA2"]


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model: Any) -> Path:
    """The conftest's tiny PixNet saved as a trained run folder (4 µm/px)."""
    from napari_histoexpress.models.checkpoint import save_checkpoint

    assert list(tiny_model.genes) == GENES
    run = tmp_path / "runs" / "tiny_run"
    save_checkpoint(run, tiny_model, {}, GENES, extra={"microns_per_pixel": 4.0})
    return run


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What _common.notify_error / notify_info showed."""
    import napari.utils.notifications as notifications

    seen: dict[str, list[str]] = {"error": [], "info": []}
    monkeypatch.setattr(notifications, "show_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(notifications, "show_info", lambda m: seen["info"].append(str(m)))
    return seen


def _viewer_with_widget(make_napari_viewer: Any) -> tuple[Any, Any]:
    from napari_histoexpress.widgets import PredictWidget

    viewer = make_napari_viewer()
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _open(viewer: Any, path: Path) -> Any:
    (layer,) = viewer.open(str(path), plugin="napari-histoexpress")
    return layer


def _batch_size() -> int:
    """Tiles per batch of the widget's runs (predict_with_run's default)."""
    import inspect

    from napari_histoexpress.inference.predict_run import predict_with_run

    return int(inspect.signature(predict_with_run).parameters["batch_size"].default)


def _choose_run(widget: Any, run: Path, tile_px: int) -> None:
    widget.run_edit.setText(str(run))
    widget.run_edit.editingFinished.emit()
    widget.tile_spin.setValue(tile_px)


def test_predict_sets_a_complete_map(
    make_napari_viewer: Any, qtbot: Any, slide_copy: Path, run_dir: Path, messages: dict
) -> None:
    from napari_histoexpress.project import default_map_path

    viewer, widget = _viewer_with_widget(make_napari_viewer)
    assert not widget.predict_button.isEnabled()
    assert "No slide layer" in widget.status_label.text()
    layer = _open(viewer, slide_copy)
    assert widget.slide_combo.currentText() == layer.name
    assert widget.predict_button.isEnabled()
    _choose_run(widget, run_dir, 128)
    expected = default_map_path(slide_copy, run_dir, create=False)
    assert widget.out_label.text() == str(expected)
    assert "Ready: tiny_run: pixnet, 6 genes" in widget.status_label.text()

    changed: list[Any] = []
    _common.hub.map_changed.connect(changed.append)
    try:
        widget.predict_button.click()
        assert widget.busy and not widget.predict_button.isEnabled()
        assert widget.cancel_button.isEnabled()
        qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    finally:
        _common.hub.map_changed.disconnect(changed.append)

    assert messages["error"] == []
    assert layer.metadata[_common.MAP_KEY] == str(expected)
    assert changed == [layer]
    store = _common.slide_map(layer)
    assert store is not None and store.status == "complete" and store.genes == GENES
    assert any("Prediction finished" in m and "complete" in m for m in messages["info"])
    assert widget.status_label.text().startswith("Done:")
    assert widget.progress_bar.value() == widget.progress_bar.maximum()
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()
    viewer.add_points([[10.0, 10.0]])  # another layer (not a slide) keeps the report readable
    assert widget.status_label.text().startswith("Done:")


def test_cancel_leaves_a_resumable_store_and_gui_stays_live(
    make_napari_viewer: Any,
    qtbot: Any,
    slide_copy: Path,
    run_dir: Path,
    messages: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qtpy.QtCore import QTimer

    import napari_histoexpress.inference.predict_slide as ps

    forward = ps._forward
    calls: list[int] = []
    cancelled = threading.Event()

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        """A slow model whose 2nd batch waits for the test's Cancel (a deterministic cut)."""
        calls.append(1)
        time.sleep(0.1)
        if len(calls) == 2:
            cancelled.wait(timeout=60)
        return forward(*args, **kwargs)

    monkeypatch.setattr(ps, "_forward", slow_forward)
    viewer, widget = _viewer_with_widget(make_napari_viewer)
    layer = _open(viewer, slide_copy)
    _choose_run(widget, run_dir, 64)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    values: list[int] = []
    widget.progress_bar.valueChanged.connect(values.append)
    timer.start()
    try:
        widget.predict_button.click()
        # the first batch's tiles arrive (the first update is the starting point)
        qtbot.waitUntil(lambda: len(set(values)) >= 3 and len(calls) == 2, timeout=TIMEOUT_MS)
        assert widget.busy
        n_ticks = len(ticks)
        qtbot.wait(300)
        assert len(ticks) > n_ticks + 3, "the GUI thread stopped while predicting"
        assert "tiles/s" in widget.rate_label.text()
        widget.cancel_button.click()
        cancelled.set()
        qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    finally:
        timer.stop()
    # the GUI event loop kept running all along: ~1 tick per 20 ms, never a long gap
    assert len(ticks) >= 10
    assert np.diff(ticks).max() < 2.0

    out = Path(widget.out_label.text())
    store = DenseMapStore.open(out)
    assert store.status == "partial"
    done_before = int(store.done_mask.sum())
    report = widget.last_report
    assert report.status == "partial"
    assert len(calls) == 2 and report.n_computed == 2 * _batch_size()  # two batches
    assert report.n_skipped_background + report.n_computed == done_before < report.n_tiles
    assert _common.MAP_KEY not in layer.metadata
    assert "Cancelled" in widget.status_label.text()
    assert widget.predict_button.isEnabled()

    monkeypatch.setattr(ps, "_forward", forward)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    report = widget.last_report
    assert report.status == "complete"
    assert report.n_already_done == done_before
    assert report.n_computed == report.n_tiles - done_before
    assert layer.metadata[_common.MAP_KEY] == str(out)
    assert messages["error"] == []


def test_stored_map_is_reused_on_reopen(
    make_napari_viewer: Any, slide_copy: Path, sample_map: Path, messages: dict
) -> None:
    from napari_histoexpress import _reader
    from napari_histoexpress._layers import slide_layer_data
    from napari_histoexpress.io.slides import open_slide
    from napari_histoexpress.project import default_map_path

    assert _reader.MAP_KEY == _common.MAP_KEY
    viewer, widget = _viewer_with_widget(make_napari_viewer)
    # a layer made without the reader: the widget finds nothing, then the stored map
    data, kwargs, kind = slide_layer_data(open_slide(slide_copy), name="no map yet")
    viewer._add_layer_from_data(data, kwargs, kind)
    assert _common.MAP_KEY not in viewer.layers["no map yet"].metadata

    stored = default_map_path(slide_copy, "tiny_run")
    shutil.copytree(sample_map, stored)
    data, kwargs, kind = slide_layer_data(open_slide(slide_copy), name="inserted")
    viewer._add_layer_from_data(data, kwargs, kind)
    inserted = viewer.layers["inserted"]
    assert inserted.metadata[_common.MAP_KEY] == str(stored)
    assert widget.status_label.text().startswith(f"Using stored map {stored}.")
    assert "tick Start over" in widget.status_label.text()
    # selecting the other layer of the same slide reuses the map too
    widget.slide_combo.setCurrentText("no map yet")
    assert viewer.layers["no map yet"].metadata[_common.MAP_KEY] == str(stored)

    # the reader itself records the stored map: reopening needs no computation
    reopened = _open(viewer, slide_copy)
    assert reopened.metadata[_common.MAP_KEY] == str(stored)
    assert _common.slide_map(reopened).status == "complete"
    assert widget.slide_combo.currentText() == reopened.name
    assert widget.status_label.text().startswith("Using stored map")
    assert messages["error"] == []


def test_reader_skips_partial_maps(slide_copy: Path, sample_map: Path) -> None:
    from napari_histoexpress._reader import read
    from napari_histoexpress.project import default_map_path

    ((_, kwargs, _),) = read(str(slide_copy))
    assert _common.MAP_KEY not in kwargs["metadata"]
    stored = default_map_path(slide_copy, "tiny_run")
    shutil.copytree(sample_map, stored)
    DenseMapStore.open(stored, mode="r+").set_status("partial")
    ((_, kwargs, _),) = read(str(slide_copy))
    assert _common.MAP_KEY not in kwargs["metadata"]
    DenseMapStore.open(stored, mode="r+").set_status("complete")
    ((_, kwargs, _),) = read(str(slide_copy))
    assert kwargs["metadata"][_common.MAP_KEY] == str(stored)


def test_errors_are_notified_and_the_widget_returns_to_idle(
    make_napari_viewer: Any,
    qtbot: Any,
    slide_copy: Path,
    run_dir: Path,
    tmp_path: Path,
    messages: dict,
) -> None:
    from PIL import Image

    viewer, widget = _viewer_with_widget(make_napari_viewer)
    layer = _open(viewer, slide_copy)

    # not a run folder: refused before any work
    _choose_run(widget, tmp_path, 128)
    assert "not a checkpoint folder" in widget.status_label.text().lower()
    widget.predict_button.click()
    assert not widget.busy
    assert messages["error"] and str(tmp_path) in messages["error"][-1]
    # the problem leads (a toast shows only its start), the path comes last
    assert messages["error"][-1].lower().startswith("not a checkpoint folder")
    assert messages["error"][-1].endswith(str(tmp_path))

    # broken weights: fails inside the worker, reported, buttons back
    broken = tmp_path / "broken_run"
    shutil.copytree(run_dir, broken)
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    _choose_run(widget, broken, 128)
    widget.predict_button.click()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert "weights.safetensors" in messages["error"][-1]
    assert messages["error"][-1].startswith("Cannot read weights")
    assert widget.status_label.text().startswith("Error:")
    assert widget.predict_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.run_edit.isEnabled()
    assert _common.MAP_KEY not in layer.metadata

    # a slide without µm/px
    png = tmp_path / "plain.png"
    Image.fromarray(np.full((128, 128, 3), 220, np.uint8)).save(png)
    with pytest.warns(UserWarning, match="µm/px is unknown"):
        plain = _open(viewer, png)
    assert widget.slide_combo.currentText() == plain.name
    _choose_run(widget, run_dir, 128)
    widget.predict_button.click()
    assert not widget.busy
    assert "plain.png" in messages["error"][-1] and "µm/px is unknown" in messages["error"][-1]
    # where to click, not a Python function or argument
    assert '"slide µm/px" field' in messages["error"][-1]
    assert "set_microns_per_pixel" not in messages["error"][-1]
    assert "(" not in messages["error"][-1].split("field")[0].replace("(e.g.", "")

    # an unavailable device
    import torch

    if not torch.cuda.is_available():
        widget.device_combo.setCurrentText("cuda")
        assert "CUDA is not available" in messages["error"][-1]
        n = len(messages["error"])
        widget.slide_combo.setCurrentText(layer.name)
        widget.predict_button.click()
        assert not widget.busy and len(messages["error"]) == n + 1


def test_bundled_demo_run_button(make_napari_viewer: Any) -> None:
    from napari_histoexpress.demo import bundled_demo_run

    _viewer, widget = _viewer_with_widget(make_napari_viewer)
    widget.demo_button.click()
    assert Path(widget.run_edit.text()) == bundled_demo_run()


def test_start_over_replaces_a_map_made_with_other_settings(
    make_napari_viewer: Any, qtbot: Any, slide_copy: Path, run_dir: Path, messages: dict
) -> None:
    from napari_histoexpress.widgets import GenesWidget

    viewer, widget = _viewer_with_widget(make_napari_viewer)
    genes = GenesWidget(viewer)
    viewer.window.add_dock_widget(genes)
    layer = _open(viewer, slide_copy)
    _choose_run(widget, run_dir, 128)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    out = Path(widget.out_label.text())
    assert DenseMapStore.open(out).attrs["tile_px"] == 128
    genes.show_gene("ERBB2")
    assert genes.heatmap_layer("ERBB2") is not None

    # another tile size cannot resume the stored map: the error says what to do
    widget.tile_spin.setValue(64)
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    error = messages["error"][-1]
    assert "cannot be resumed" in error and "other tile px" in error
    assert "tick Start over" in error and "resume=False" not in error
    assert error.endswith(str(out))
    assert "tick Start over" in widget.status_label.text()
    assert "resume=False" not in widget.status_label.text()
    assert layer.metadata[_common.MAP_KEY] == str(out)  # the old map is untouched
    assert DenseMapStore.open(out).attrs["tile_px"] == 128

    # Start over: the heatmap read from the old store closes, the store is rebuilt
    widget.restart_check.setChecked(True)
    changed: list[Any] = []
    _common.hub.map_changed.connect(changed.append)
    try:
        widget.predict_button.click()
        assert widget.busy and not widget.restart_check.isEnabled()
        assert "Predicting afresh" in widget.status_label.text()
        assert genes.heatmap_layer("ERBB2") is None
        assert not any(lyr.name.startswith("ERBB2") for lyr in viewer.layers)
        qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    finally:
        _common.hub.map_changed.disconnect(changed.append)
    report = widget.last_report
    assert report.status == "complete" and report.n_already_done == 0
    assert changed == [layer, layer]  # unset while rebuilt, then set again
    store = DenseMapStore.open(out)
    assert store.attrs["tile_px"] == 64 and store.status == "complete"
    assert layer.metadata[_common.MAP_KEY] == str(out)
    assert not widget.restart_check.isChecked()  # the next Predict resumes again
    assert genes.genes() == GENES


def test_slide_mpp_field_sets_the_scale_and_is_remembered(
    make_napari_viewer: Any, tmp_path: Path, messages: dict
) -> None:
    from PIL import Image

    from napari_histoexpress import slide_settings

    png = tmp_path / "slides" / "C2.png"
    png.parent.mkdir()
    Image.fromarray(np.full((200, 120, 3), 210, np.uint8)).save(png)
    viewer, widget = _viewer_with_widget(make_napari_viewer)
    with pytest.warns(UserWarning, match="µm/px is unknown"):
        layer = _open(viewer, png)
    assert widget.mpp_edit.text() == ""
    assert "does not say its µm/px" in widget.mpp_source_label.text()

    # not a number: refused, nothing changes, the message says where to correct it
    widget.mpp_edit.setText("abc")
    widget.mpp_edit.editingFinished.emit()
    assert messages["error"][-1].startswith("µm/px must be a positive number")
    assert '"slide µm/px" field' in messages["error"][-1]
    np.testing.assert_allclose(layer.scale, [1, 1])
    assert slide_settings.load_mpp(png) is None

    widget.mpp_edit.setText("0,688")  # a decimal comma is accepted too
    widget.mpp_edit.editingFinished.emit()
    np.testing.assert_allclose(layer.scale, [0.688, 0.688])
    assert layer.metadata["microns_per_pixel"] == pytest.approx(0.688)
    assert layer.metadata["mpp_source"] == slide_settings.MPP_SOURCE
    assert slide_settings.load_mpp(png) == pytest.approx(0.688)
    assert "saved in" in widget.status_label.text()
    assert widget.mpp_edit.text() == "0.688"
    n_errors = len(messages["error"])
    widget.mpp_edit.editingFinished.emit()  # focus out, unchanged: nothing happens
    assert len(messages["error"]) == n_errors

    # reopening the slide restores it (the reader reads the project folder), no warning
    viewer.layers.clear()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = _open(viewer, png)
    np.testing.assert_allclose(reopened.scale, [0.688, 0.688])
    assert widget.mpp_edit.text() == "0.688"
    assert "project" in widget.mpp_source_label.text()


def test_demo_run_says_it_is_not_for_real_tissue(
    make_napari_viewer: Any, qtbot: Any, slide_copy: Path, run_dir: Path, messages: dict
) -> None:
    from napari_histoexpress.widgets._predict import DEMO_NOTE

    viewer, widget = _viewer_with_widget(make_napari_viewer)
    _open(viewer, slide_copy)
    assert not widget.demo_warning.isVisibleTo(widget)
    widget.demo_button.click()
    assert widget.demo_warning.isVisibleTo(widget)
    assert "not for real tissue" in widget.demo_warning.text()
    assert DEMO_NOTE in widget.status_label.text()
    _choose_run(widget, run_dir, 128)  # a run of one's own: no warning
    assert not widget.demo_warning.isVisibleTo(widget)
    assert DEMO_NOTE not in widget.status_label.text()

    widget.demo_button.click()
    widget.device_combo.setCurrentText("cpu")
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert messages["error"] == []
    assert widget.status_label.text().startswith("Done:")
    assert widget.status_label.text().endswith(DEMO_NOTE)
    assert any("Prediction finished" in m and DEMO_NOTE in m for m in messages["info"])


def test_status_follows_a_newly_chosen_run(
    make_napari_viewer: Any, slide_copy: Path, sample_map: Path, run_dir: Path
) -> None:
    from napari_histoexpress.project import default_map_path

    stored = default_map_path(slide_copy, "other_run")
    shutil.copytree(sample_map, stored)
    viewer, widget = _viewer_with_widget(make_napari_viewer)
    layer = _open(viewer, slide_copy)
    assert layer.metadata[_common.MAP_KEY] == str(stored)
    assert widget.status_label.text().startswith("Using stored map")

    _choose_run(widget, run_dir, 128)  # another run: its own map is still to be predicted
    text = widget.status_label.text()
    assert text.startswith("Ready: tiny_run") and "Using stored map" not in text
    assert "tick Start over" not in text and "other_run.zarr" in text

    _choose_run(widget, stored.parent.parent / "other_run", 128)  # the stored map's run
    assert widget.status_label.text().startswith("Using stored map")


def test_map_pitch_field_gives_a_finer_spot_model_map(
    make_napari_viewer: Any, qtbot: Any, slide_copy: Path, tmp_path: Path, messages: dict
) -> None:
    """The "map pitch µm" field: empty = the model's pitch; half of ALIGN-ST's pitch gives
    a map with twice the resolution (offset lattices); a bad value is refused by name."""
    from dense_toys import align_st_sample_run
    from napari_histoexpress.models.checkpoint import load_checkpoint

    align_st_sample_run(tmp_path / "align", epochs=2)
    run = tmp_path / "align" / "run"
    model, _ = load_checkpoint(run)
    viewer, widget = _viewer_with_widget(make_napari_viewer)
    layer = _open(viewer, slide_copy)
    _choose_run(widget, run, 512)
    widget.pitch_edit.setText("abc")
    widget.predict_button.click()
    assert not widget.busy and '"map pitch µm" field' in messages["error"][-1]
    widget.pitch_edit.setText(f"{model.lattice_pitch_um / 2:.4f}")
    widget.predict_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    store = _common.slide_map(layer)
    assert store is not None and store.status == "complete", widget.status_label.text()
    assert store.attrs["lattice"]["pitch_um"] == pytest.approx(model.lattice_pitch_um / 2, rel=0.02)
