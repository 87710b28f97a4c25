"""The Spots dock widget: draw circles on a slide, see every gene's expression live.

What the user does and what happens (each job lives in its own module; this one composes
them into the dock):

- **Add spots** (a toggle): the slide's drawn-spots layer (:mod:`._spot_layer`) becomes the
  active layer in pan/zoom mode; a click places a circle of the chosen diameter centred at
  the click (a drag still pans). napari's own tools work too: *select* moves and resizes
  spots, the *ellipse* tool draws one; shapes snap back to circles, and every spot of a
  slide gets a unique id ``spot_<n>`` that is never given again (:mod:`._spot_drawing`,
  :mod:`._spot_ids`). New spots get source ``drawn``.
- **New layer** makes another drawn-spots layer on the slide (a second group of spots); the
  active drawn-spots layer is the one clicks, grids and the table use.
- **Diameter presets** (Visium HD 2/8/16 µm, Visium 55 µm, ST 100 µm, custom µm) apply to
  new spots; *Apply to selected* resizes the selected spots.
- **Grid**: fill a drawn region with a lattice of spots of source ``grid``
  (:mod:`._spot_grid_fill`); a grid of :data:`~._spot_bins.BIN_LAYER_MIN` spots or more
  (Visium HD bins over a capture area: up to millions) becomes a new **bins layer**, a
  napari Points layer drawn fast at any size (:mod:`._spot_bins`); *Select in region*
  selects the spots or bins inside the drawn region.
- **Table + bar plot**: the expression of the selected spots or bins (all when none is
  selected) of the active spots layer against the slide or another group, ranked, live
  during a drag (:mod:`._spot_table_view`).
- **Persistence**: every change is saved to the slide's project folder, debounced, without
  losing spots (:mod:`._spot_saving`; bins in a columnar table). When a slide layer with
  saved spots appears (or is chosen here) its spots come back, one layer per saved layer
  name (bins layers first, so drawn spots stay on top). A layer of an older project that
  holds a grid of :data:`~._spot_bins.BIN_LAYER_MIN` spots or more comes back as a bins
  layer of its grid spots (``<name> bins`` when it also holds drawn spots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas as pd
from qtpy.QtCore import QTimer
from qtpy.QtGui import QHideEvent
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import project
from ..errors import InputFileError
from ..inference.spot_compare import SlideStats
from ..inference.spot_grid import SPOT_PRESETS_UM
from ..io import spot_table
from . import _common, _spot_layer
from ._spot_bins import BIN_LAYER_MIN
from ._spot_drawing import SpotDrawing, layer_key
from ._spot_grid_fill import REGION_KIND, GridBox
from ._spot_saving import SAVE_DELAY_MS, SpotSaver, saved_bin_layers, saved_layers
from ._spot_table_view import (
    LIVE_INTERVAL_S,
    RANK_CHOICES,
    REF_GROUP,
    REF_SLIDE,
    SYNC_LIMIT,
    SpotTableView,
)

__all__ = [
    "BIN_LAYER_MIN",
    "LIVE_INTERVAL_S",
    "RANK_CHOICES",
    "REF_GROUP",
    "REF_SLIDE",
    "REGION_KIND",
    "SAVE_DELAY_MS",
    "SYNC_LIMIT",
    "SpotsWidget",
    "layer_key",
]

_NO_SLIDE = "Open a slide first: spots are drawn on a slide layer."


class SpotsWidget(QWidget):
    """Draw spots on a slide and see their predicted expression (see the module docstring).

    The parts: :attr:`drawing` (the drawn-spots layers), :attr:`saver` (saving them),
    :attr:`grid_box` (grid fill) and :attr:`table_view` (the live table); their widgets are
    also reachable here under their own names (``fill_button``, ``table``, ...).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.slide_combo = _common.SlideCombo(self.viewer)
        self.drawing = SpotDrawing(
            self.viewer,
            diameter_um=lambda: self.diameter_um,
            edited=self._spots_edited,
            poke=self.poke,
            layers_changed=self._refresh_references,
            add_mode_left=lambda: self.add_button.setChecked(False),
        )
        self.saver = SpotSaver(self.drawing, on_status=self._update_status, parent=self)
        self.grid_box = GridBox(
            self.viewer,
            current_slide=self.current_slide,
            diameter_um=lambda: self.diameter_um,
            add_spots=lambda spots: self.drawing.append(
                self.spots_layer(create=True), spots, "grid"
            ),
            stop_adding=lambda: self.add_button.setChecked(False),
            add_bins=self.add_bins,
            table_layer=self.table_layer,
        )
        self.table_view = SpotTableView(
            self.viewer,
            current_slide=self.current_slide,
            spots_layer=self.table_layer,
            layer_of=self.drawing.layer,
        )
        self._build_ui()
        _common.keep_dock_title_short(self, "Spots")

        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active)
        _common.hub.map_changed.connect(self._on_map_changed)

        for layer in list(self.viewer.layers):
            if _spot_layer.is_any_spots_layer(layer):
                self.drawing.hook(layer)
        for slide in _common.slide_layers(self.viewer):
            self._restore(slide)
        self._refresh_slides()
        self._on_preset()
        self.poke()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        self.status = QLabel()
        self.status.setWordWrap(True)

        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(SPOT_PRESETS_UM))
        self.preset_combo.setCurrentText("Visium 55 µm")
        self.custom_spin = QDoubleSpinBox()
        self.custom_spin.setRange(0.5, 10_000.0)
        self.custom_spin.setDecimals(1)
        self.custom_spin.setSuffix(" µm")
        self.custom_spin.setValue(55.0)
        self.preset_combo.currentIndexChanged.connect(self._on_preset)
        self.custom_spin.valueChanged.connect(self._on_custom)

        self.add_button = QPushButton("Add spots")
        self.add_button.setCheckable(True)
        self.add_button.setToolTip("Click on the slide to place a spot of the chosen diameter")
        self.add_button.toggled.connect(self.set_add_mode)
        self.select_button = QPushButton("Select / move")
        self.select_button.setToolTip("napari's select tool on the spots: drag to move/resize")
        self.select_button.clicked.connect(self._select_mode)
        self.new_layer_button = QPushButton("New layer")
        self.new_layer_button.setToolTip(
            "A new drawn-spots layer on the slide: a second group of spots to compare"
        )
        self.new_layer_button.clicked.connect(self.new_spots_layer)
        self.apply_button = QPushButton("Apply diameter to selected")
        self.apply_button.clicked.connect(self.apply_diameter_to_selected)

        # the parts' widgets, under the names the widget always had
        grid, view = self.grid_box, self.table_view
        self.lattice_combo, self.pitch_spin = grid.lattice_combo, grid.pitch_spin
        self.region_button, self.fill_button = grid.region_button, grid.fill_button
        self.select_region_button = grid.select_region_button
        self.rank_combo, self.ref_combo = view.rank_combo, view.ref_combo
        self.ref_button, self.selection_label = view.ref_button, view.selection_label
        self.model, self.table = view.model, view.table
        self.units_label, self.bars = view.units_label, view.bars

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        size_row = QHBoxLayout()
        size_row.addWidget(self.preset_combo)
        size_row.addWidget(self.custom_spin)
        form.addRow("Diameter", size_row)
        draw_row = QHBoxLayout()
        for b in (self.add_button, self.select_button, self.new_layer_button):
            draw_row.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addLayout(draw_row)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.grid_box)
        layout.addWidget(self.table_view, stretch=1)

    def hideEvent(self, event: QHideEvent | None) -> None:
        """Hidden (the viewer closes, another dock tab is shown): save pending changes."""
        if _common.alive(self):
            self.flush_saves()
        super().hideEvent(event)

    # ------------------------------------------------------------------ slides
    def current_slide(self) -> Any | None:
        """The slide layer chosen in the *Slide* box."""
        return self.slide_combo.current_layer()

    def _refresh_slides(self) -> None:
        if self.slide_combo.refresh():
            self._on_slide_changed()
        else:
            self._update_status()
            self._refresh_references()

    def _on_slide_changed(self, *_: Any) -> None:
        slide = self.current_slide()
        if slide is not None:
            self._restore(slide)
        self._update_status()
        self._refresh_references()
        self.poke()

    def _update_status(self) -> None:
        slide = self.current_slide()
        if slide is None:
            self.status.setText("No slide layer: open a slide (File > Open) to draw spots.")
            return
        parts = []
        if self.saver.error:
            parts.append(f"⚠ Spots NOT saved: {self.saver.error}.")
        if _common.slide_mpp(slide) is None:
            parts.append("µm/px unknown: sizes are in slide pixels.")
        if _common.slide_path(slide) is None:
            parts.append("The slide has no file: spots are not saved.")
        try:
            expr = self.table_view.expression(slide)
        except InputFileError as exc:
            parts.append(f"Map unusable: {exc}")
        else:
            if expr is None:
                parts.append("No map: spots can be drawn and are saved; predict a map to see")
                parts[-1] += " their expression."
            else:
                parts.append(f"Map: {Path(expr.store.path).name} ({len(expr.genes)} genes).")
        self.status.setText(" ".join(parts))

    def _on_map_changed(self, layer: Any) -> None:
        if not _common.alive(self):
            return
        path = _common.slide_map_path(layer)
        if path is not None:
            self.table_view.forget_map(str(path))
        if layer is self.current_slide():
            self._update_status()
            self.poke()

    def _restore(self, slide: Any) -> None:
        """Bring back the slide's saved spots (one layer per saved layer name, bins layers
        first) when it has no spots layer yet."""
        path = _common.slide_path(slide)
        if path is None or _spot_layer.any_spot_layers(self.viewer, slide):
            return
        try:
            spots = project.load_spots(path, bins=False)
        except InputFileError as exc:
            _common.notify_error(exc)
            spots = spot_table.empty_spots()
        try:
            bins = project.load_spot_bins(path, ids=False)
        except InputFileError as exc:
            _common.notify_error(exc)
            bins = None
        if bins is not None and len(bins):
            for name, part in saved_bin_layers(bins, default=f"{slide.name} bins"):
                self.drawing.add_bins_layer(
                    slide, part, name=name, numbers=part["id_number"].to_numpy(), changed=False
                )
        for name, part in saved_layers(spots, default=f"{slide.name} spots"):
            grid = (part["source"] == "grid").to_numpy() & (spot_table.id_numbers(part["id"]) >= 0)
            if grid.sum() < BIN_LAYER_MIN:
                self.drawing.add_layer(slide, part, name=name)
                continue
            # a large grid saved by an older version as circles: back as a bins layer
            drawn = part[~grid].reset_index(drop=True)
            binned = part[grid].reset_index(drop=True)
            if len(drawn):
                self.drawing.add_layer(slide, drawn, name=name)
            self.drawing.add_bins_layer(
                slide,
                binned,
                name=f"{name} bins" if len(drawn) else name,
                numbers=spot_table.id_numbers(binned["id"]),
            )

    # ------------------------------------------------------------------ layer events
    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        if _spot_layer.is_any_spots_layer(layer):
            self.drawing.hook(layer)
            self.poke()
        elif _common.is_slide_layer(layer):
            self._refresh_slides()
            # restore after napari has finished inserting the slide
            QTimer.singleShot(0, lambda: self._restore_if_present(layer))

    def _restore_if_present(self, slide: Any) -> None:
        if slide in self.viewer.layers:
            self._restore(slide)
            self.poke()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        info = self.drawing.info(layer)
        if info is not None:
            if self.saver.is_dirty(info.slide_key):
                self.saver.save(info.slide_key)
            self.drawing.unhook(layer)
            self.poke()
        if _common.is_slide_layer(layer):
            self._refresh_slides()

    def _on_active(self, *_: Any) -> None:
        if _common.alive(self):
            self._refresh_references()
            self.poke()

    def _spots_edited(self, slide_key: str) -> None:
        self.saver.mark_dirty(slide_key)

    def _refresh_references(self) -> None:
        self.table_view.refresh_references()

    # ------------------------------------------------------------------ drawing
    def spots_layer(self, *, create: bool = False) -> Any | None:
        """The current slide's drawn-spots layer: the active one, else the one last active,
        else the first; made empty on demand with ``create``."""
        return self.drawing.spots_layer(self.current_slide(), create=create)

    def table_layer(self) -> Any | None:
        """The current slide's spots layer the table shows (drawn or bins): the active one,
        else the one last active, else the first drawn-spots layer, else the first bins."""
        return self.drawing.table_layer(self.current_slide())

    def bins_layers(self) -> list[Any]:
        """The current slide's bins layers."""
        slide = self.current_slide()
        return [] if slide is None else _spot_layer.bin_layers(self.viewer, slide)

    def add_bins(self, spots: pd.DataFrame, *, name: str | None = None) -> Any | None:
        """Add a bins layer of ``spots`` (``x_um, y_um, diameter_um``) to the current slide
        and make it the table's layer (fresh ids; source ``grid``)."""
        slide = self.current_slide()
        if slide is None:
            _common.notify_error(_NO_SLIDE)
            return None
        self.add_button.setChecked(False)
        layer = self.drawing.add_bins_layer(slide, spots, name=name)
        self.viewer.layers.selection.active = layer
        return layer

    def new_spots_layer(self) -> Any | None:
        """Add an empty drawn-spots layer to the current slide and make it active."""
        slide = self.current_slide()
        if slide is None:
            _common.notify_error(_NO_SLIDE)
            return None
        return self.drawing.new_layer(slide)

    @property
    def diameter_um(self) -> float:
        """The diameter of new spots (the preset's, or the custom value)."""
        preset = SPOT_PRESETS_UM.get(self.preset_combo.currentText())
        return float(preset if preset is not None else self.custom_spin.value())

    def _on_preset(self, *_: Any) -> None:
        preset = SPOT_PRESETS_UM.get(self.preset_combo.currentText())
        self.custom_spin.setEnabled(preset is None)
        if preset is not None:
            self.custom_spin.blockSignals(True)
            self.custom_spin.setValue(preset)
            self.custom_spin.blockSignals(False)
        self._on_custom()

    def _on_custom(self, *_: Any) -> None:
        self.grid_box.set_diameter(self.diameter_um)

    def set_add_mode(self, on: bool) -> None:
        """Turn click-to-add on or off (the spots layer becomes active, pan/zoom mode)."""
        self.drawing.add_mode = bool(on)
        if on:
            layer = self.spots_layer(create=True)
            if layer is None:
                _common.notify_error(_NO_SLIDE)
                self.add_button.setChecked(False)
                self.drawing.add_mode = False
                return
            self.viewer.layers.selection.active = layer
            layer.mode = "pan_zoom"
        if self.add_button.isChecked() != self.drawing.add_mode:
            self.add_button.setChecked(self.drawing.add_mode)

    def _select_mode(self) -> None:
        layer = self.table_layer() or self.spots_layer(create=True)
        if layer is None:
            return
        self.add_button.setChecked(False)
        self.viewer.layers.selection.active = layer
        layer.mode = "select"

    def add_spot(
        self, x_um: float, y_um: float, diameter_um: float | None = None, *, layer: Any = None
    ) -> str | None:
        """Add one drawn spot (centre in µm); returns its id."""
        layer = layer if layer is not None else self.spots_layer(create=True)
        if layer is None:
            return None
        return self.drawing.add_spot(layer, x_um, y_um, diameter_um)

    def apply_diameter_to_selected(self) -> None:
        """Give the selected spots (or bins) the chosen diameter (centres kept)."""
        table_layer = self.table_layer()
        if table_layer is not None and _spot_layer.is_bins_layer(table_layer):
            sel = _spot_layer.selected_indices(table_layer)
            if len(sel):
                self.drawing.bins.set_diameter(table_layer, sel, self.diameter_um)
                return
        layer = self.spots_layer()
        if layer is None or not layer.selected_data:
            _common.notify_info("Select spots first (Select / move, then click or box-select).")
            return
        self.drawing.set_diameter(
            layer, sorted(int(i) for i in layer.selected_data), self.diameter_um
        )

    def select_in_region(self) -> None:
        """Select the spots (or bins) of the table's layer whose centres lie in the region."""
        self.grid_box.select_in_region()

    def region_layer(self, *, create: bool = False) -> Any | None:
        """The current slide's grid-region layer (made on demand with ``create``)."""
        return self.grid_box.region_layer(create=create)

    def draw_region(self) -> None:
        """Draw the grid region: its layer becomes active in rectangle mode."""
        self.grid_box.draw_region()

    def fill_grid(self) -> None:
        """Fill the drawn region with a lattice of spots (source ``grid``)."""
        self.grid_box.fill_grid()

    # ------------------------------------------------------------------ saving
    def flush_saves(self) -> None:
        """Write every changed slide's spots to its project now."""
        self.saver.flush()

    def slide_spots(self, slide_key: str) -> pd.DataFrame:
        """The spots of all the slide's open drawn-spots layers, with a ``layer`` column."""
        return self.drawing.slide_spots(slide_key)

    def slide_bins(self, slide_key: str) -> pd.DataFrame:
        """The bins of all the slide's open bins layers (``id_number``, ``layer`` columns)."""
        return self.drawing.slide_bins(slide_key)

    # ------------------------------------------------------------------ table
    @property
    def ranking(self) -> str:
        """The ranking key (``delta``, ``z`` or ``mean``)."""
        return self.table_view.ranking

    @property
    def last_spots(self) -> pd.DataFrame:
        """The spots the table shows."""
        return self.table_view.last_spots

    @property
    def last_values(self) -> np.ndarray | None:
        """The genes' means over :attr:`last_spots` (``None`` without a map)."""
        return self.table_view.last_values

    @property
    def last_table(self) -> pd.DataFrame | None:
        """The comparison table, in gene order."""
        return self.table_view.last_table

    def poke(self) -> None:
        """Ask for a table update (throttled, see :meth:`SpotTableView.poke`)."""
        self.table_view.poke()

    def update_table(self) -> None:
        """Recompute the table and bar plot now."""
        self.table_view.update_table()

    def shown_spots(self, layer: Any | None = None) -> pd.DataFrame:
        """The spots the table aggregates: the selected ones, all when none is selected."""
        return self.table_view.shown_spots(layer)

    def store_reference(self) -> None:
        """Store the spots the table shows now as the reference group."""
        self.table_view.store_reference()

    def reference_spots(self) -> pd.DataFrame | None:
        """The reference group's spots (current geometry), ``None`` for the slide."""
        return self.table_view.reference_spots()

    def slide_stats(self) -> SlideStats | None:
        """The current map's slide statistics (``None`` until computed); starts them."""
        return self.table_view.slide_stats()

    def table_rows(self) -> list[tuple[str, float]]:
        """The table's ``(gene, mean)`` rows in display order."""
        return self.table_view.table_rows()

    def table_records(self) -> pd.DataFrame:
        """The whole table (gene, mean, ref_mean, delta, z) in display order."""
        return self.table_view.table_records()
