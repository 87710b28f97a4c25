"""The Predict dock widget: a trained run + a slide layer → the slide's dense-map store.

Thin: the work is :func:`napari_histoexpress.inference.predict_run.predict_with_run`, run in a
napari ``thread_worker`` that yields ``(done, total)`` progress to the GUI thread. The store
goes to the slide's project folder (:func:`napari_histoexpress.project.default_map_path`);
Cancel stops before the next batch and leaves a valid partial store, which the next Predict
resumes (finished tiles kept); *Start over* discards an existing store (partial, complete, or
made with other settings, e.g. another tile size) and predicts afresh, closing the heatmaps
read from it. On success the store is recorded on the slide layer with
:func:`._common.set_slide_map` (the Genes widget then lists its genes).

Reuse: when a slide layer is inserted or selected and its slide already has a complete map
(:func:`napari_histoexpress.project.complete_map`), that map is set at once, with no
computation.

µm/px: the **slide µm/px** field shows the chosen slide's µm/px and where it came from; typing
a value (Enter) sets the layer's scale (:func:`napari_histoexpress._layers.set_microns_per_pixel`,
so the scale bar and spots are in µm) and saves it in the slide's project folder
(:mod:`napari_histoexpress.slide_settings`), where the reader finds it when the slide is
reopened. A slide without µm/px cannot be predicted: the error says to use that field.

The bundled demo run was trained on the synthetic sample only: when it is chosen the widget
shows a warning line, and its status and "finished" report repeat that it is not for real
tissue. Errors use GUI words (a map made with another tile size: "tick Start over").
"""

from __future__ import annotations

import math
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import devices
from ..errors import HistoExpressError
from . import _common

if TYPE_CHECKING:
    import napari

DEVICES = devices.DEVICE_CHOICES
#: Shown while the bundled demo run is chosen (and appended to its reports).
DEMO_WARNING = (
    "The bundled demo run was trained on the synthetic sample only: it is not for real "
    "tissue (its predictions on real slides are meaningless). Train a run on your own "
    "sections (histoexpress train) for real slides."
)
#: Appended to the status and the "finished" notification of a demo-run prediction.
DEMO_NOTE = "Bundled demo run: trained on the synthetic sample only, not for real tissue."
#: Placeholder of the slide µm/px field when the slide's µm/px is unknown.
MPP_PLACEHOLDER = "unknown: type it (e.g. 0.5) and press Enter"
#: Tile core side (working px): the CLI's default.
DEFAULT_TILE_PX = 512


def _predict_generator(
    run_dir: Path,
    slide: Path,
    out: Path,
    slide_mpp: float | None,
    device: str,
    tile_px: int,
    stop: threading.Event,
    resume: bool = True,
    pitch_um: float | None = None,
) -> Any:
    """Generator run by the worker: yields ``(done, total)``, returns ``{"report": ...}`` or
    ``{"error": exception}``.

    :func:`predict_with_run` reports progress through a callback; it runs in a helper
    thread whose callbacks are queued and yielded here, so the worker can stream them.
    Errors are returned, not raised: the widget shows them with ``notify_error`` (a raised
    one would also pop up napari's traceback notification).
    """
    from ..inference.predict_run import predict_with_run

    updates: queue.Queue[tuple[int, int] | None] = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["report"] = predict_with_run(
                run_dir,
                slide,
                out,
                slide_mpp=slide_mpp,
                device=device,
                tile_px=tile_px,
                progress=lambda done, total: updates.put((done, total)),
                should_stop=stop.is_set,
                resume=resume,
                pitch_um=pitch_um,
            )
        except Exception as exc:  # handed to the GUI thread, shown by the widget
            outcome["error"] = exc
        finally:
            updates.put(None)

    thread = threading.Thread(target=target, name="histoexpress-predict", daemon=True)
    thread.start()
    while (item := updates.get()) is not None:
        yield item
    thread.join()
    return outcome


class PredictWidget(QWidget):
    """Predict a slide layer's dense gene-expression map with a trained run folder."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker: Any = None
        self._stop = threading.Event()
        self._job: dict[str, Any] = {}
        self._mpp_shown = ""
        #: The last finished prediction's report (``None`` before any).
        self.last_report: Any = None

        self.slide_combo = _common.SlideCombo(self.viewer)
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("run folder (config.json + weights.safetensors)")
        self.browse_button = QPushButton("Browse…")
        self.demo_button = QPushButton("Bundled demo run")
        self.demo_button.setToolTip(
            "A small PixNet trained on the synthetic sample (for trying the plugin on it)"
        )
        self.demo_warning = QLabel(DEMO_WARNING)
        self.demo_warning.setWordWrap(True)
        self.demo_warning.setStyleSheet("color: #f0a030;")
        self.demo_warning.setVisible(False)
        self.mpp_edit = QLineEdit()
        self.mpp_edit.setPlaceholderText(MPP_PLACEHOLDER)
        self.mpp_edit.setToolTip(
            "µm per pixel of the slide's full resolution; sets the layer's scale and is "
            "remembered in the slide's project folder"
        )
        self.mpp_source_label = QLabel("")
        self.mpp_source_label.setWordWrap(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(DEFAULT_TILE_PX)
        self.tile_spin.setToolTip("tile core side in working pixels (a multiple of 32)")
        self.pitch_edit = QLineEdit()
        self.pitch_edit.setPlaceholderText("the model's")
        self.pitch_edit.setToolTip(
            "spot models only: the map's pixel in µm (empty: the model's own; ALIGN-ST also "
            "takes its pitch divided by a whole number for finer maps); dense models keep "
            "their stride"
        )
        self.restart_check = QCheckBox("Start over (discard finished tiles)")
        self.restart_check.setToolTip(
            "Replace this slide's existing map for the run instead of resuming it "
            "(needed after changing the tile size)"
        )
        self.out_label = QLabel("—")
        self.out_label.setWordWrap(True)
        self.out_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.predict_button = QPushButton("Predict")
        self.cancel_button = QPushButton("Cancel")
        self.progress_bar = QProgressBar()
        self.rate_label = QLabel("")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        run_row = QHBoxLayout()
        run_row.addWidget(self.run_edit, 1)
        run_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("slide", self.slide_combo)
        form.addRow("slide µm/px", self.mpp_edit)
        form.addRow("", self.mpp_source_label)
        form.addRow("run", run_row)
        form.addRow("", self.demo_button)
        form.addRow("", self.demo_warning)
        form.addRow("device", self.device_combo)
        form.addRow("tile px", self.tile_spin)
        form.addRow("map pitch µm", self.pitch_edit)
        form.addRow("", self.restart_check)
        form.addRow("map store", self.out_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.cancel_button)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress_bar, 1)
        progress_row.addWidget(self.rate_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addLayout(progress_row)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

        self.slide_combo.currentIndexChanged.connect(self._on_slide_selected)
        self.run_edit.editingFinished.connect(self._on_run_changed)
        self.mpp_edit.editingFinished.connect(self._on_mpp_entered)
        self.browse_button.clicked.connect(self._browse)
        self.demo_button.clicked.connect(self.use_demo_run)
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        _common.hub.map_changed.connect(self._on_map_changed)

        _common.keep_dock_title_short(self, "Predict")
        self._refresh_slides()
        for layer in _common.slide_layers(self.viewer):
            self._reuse_stored_map(layer)
        self._set_busy(False)
        self._show_mpp()
        self._update_status()

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def current_layer(self) -> Any | None:
        return self.slide_combo.current_layer()

    def run_dir(self) -> Path | None:
        text = self.run_edit.text().strip()
        return Path(text).expanduser() if text else None

    def output_path(self, *, create: bool = False) -> Path | None:
        """Where the selected slide's map goes for the chosen run (``None`` if unknown)."""
        from ..project import default_map_path

        layer, run = self.current_layer(), self.run_dir()
        path = _common.slide_path(layer) if layer is not None else None
        if path is None or run is None:
            return None
        return default_map_path(path, run, create=create)

    def _set_busy(self, busy: bool) -> None:
        self.predict_button.setEnabled(not busy and bool(self.slide_combo.layers))
        self.cancel_button.setEnabled(busy)
        for w in (
            self.slide_combo,
            self.run_edit,
            self.browse_button,
            self.demo_button,
            self.device_combo,
            self.tile_spin,
            self.pitch_edit,
            self.restart_check,
            self.mpp_edit,
        ):
            w.setEnabled(not busy)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    # ------------------------------------------------------------------ layers
    def _refresh_slides(self) -> bool:
        """Re-list the slides; returns whether the chosen slide changed."""
        changed = bool(self.slide_combo.refresh())
        if not self.busy:
            self._set_busy(False)
        self._update_output()
        return changed

    def _on_layer_inserted(self, event: Any) -> None:
        # other layers (a heatmap, spots) leave the status alone: "Done: ..." stays readable
        layer = getattr(event, "value", None)
        changed = self._refresh_slides()
        if layer is not None and _common.is_slide_layer(layer):
            if not self.busy:
                self.slide_combo.select(layer)
            self._reuse_stored_map(layer)
            changed = True
        if changed:
            self._show_mpp()
            self._update_status()

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._refresh_slides():
            self._show_mpp()
            self._update_status()

    def _on_slide_selected(self, index: int) -> None:
        layer = self.current_layer()
        if layer is not None:
            self._reuse_stored_map(layer)
        self._update_output()
        self._show_mpp()
        self._update_status()

    def _on_map_changed(self, layer: Any) -> None:
        if _common.alive(self) and layer is self.current_layer() and not self.busy:
            self._update_status()

    def _reuse_stored_map(self, layer: Any) -> None:
        """Set a complete stored map of the layer's slide, if it has none yet."""
        from ..project import complete_map

        if _common.slide_map_path(layer) is not None:
            return
        path = _common.slide_path(layer)
        if path is None:
            return
        try:
            stored = complete_map(path)
        except OSError:
            return
        if stored is not None:
            _common.set_slide_map(layer, stored)

    # ------------------------------------------------------------------ µm/px
    def _show_mpp(self) -> None:
        """Show the chosen slide's µm/px and where it came from."""
        layer = self.current_layer()
        mpp = _common.slide_mpp(layer) if layer is not None else None
        self._mpp_shown = f"{mpp:.6g}" if mpp is not None else ""
        self.mpp_edit.setText(self._mpp_shown)
        if layer is None:
            self.mpp_source_label.setText("")
        elif mpp is None:
            self.mpp_source_label.setText(
                "The file does not say its µm/px: type it above (scanner or dataset "
                "documentation) so the slide is in µm and can be predicted."
            )
        else:
            source = (layer.metadata or {}).get("mpp_source") or "unknown"
            self.mpp_source_label.setText(f"from: {source}")

    def _on_mpp_entered(self) -> None:
        text = self.mpp_edit.text().strip()
        layer = self.current_layer()
        if layer is None or not text:
            self._show_mpp()
            return
        if text == self._mpp_shown:  # unchanged (editingFinished also fires on focus out)
            return
        try:
            value = float(text.replace(",", "."))
        except ValueError:
            value = float("nan")
        self.set_slide_mpp(value)

    def set_slide_mpp(self, mpp: float) -> bool:
        """Set the chosen slide's µm/px (every layer of that slide file) and save it in the
        slide's project folder; returns whether it was set. Errors are notified."""
        from .._layers import set_microns_per_pixel
        from ..slide_settings import MPP_SOURCE, save_mpp, valid_mpp

        layer = self.current_layer()
        if layer is None:
            return False
        value = valid_mpp(mpp)
        if value is None:
            problem = (
                f"µm/px must be a positive number such as 0.5, got {self.mpp_edit.text()!r}: "
                'correct it in the Predict widget\'s "slide µm/px" field'
            )
            _common.notify_error(_common.problem_first(problem, layer.name))
            self._set_status(f"Error: {problem}.")
            self._show_mpp()
            return False
        path = _common.slide_path(layer)
        same = [lyr for lyr in _common.slide_layers(self.viewer) if _common.slide_path(lyr) == path]
        for lyr in same if path is not None else [layer]:
            set_microns_per_pixel(lyr, value)
            lyr.metadata["mpp_source"] = MPP_SOURCE
        self.viewer.reset_view()
        saved = ""
        if path is not None:
            try:
                where = save_mpp(path, value)
                saved = f" and saved in {where} (used when the slide is reopened)"
            except Exception as exc:  # set for this session; say why it is not kept
                _common.notify_error(
                    _common.problem_first(
                        f"µm/px set, but it could not be saved: {_common.describe(exc)}", path
                    )
                )
        self._show_mpp()
        self._update_status()
        note = f"{layer.name}: µm/px set to {value:g}{saved}."
        store = _common.slide_map(layer)
        made_at = store.slide_mpp if store is not None else None
        if made_at is not None and abs(made_at - value) > 1e-9:
            note += (
                f" Its map was predicted at {made_at:g} µm/px: tick Start over and "
                "Predict to redo it at the new µm/px."
            )
        self._set_status(note + " " + self.status_label.text())
        return True

    # ------------------------------------------------------------------ inputs
    def _browse(self) -> None:
        start = str(self.run_dir() or Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Choose a trained run folder", start)
        if folder:
            self.set_run_dir(folder)

    def use_demo_run(self) -> None:
        """Choose the run bundled with the package (``demo.bundled_demo_run``)."""
        from ..demo import bundled_demo_run

        try:
            self.set_run_dir(bundled_demo_run())
        except Exception as exc:
            _common.notify_error(exc)

    def pitch_um(self) -> float | None:
        """The typed map pitch in µm (``None`` when empty: the model's own)."""
        text = self.pitch_edit.text().strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            self.pitch_edit.setFocus()
            raise HistoExpressError(
                f'The "map pitch µm" field must be a positive number of µm (or empty), got {text!r}'
            )
        return value

    def set_run_dir(self, path: str | Path) -> None:
        self.run_edit.setText(str(path))
        self._on_run_changed()

    def _on_run_changed(self) -> None:
        self.demo_warning.setVisible(self.is_demo_run())
        self._update_output()
        self._update_status()

    def is_demo_run(self, run: Path | None = None) -> bool:
        """Whether ``run`` (default: the chosen run folder) is the bundled demo run."""
        from ..demo import bundled_demo_run

        run = run if run is not None else self.run_dir()
        if run is None:
            return False
        try:
            return run.resolve() == bundled_demo_run().resolve()
        except Exception:  # no bundled run in this install: then it is not it
            return False

    def _on_device_changed(self, device: str) -> None:
        problem = self._device_problem(device)
        if problem:
            _common.notify_error(problem)
            self._set_status(problem)

    @staticmethod
    def _device_problem(device: str) -> str | None:
        from ..devices import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            return f"{exc}; choose 'auto' or 'cpu'"
        return None

    def _update_output(self) -> None:
        try:
            out = self.output_path()
        except OSError:
            out = None
        self.out_label.setText(str(out) if out is not None else "—")

    def _update_status(self) -> None:
        """Say what the widget can do now (idle only)."""
        if self.busy:
            return
        layer = self.current_layer()
        if layer is None:
            self._set_status("No slide layer: open a slide (File ▸ Open) to predict its map.")
            return
        stored = _common.slide_map_path(layer)
        run = self.run_dir()
        try:
            out = self.output_path()
        except OSError:
            out = None
        if stored is not None and (run is None or out is None or _same_path(stored, out)):
            self._set_status(
                f"Using stored map {stored}. To predict it again, tick Start over and Predict."
            )
            return
        if _common.slide_path(layer) is None:
            self._set_status(f"{layer.name}: no slide file behind this layer; open the slide.")
            return
        if run is None:
            self._set_status("Choose a run folder (Browse…) or the bundled demo run.")
            return
        from ..inference.predict_run import check_run

        try:
            info = check_run(run)
        except Exception as exc:
            self._set_status(_common.describe(exc))
            return
        partial = out is not None and out.exists()
        text = f"Ready: {info.describe()}."
        if partial:
            text += " A map exists: Predict resumes it (Start over replaces it)."
        if stored is not None:
            text += (
                f" The slide now shows the map {_common.short_path(stored)}; Predict makes "
                "this run's own map."
            )
        if _common.slide_mpp(layer) is None:
            text += ' Type the slide\'s µm/px in "slide µm/px" first.'
        if self.is_demo_run(run):
            text += f" {DEMO_NOTE}"
        self._set_status(text)

    # ------------------------------------------------------------------ run
    def predict(self) -> None:
        """Start predicting the selected slide with the chosen run (in a thread worker)."""
        from napari.qt.threading import thread_worker

        from ..inference.predict_run import check_run

        if self.busy:
            return
        layer = self.current_layer()
        try:
            if layer is None:
                raise HistoExpressError("No slide layer: open a slide first (File ▸ Open)")
            slide = _common.slide_path(layer)
            if slide is None:
                raise HistoExpressError(f"This layer has no slide file to predict — {layer.name}")
            mpp = _common.slide_mpp(layer)
            if mpp is None:
                self.mpp_edit.setFocus()
                raise HistoExpressError(
                    _common.problem_first(
                        "the slide's µm/px is unknown: type it in the Predict widget's "
                        '"slide µm/px" field (e.g. 0.5) and press Enter, then Predict',
                        slide,
                    )
                )
            run = self.run_dir()
            if run is None:
                raise HistoExpressError("Choose a run folder (Browse…) or the bundled demo run")
            check_run(run)
            device = self.device_combo.currentText()
            problem = self._device_problem(device)
            if problem:
                raise HistoExpressError(problem)
            tile_px = int(self.tile_spin.value())
            if tile_px % 32:
                raise HistoExpressError(f"Tile px must be a multiple of 32, got {tile_px}")
            pitch_um = self.pitch_um()
            out = self.output_path(create=True)
            assert out is not None
        except Exception as exc:
            _common.notify_error(exc)
            self._set_status(f"Error: {_common.describe(exc)}")
            return

        resume = not self.restart_check.isChecked()
        if not resume:  # first: unsetting the map re-runs _update_status
            self._release_map(layer, out)
        self._stop.clear()
        self._job = {
            "layer": layer, "out": out, "run": run, "t0": None, "done0": 0, "resume": resume
        }  # fmt: skip
        self.progress_bar.setRange(0, 0)  # busy until the first update
        self.rate_label.setText("")
        verb = "Predicting" if resume else "Predicting afresh"
        self._set_status(f"{verb} {layer.name} with {run.name} → {out}")
        worker = thread_worker(_predict_generator, start_thread=False, ignore_errors=True)(
            run, slide, out, mpp, device, tile_px, self._stop, resume, pitch_um
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._set_busy(True)
        worker.start()

    def _release_map(self, layer: Any, out: Path) -> None:
        """Before ``out`` is replaced: close the heatmaps read from it, unset it as the map."""
        for other in list(self.viewer.layers):
            if _common.is_heatmap_layer(other, out):
                self.viewer.layers.remove(other)
        if _common.slide_map_path(layer) == out:
            _common.set_slide_map(layer, None)

    def cancel(self) -> None:
        """Stop after the current batch; the partial store stays valid and resumable."""
        if self.busy:
            self._stop.set()
            self.cancel_button.setEnabled(False)
            self._set_status("Cancelling after the current batch…")

    def _on_progress(self, update: tuple[int, int]) -> None:
        done, total = update
        now = time.perf_counter()
        if self._job.get("t0") is None:
            self._job["t0"], self._job["done0"] = now, done
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        elapsed = now - self._job["t0"]
        computed = done - self._job["done0"]
        if elapsed > 0 and computed > 0:
            self.rate_label.setText(f"{computed / elapsed:.2f} tiles/s")
        self._job["last"] = update

    def _on_returned(self, outcome: dict[str, Any]) -> None:
        report = outcome.get("report")
        if report is None:
            self._on_errored(outcome.get("error") or RuntimeError("the prediction stopped"))
            return
        self.last_report = report
        layer, out = self._job.get("layer"), self._job.get("out")
        if report.status == "complete":
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1)
            self.rate_label.setText(f"{report.tiles_per_s:.2f} tiles/s")
            if layer is not None:
                _common.set_slide_map(layer, out)
            demo = f". {DEMO_NOTE}" if self.is_demo_run(self._job.get("run")) else ""
            _common.notify_info(f"Prediction finished: {report.summary()}{demo}")
            self._set_status(f"Done: {report.summary()}{demo}")
            self.restart_check.setChecked(False)  # a later Predict resumes again
        else:
            done = self._job.get("last", (0, report.n_tiles))[0]
            self._set_status(
                f"Cancelled: {done} of {report.n_tiles} tiles done; the partial map "
                f"{out} is kept and Predict resumes it."
            )

    def _on_errored(self, exc: BaseException) -> None:
        from ..errors import StoreMismatchError

        if isinstance(exc, StoreMismatchError):
            message = mismatch_message(exc)
            _common.notify_error(message)
            self._set_status(f"Error: {message}")
            return
        _common.notify_error(exc)
        self._set_status(f"Error: {_common.describe(exc)}")

    def _on_finished(self) -> None:
        self._worker = None
        self._job.pop("t0", None)
        self._set_busy(False)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


#: Settings of a map store (``predict_slide._RESUME_KEYS``) in the widget's words.
_SETTING_WORDS = {
    "tile_px": "tile px",
    "halo_px": "tile overlap",
    "model_mpp": "the run's µm/px",
    "genes": "the run's genes",
    "feature_dim": "the run's model",
    "stride": "the run's model",
    "map_shape": "the slide size or µm/px",
    "slide_shape": "the slide size",
    "head weights": "the run's weights",
}


def mismatch_message(exc: Any) -> str:
    """A :class:`~napari_histoexpress.errors.StoreMismatchError` in GUI words: which of the
    widget's settings differ from the existing map, and that *Start over* replaces it."""
    import re

    match = re.search(r"differs in ([^;]+)", str(getattr(exc, "problem", exc)))
    keys = [k.strip() for k in match.group(1).split(",")] if match else []
    words = list(dict.fromkeys(_SETTING_WORDS.get(k, k) for k in keys))
    what = f" (other {', '.join(words)})" if words else ""
    return _common.problem_first(
        f"This slide's existing map for this run was made with other settings{what} and "
        "cannot be resumed: tick Start over to replace it, or choose another run folder",
        getattr(exc, "path", None),
    )
