"""The Spots dock widget: draw circles on a slide, see every gene's expression live.

What the user does and what happens:

- **Add spots** (a toggle): the slide's drawn-spots layer (:mod:`._spot_layer`) becomes the
  active layer in pan/zoom mode; a click places a circle of the chosen diameter centred at
  the click (a drag still pans). napari's own tools work too: *select* moves and resizes
  spots, the *ellipse* tool draws one. After a resize or a drawn ellipse the shape is snapped
  back to a circle (same centre, diameter = mean side). New spots get ids ``spot_<n>`` from
  a counter that only grows while the layer lives (after a reload it restarts above the
  highest saved number) and source ``drawn``.
- **Diameter presets** (Visium HD 2/8/16 µm, Visium 55 µm, ST 100 µm, custom µm) apply to
  new spots; *Apply to selected* resizes the selected spots.
- **Grid**: draw a rectangle/polygon/ellipse in the "grid region" layer (*Draw region*) or
  select shapes in any other Shapes layer, then *Fill with grid*: the lattice of
  :mod:`napari_histoexpress.inference.spot_grid` (hexagonal or square, pitch in µm) is added
  as spots of source ``grid``.
- **Table + bar plot**: every gene's mean over the selected spots (all spots when none is
  selected) of each spot's circle mean, top genes first, sortable. It follows a drag live:
  napari reports a Shapes data change only when the drag ends, so a mouse-drag callback on
  the spots layer pokes a throttled update (at most one per :data:`LIVE_INTERVAL_S`) on each
  move, which reads the shapes' current vertices from ``layer.data`` (napari moves them
  in place during the drag). :class:`~napari_histoexpress.inference.live_spots.SpotExpression`
  keeps chunks and per-spot results cached, so only the moved spots are recomputed.
- **Persistence**: every change is saved (debounced by :data:`SAVE_DELAY_MS`) with
  :func:`napari_histoexpress.project.save_spots`; when a slide layer with saved spots appears
  (or is chosen here) its spots come back in a drawn-spots layer. Removing the spots layer
  does not delete the saved spots; deleting spots inside it does.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas as pd
from napari.layers.base import ActionType
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .. import project
from ..errors import InputFileError
from ..inference.live_spots import SpotExpression, rank_genes
from ..inference.spot_grid import (
    LATTICES,
    SPOT_PRESETS_UM,
    default_lattice,
    default_pitch_um,
    grid_spots,
    region_from_shape,
)
from . import _common, _spot_layer
from ._spots_table import BarPlot, GeneTableModel

#: At most one live table update per this many seconds while a spot is dragged.
LIVE_INTERVAL_S = 0.04
#: Saves are debounced: written this long after the last change.
SAVE_DELAY_MS = 400
#: Selections needing more new circles than this are computed in a worker thread.
SYNC_LIMIT = 200
REGION_KIND = "grid_region"
_ID_RE = re.compile(r"^spot_(\d+)$")


@dataclass
class _Hooked:
    """What the widget keeps about one drawn-spots layer it listens to."""

    layer: Any
    slide_path: Path | None
    known: set[str] = field(default_factory=set)
    next_id: int = 0


def _id_number(spot_id: str) -> int:
    m = _ID_RE.match(str(spot_id))
    return int(m.group(1)) if m else -1


class SpotsWidget(QWidget):
    """Draw spots on a slide and see their predicted expression (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._hooked: dict[int, _Hooked] = {}
        self._exprs: dict[str, SpotExpression] = {}
        self._busy = 0
        self._add_mode = False
        self._dirty: set[int] = set()
        self._last_update = 0.0
        self._generation = 0
        self.last_spots: pd.DataFrame = project.empty_spots()  # what the table shows
        self.last_values: np.ndarray | None = None

        self._build_ui()

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self.update_table)
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.timeout.connect(self.flush_saves)

        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        _common.hub.map_changed.connect(self._on_map_changed)

        for layer in list(self.viewer.layers):
            if _spot_layer.is_spots_layer(layer):
                self._hook(layer)
        for slide in _common.slide_layers(self.viewer):
            self._restore(slide)
        self._refresh_slides()
        self._on_preset()
        self.poke()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.slide_combo = _common.SlideCombo(self.viewer)
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
        self.apply_button = QPushButton("Apply diameter to selected")
        self.apply_button.clicked.connect(self.apply_diameter_to_selected)

        self.lattice_combo = QComboBox()
        self.lattice_combo.addItems(list(LATTICES))
        self.pitch_spin = QDoubleSpinBox()
        self.pitch_spin.setRange(0.5, 100_000.0)
        self.pitch_spin.setDecimals(1)
        self.pitch_spin.setSuffix(" µm")
        self.region_button = QPushButton("Draw region")
        self.region_button.setToolTip("Draw a rectangle, polygon or ellipse to fill with spots")
        self.region_button.clicked.connect(self.draw_region)
        self.fill_button = QPushButton("Fill with grid")
        self.fill_button.clicked.connect(self.fill_grid)

        self.selection_label = QLabel()
        self.model = GeneTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
        v_header, h_header = self.table.verticalHeader(), self.table.horizontalHeader()
        assert v_header is not None and h_header is not None  # a QTableView has both
        v_header.setVisible(False)
        h_header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.bars = BarPlot(self)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        size_row = QHBoxLayout()
        size_row.addWidget(self.preset_combo)
        size_row.addWidget(self.custom_spin)
        form.addRow("Diameter", size_row)
        draw_row = QHBoxLayout()
        for b in (self.add_button, self.select_button):
            draw_row.addWidget(b)
        grid_box = QGroupBox("Grid")
        grid_form = QFormLayout(grid_box)
        grid_form.addRow("Lattice", self.lattice_combo)
        grid_form.addRow("Pitch", self.pitch_spin)
        grid_row = QHBoxLayout()
        grid_row.addWidget(self.region_button)
        grid_row.addWidget(self.fill_button)
        grid_form.addRow(grid_row)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addLayout(draw_row)
        layout.addWidget(self.apply_button)
        layout.addWidget(grid_box)
        layout.addWidget(self.selection_label)
        layout.addWidget(self.table, stretch=1)
        layout.addWidget(self.bars)

    # ------------------------------------------------------------------ slides
    def current_slide(self) -> Any | None:
        return self.slide_combo.current_layer()

    def _refresh_slides(self) -> None:
        if self.slide_combo.refresh():
            self._on_slide_changed()
        else:
            self._update_status()

    def _on_slide_changed(self, *_: Any) -> None:
        slide = self.current_slide()
        if slide is not None:
            self._restore(slide)
        self._update_status()
        self.poke()

    @staticmethod
    def _mpp(slide: Any) -> float:
        return _common.slide_mpp(slide) or 1.0

    def _expression(self, slide: Any) -> SpotExpression | None:
        """The live expression of the slide's map (``None`` without a map; raises
        :class:`InputFileError` when the map cannot place µm)."""
        store = _common.slide_map(slide)
        if store is None:
            return None
        key = str(store.path)
        if key not in self._exprs:
            self._exprs[key] = SpotExpression(store)
        return self._exprs[key]

    def _update_status(self) -> None:
        slide = self.current_slide()
        if slide is None:
            self.status.setText("No slide layer: open a slide (File > Open) to draw spots.")
            return
        parts = []
        if _common.slide_mpp(slide) is None:
            parts.append("µm/px unknown: sizes are in slide pixels.")
        if _common.slide_path(slide) is None:
            parts.append("The slide has no file: spots are not saved.")
        try:
            expr = self._expression(slide)
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
            self._exprs.pop(str(path), None)
        if layer is self.current_slide():
            self._update_status()
            self.poke()

    # ------------------------------------------------------------------ layers
    def spots_layer(self, *, create: bool = False) -> Any | None:
        """The current slide's drawn-spots layer (made empty on demand with ``create``)."""
        slide = self.current_slide()
        if slide is None:
            return None
        layers = _spot_layer.spot_layers(self.viewer, slide)
        if layers:
            return layers[0]
        if not create:
            return None
        return self._add_spots_layer(slide, project.empty_spots())

    def _add_spots_layer(self, slide: Any, spots: pd.DataFrame) -> Any:
        data, kwargs, _ = _spot_layer.spots_layer_data(
            spots, slide_name=slide.name, mpp=self._mpp(slide)
        )
        layer = self.viewer.add_shapes(data, **kwargs)
        self._hook(layer)
        return layer

    def _restore(self, slide: Any) -> None:
        """Bring back the slide's saved spots when it has no drawn-spots layer yet."""
        path = _common.slide_path(slide)
        if path is None or _spot_layer.spot_layers(self.viewer, slide):
            return
        try:
            spots = project.load_spots(path)
        except InputFileError as exc:
            _common.notify_error(exc)
            return
        if len(spots):
            self._add_spots_layer(slide, spots)

    def _slide_of(self, layer: Any) -> Any | None:
        name = layer.metadata.get("slide")
        for slide in _common.slide_layers(self.viewer):
            if slide.name == name:
                return slide
        return None

    def _hook(self, layer: Any) -> None:
        if id(layer) in self._hooked:
            return
        slide = self._slide_of(layer)
        ids = [str(v) for v in layer.features["id"]] if "id" in layer.features else []
        info = _Hooked(
            layer=layer,
            slide_path=_common.slide_path(slide) if slide is not None else None,
            known=set(ids),
            next_id=max([_id_number(i) for i in ids], default=-1) + 1,
        )
        self._hooked[id(layer)] = info
        layer.mouse_drag_callbacks.append(self._on_drag)
        layer.events.data.connect(self._on_data)
        layer.events.mode.connect(self._on_mode)
        layer.selected_data.events.items_changed.connect(self._on_selection)
        self._reset_defaults(layer)
        self._normalise(layer, None)

    def _unhook(self, layer: Any) -> None:
        if self._hooked.pop(id(layer), None) is None:
            return
        with contextlib.suppress(ValueError):
            layer.mouse_drag_callbacks.remove(self._on_drag)
        for emitter, cb in (
            (layer.events.data, self._on_data),
            (layer.events.mode, self._on_mode),
            (layer.selected_data.events.items_changed, self._on_selection),
        ):
            with contextlib.suppress(Exception):
                emitter.disconnect(cb)

    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        if _spot_layer.is_spots_layer(layer):
            self._hook(layer)
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
        if id(layer) in self._hooked:
            if id(layer) in self._dirty:
                self._save(self._hooked[id(layer)])
            self._unhook(layer)
            self.poke()
        if _common.is_slide_layer(layer):
            self._refresh_slides()

    # ------------------------------------------------------------------ ids, circles
    def _guard(self) -> contextlib.AbstractContextManager[None]:
        widget = self

        @contextlib.contextmanager
        def busy() -> Iterator[None]:
            widget._busy += 1
            try:
                yield
            finally:
                widget._busy -= 1

        return busy()

    @staticmethod
    def _reset_defaults(layer: Any) -> None:
        with contextlib.suppress(Exception):  # an empty features table has no columns yet
            layer.feature_defaults = {"id": "", "source": "drawn"}

    def _new_ids(self, info: _Hooked) -> Iterator[str]:
        for _ in itertools.count():
            spot_id = f"spot_{info.next_id}"
            info.next_id += 1
            if spot_id not in info.known:
                yield spot_id

    def _normalise(self, layer: Any, indices: list[int] | None) -> None:
        """Give new shapes unique ids (source ``drawn``) and snap shapes to circles."""
        info = self._hooked.get(id(layer))
        if info is None:
            return
        n = len(layer.data)
        feats = layer.features
        ids = (
            feats["id"].astype(object).where(feats["id"].notna(), "").astype(str).tolist()
            if "id" in feats and len(feats) == n
            else [""] * n
        )
        sources = (
            feats["source"].astype(object).where(feats["source"].notna(), "").astype(str).tolist()
            if "source" in feats and len(feats) == n
            else ["drawn"] * n
        )
        seen: set[str] = set()
        new_ids = self._new_ids(info)
        changed = False
        for i, spot_id in enumerate(ids):
            if spot_id in ("", "nan", "None") or spot_id in seen or spot_id not in info.known:
                ids[i] = next(new_ids)
                sources[i] = "drawn"
                changed = True
            elif sources[i] not in ("drawn", "grid"):
                sources[i] = "drawn"
                changed = True
            seen.add(ids[i])
        with self._guard():
            if changed or "id" not in feats or len(feats) != n:
                layer.features = pd.DataFrame({"id": ids, "source": sources})
                self._reset_defaults(layer)
            info.known = set(ids)
            check = range(n) if indices is None else [i for i in indices if 0 <= i < n]
            snapped = [i for i in check if self._snap(layer, i)]
            if snapped:
                layer.refresh()
                layer.events.data(
                    value=layer.data,
                    action=ActionType.CHANGED,
                    data_indices=tuple(snapped),
                    vertex_indices=((),),
                )

    def _snap(self, layer: Any, index: int) -> bool:
        """Make shape ``index`` a circle (keep its centre; diameter = mean side)."""
        v = np.asarray(layer.data[index], dtype=float)[:, -2:]
        kind = layer.shape_type[index]
        if kind == "ellipse" and len(v) == 4:
            centre = v.mean(axis=0)
            diameter = float(np.linalg.norm(v[1] - v[0]) + np.linalg.norm(v[2] - v[1])) / 2.0
        else:
            lo, hi = v.min(axis=0), v.max(axis=0)
            centre, diameter = (lo + hi) / 2.0, float(np.mean(hi - lo))
        diameter = max(float(diameter), 1e-6)
        mpp = _spot_layer.layer_mpp(layer)
        target = _spot_layer.circle_corners(centre[1] * mpp, centre[0] * mpp, diameter * mpp, mpp)
        if kind == "ellipse" and v.shape == target.shape and np.allclose(v, target, atol=1e-6):
            return False
        self._set_shape(layer, index, target, None if kind == "ellipse" else "ellipse")
        return True

    @staticmethod
    def _set_shape(layer: Any, index: int, vertices: np.ndarray, new_type: str | None) -> None:
        # napari's own vertex tools edit one shape this way (no public per-shape setter)
        with layer.events.set_data.blocker():
            layer._data_view.edit(index, vertices, new_type=new_type)

    # ------------------------------------------------------------------ events
    def _on_data(self, event: Any) -> None:
        if self._busy:
            return
        layer = event.source
        action = str(getattr(event, "action", ""))
        if action not in ("added", "changed", "removed"):
            return
        indices = None
        if action == "changed":
            raw = getattr(event, "data_indices", None)
            if raw and all(int(i) >= 0 for i in raw):
                indices = [int(i) for i in raw]
        elif action == "added":
            raw = getattr(event, "data_indices", None) or ()
            if raw == (-1,):
                indices = [len(layer.data) - 1]
        self._normalise(layer, indices)
        self._mark_dirty(layer)
        self.poke()

    def _on_selection(self, *_: Any) -> None:
        self.poke()

    def _on_mode(self, event: Any) -> None:
        if self._add_mode and str(event.mode) != "pan_zoom":
            self.add_button.setChecked(False)

    def _on_drag(self, layer: Any, event: Any) -> Iterator[None]:
        """Mouse-drag callback of the spots layer: click-to-add, and live updates on moves."""
        adding = self._add_mode and layer.mode == "pan_zoom"
        press_world = tuple(event.position)
        press_pos = np.asarray(event.pos, dtype=float).copy()
        dragged = False
        yield
        while event.type == "mouse_move":
            if adding:
                dragged = dragged or bool(
                    np.hypot(*(np.asarray(event.pos, dtype=float) - press_pos)) > 4
                )
            else:
                self.poke()
            yield
        if adding and not dragged:
            row, col = np.asarray(layer.world_to_data(press_world), dtype=float)[-2:]
            mpp = _spot_layer.layer_mpp(layer)
            self.add_spot(col * mpp, row * mpp, layer=layer)
        elif not adding:
            self.poke()

    # ------------------------------------------------------------------ actions
    @property
    def diameter_um(self) -> float:
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
        d = self.diameter_um
        self.pitch_spin.setValue(default_pitch_um(d))
        self.lattice_combo.setCurrentText(default_lattice(d))

    def set_add_mode(self, on: bool) -> None:
        """Turn click-to-add on or off (the spots layer becomes active, pan/zoom mode)."""
        self._add_mode = bool(on)
        if on:
            layer = self.spots_layer(create=True)
            if layer is None:
                _common.notify_error("Open a slide first: spots are drawn on a slide layer.")
                self.add_button.setChecked(False)
                self._add_mode = False
                return
            self.viewer.layers.selection.active = layer
            layer.mode = "pan_zoom"
        if self.add_button.isChecked() != self._add_mode:
            self.add_button.setChecked(self._add_mode)

    def _select_mode(self) -> None:
        layer = self.spots_layer(create=True)
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
        d = self.diameter_um if diameter_um is None else float(diameter_um)
        spots = pd.DataFrame({"x_um": [x_um], "y_um": [y_um], "diameter_um": [d]})
        return self._append(layer, spots, "drawn")[0]

    def _append(self, layer: Any, spots: pd.DataFrame, source: str) -> list[str]:
        info = self._hooked.get(id(layer))
        if info is None:
            self._hook(layer)
            info = self._hooked[id(layer)]
        mpp = _spot_layer.layer_mpp(layer)
        data = [
            _spot_layer.circle_corners(x, y, d, mpp)
            for x, y, d in spots[["x_um", "y_um", "diameter_um"]].to_numpy(float)
        ]
        if not data:
            return []
        gen = self._new_ids(info)
        ids = [next(gen) for _ in data]
        with self._guard():
            old = layer.features
            n0 = len(layer.data)
            layer.add(
                data,
                shape_type="ellipse",
                edge_width=[
                    _spot_layer.edge_width_px(d, mpp) for d in spots["diameter_um"].to_numpy(float)
                ],
                edge_color="#00e5ff" if source == "drawn" else "#ffd400",
                face_color="transparent",
            )
            prev_ids = old["id"].astype(str).tolist()[:n0] if "id" in old else []
            prev_src = old["source"].astype(str).tolist()[:n0] if "source" in old else []
            if len(prev_ids) != n0:
                prev_ids = layer.features["id"].astype(str).tolist()[:n0]
                prev_src = layer.features["source"].astype(str).tolist()[:n0]
            layer.features = pd.DataFrame(
                {"id": prev_ids + ids, "source": prev_src + [source] * len(ids)}
            )
            self._reset_defaults(layer)
            info.known.update(ids)
        self._mark_dirty(layer)
        self.poke()
        return ids

    def apply_diameter_to_selected(self) -> None:
        """Give the selected spots the chosen diameter (centres kept)."""
        layer = self.spots_layer()
        if layer is None or not layer.selected_data:
            _common.notify_info("Select spots first (Select / move, then click or box-select).")
            return
        mpp = _spot_layer.layer_mpp(layer)
        d = self.diameter_um
        idx = sorted(int(i) for i in layer.selected_data)
        with self._guard():
            for i in idx:
                x, y, _ = _spot_layer.circle_of(layer.data[i], mpp)
                self._set_shape(layer, i, _spot_layer.circle_corners(x, y, d, mpp), None)
            layer.refresh()
            layer.events.data(
                value=layer.data,
                action=ActionType.CHANGED,
                data_indices=tuple(idx),
                vertex_indices=((),),
            )
        self._mark_dirty(layer)
        self.poke()

    def region_layer(self, *, create: bool = False) -> Any | None:
        slide = self.current_slide()
        if slide is None:
            return None
        for layer in self.viewer.layers:
            md = getattr(layer, "metadata", None) or {}
            if md.get("histoexpress") == REGION_KIND and md.get("slide") == slide.name:
                return layer
        if not create:
            return None
        mpp = self._mpp(slide)
        return self.viewer.add_shapes(
            name=f"{slide.name} grid region",
            scale=(mpp, mpp),
            units=("micrometer",) * 2 if _common.slide_mpp(slide) else ("pixel",) * 2,
            edge_color="#ffd400",
            edge_width=3.0,
            face_color=[1.0, 0.83, 0.0, 0.08],
            metadata={"histoexpress": REGION_KIND, "slide": slide.name},
        )

    def draw_region(self) -> None:
        layer = self.region_layer(create=True)
        if layer is None:
            _common.notify_error("Open a slide first: the grid region is drawn on a slide.")
            return
        self.add_button.setChecked(False)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def _grid_region(self) -> Any | None:
        """The union (µm) of the chosen region shapes: the selected shapes of the active
        Shapes layer (not a spots layer), else the grid-region layer's selected or all."""
        candidates = []
        active = self.viewer.layers.selection.active
        if (
            isinstance(active, napari.layers.Shapes)
            and not _spot_layer.is_spots_layer(active)
            and active.selected_data
        ):
            candidates.append((active, sorted(active.selected_data)))
        region = self.region_layer()
        if not candidates and region is not None and len(region.data):
            idx = sorted(region.selected_data) or list(range(len(region.data)))
            candidates.append((region, idx))
        if not candidates:
            return None
        import shapely

        geoms = []
        for layer, idx in candidates:
            for i in idx:
                world = np.array([layer.data_to_world(v) for v in layer.data[i]], dtype=float)
                geoms.append(region_from_shape(world, layer.shape_type[i]))
        return shapely.union_all(geoms)

    def fill_grid(self) -> None:
        """Fill the drawn region with a lattice of spots (source ``grid``)."""
        slide = self.current_slide()
        if slide is None:
            _common.notify_error("Open a slide first: spots are drawn on a slide layer.")
            return
        try:
            region = self._grid_region()
            if region is None:
                _common.notify_error(
                    "No grid region: click 'Draw region' and draw a rectangle, polygon or "
                    "ellipse (or select shapes in a Shapes layer) first."
                )
                return
            spots = grid_spots(
                region,
                self.diameter_um,
                pitch_um=self.pitch_spin.value(),
                lattice=self.lattice_combo.currentText(),
                ids=itertools.repeat(""),
            )
        except ValueError as exc:
            _common.notify_error(f"Cannot fill the region with a grid: {exc}")
            return
        if not len(spots):
            _common.notify_error(
                "The grid has no spot in this region: draw a larger region or lower the pitch."
            )
            return
        layer = self.spots_layer(create=True)
        ids = self._append(layer, spots, "grid")
        _common.notify_info(f"Added {len(ids)} grid spots.")

    # ------------------------------------------------------------------ saving
    def _mark_dirty(self, layer: Any) -> None:
        self._dirty.add(id(layer))
        self._save_timer.start(SAVE_DELAY_MS)

    def flush_saves(self) -> None:
        """Write every changed spots layer to its slide's project now."""
        for key in list(self._dirty):
            info = self._hooked.get(key)
            if info is not None:
                self._save(info)
            self._dirty.discard(key)

    def _save(self, info: _Hooked) -> None:
        self._dirty.discard(id(info.layer))
        if info.slide_path is None:
            return
        try:
            project.save_spots(info.slide_path, _spot_layer.spots_table(info.layer))
        except (InputFileError, OSError) as exc:
            _common.notify_error(f"{info.slide_path}: cannot save the spots ({exc})")

    # ------------------------------------------------------------------ live table
    def poke(self) -> None:
        """Ask for a table update: at once if the last one is older than
        :data:`LIVE_INTERVAL_S`, else when it is (never more than one pending)."""
        if self._live_timer.isActive():
            return
        wait = LIVE_INTERVAL_S - (time.perf_counter() - self._last_update)
        self._live_timer.start(max(0, int(wait * 1000)))

    def shown_spots(self, layer: Any | None = None) -> pd.DataFrame:
        """The spots the table aggregates: the selected ones, all when none is selected,
        with their *current* geometry (mid-drag included)."""
        layer = layer if layer is not None else self.spots_layer()
        if layer is None or len(layer.data) == 0:
            return project.empty_spots()
        table = _spot_layer.spots_table(layer)
        sel = sorted(int(i) for i in layer.selected_data if 0 <= int(i) < len(table))
        return table.iloc[sel].reset_index(drop=True) if sel else table

    def update_table(self) -> None:
        """Recompute the table and bar plot now (called through :meth:`poke`)."""
        self._last_update = time.perf_counter()
        self._generation += 1
        layer = self.spots_layer()
        slide = self.current_slide()
        spots = self.shown_spots(layer)
        self.last_spots = spots
        n_all = len(layer.data) if layer is not None else 0
        if n_all == 0:
            self.selection_label.setText("No spots yet: click 'Add spots', then the slide.")
        elif len(spots) < n_all:
            self.selection_label.setText(f"{len(spots)} selected of {n_all} spots")
        else:
            self.selection_label.setText(f"All {n_all} spots (none selected)")
        try:
            expr = self._expression(slide) if slide is not None else None
        except InputFileError as exc:
            expr = None
            self.selection_label.setText(f"{self.selection_label.text()}: {exc}")
        if expr is None or len(spots) == 0:
            if expr is None and slide is not None:
                self.selection_label.setText(f"{self.selection_label.text()} — no map")
            self._show([], np.zeros(0))
            return
        if expr.pending(spots) > SYNC_LIMIT:
            self._compute_in_worker(expr, spots, self._generation)
            return
        self._show(expr.genes, expr.aggregate(spots))

    def _compute_in_worker(self, expr: SpotExpression, spots: pd.DataFrame, gen: int) -> None:
        from napari.qt.threading import create_worker

        self.selection_label.setText(f"{self.selection_label.text()} (computing…)")
        worker = create_worker(expr.aggregate, spots)

        def done(values: np.ndarray) -> None:
            if gen == self._generation:
                self.selection_label.setText(
                    self.selection_label.text().replace(" (computing…)", "")
                )
                self._show(expr.genes, values)

        worker.returned.connect(done)
        worker.errored.connect(_common.notify_error)
        worker.start()

    def _show(self, genes: list[str], values: np.ndarray) -> None:
        self.last_values = np.asarray(values) if len(genes) else None
        self.model.set_values(genes, values)
        top = rank_genes(list(genes), values) if len(genes) else rank_genes([], np.zeros(0))
        self.bars.set_values(top["gene"].tolist(), top["value"].to_numpy())

    def table_rows(self) -> list[tuple[str, float]]:
        """The table's ``(gene, mean)`` rows in display order."""
        return self.model.rows()
