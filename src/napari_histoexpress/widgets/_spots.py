"""The Spots dock widget: draw circles on a slide, see every gene's expression live.

What the user does and what happens:

- **Add spots** (a toggle): the slide's drawn-spots layer (:mod:`._spot_layer`) becomes the
  active layer in pan/zoom mode; a click places a circle of the chosen diameter centred at
  the click (a drag still pans). napari's own tools work too: *select* moves and resizes
  spots, the *ellipse* tool draws one. After a resize or a drawn ellipse the shape is snapped
  back to a circle (same centre, diameter = mean side). New spots get source ``drawn``.
- **Spot ids** ``spot_<n>`` are unique across *every* drawn-spots layer of a slide and every
  way of adding spots (click, ellipse tool, grid, napari's copy/paste, a duplicated layer,
  restored spots): one counter per slide, started above the highest id of the slide's
  layers and of its saved table, that only grows (a deleted spot's id is never given again).
  Layers are told apart by napari's ``layer.unique_id``: a plugin dock widget gets the
  viewer through napari's ``PublicOnlyProxy``, so the same layer reaches the widget as
  different Python objects. A shape whose id is empty, repeated, taken by another layer of
  the slide or never given out (napari copies the selected shape's features into new and
  pasted shapes) gets a fresh id.
- **New layer** makes another drawn-spots layer on the slide (a second group of spots); the
  active drawn-spots layer is the one clicks, grids and the table use.
- **Diameter presets** (Visium HD 2/8/16 µm, Visium 55 µm, ST 100 µm, custom µm) apply to
  new spots; *Apply to selected* resizes the selected spots.
- **Grid**: draw a rectangle/polygon/ellipse in the "grid region" layer (*Draw region*) or
  select shapes in any other Shapes layer, then *Fill with grid*: the lattice of
  :mod:`napari_histoexpress.inference.spot_grid` (hexagonal or square, pitch in µm) is added
  as spots of source ``grid``.
- **Table + bar plot**: for the selected spots of the active layer (all its spots when none
  is selected), every gene's mean of each spot's circle mean, compared with a **reference**:
  the slide's tissue (default) or another group of spots (another drawn-spots layer, or a
  selection stored with *Use as reference*). Columns: mean, reference mean, Δ (a log fold
  change: difference of log1p means) and z (Δ in slide SDs), units in the headers
  (:mod:`napari_histoexpress.inference.spot_compare`). Ranked by Δ by default (*Rank by*:
  Δ, z or the plain mean); every column sorts. The slide statistics are computed once per
  map in a worker thread; until then the table ranks by the mean. It follows a drag live:
  napari reports a Shapes data change only when the drag ends, so a mouse-drag callback on
  the spots layer pokes a throttled update (at most one per :data:`LIVE_INTERVAL_S`) on each
  move, which reads the shapes' current vertices from ``layer.data`` (napari moves them
  in place during the drag). :class:`~napari_histoexpress.inference.live_spots.SpotExpression`
  keeps chunks and per-spot results cached, so only the moved spots are recomputed.
- **Persistence**: every change is saved (debounced by :data:`SAVE_DELAY_MS`) with
  :func:`napari_histoexpress.project.save_spots`: one table per slide holding the spots of
  all its drawn-spots layers (column ``layer``: the layer's name), written atomically. When
  a slide layer with saved spots appears (or is chosen here) its spots come back, one
  drawn-spots layer per saved layer name. Removing a spots layer does not delete its saved
  spots (a later save keeps the saved rows of layers no longer open, unless the user
  deleted those spots); deleting spots inside a layer does. A save never writes fewer spots
  than were saved unless the user deleted them: a saved table that cannot be read is first
  kept aside as ``spots.csv.unreadable-<time>``; a failed save is shown as an error
  notification and in the widget's status line until a save succeeds.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Hashable, Iterator
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
from ..inference.live_spots import SpotExpression
from ..inference.spot_compare import SlideStats, compare_groups, rank, slide_stats
from ..inference.spot_grid import (
    LATTICES,
    SPOT_PRESETS_UM,
    default_lattice,
    default_pitch_um,
    grid_spots,
    region_from_shape,
)
from ..io import spot_table
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
#: Reference choices of the comparison (besides other layers and a stored group).
REF_SLIDE = "Slide tissue (map mean)"
REF_GROUP = "Stored reference group"
#: "Rank by" choices → :data:`napari_histoexpress.inference.spot_compare.RANKINGS` keys.
RANK_CHOICES = {
    "Δ vs reference (log fold change)": "delta",
    "z-score (Δ in slide SDs)": "z",
    "Mean expression": "mean",
}


@dataclass
class _Hooked:
    """What the widget keeps about one drawn-spots layer it listens to."""

    layer: Any
    slide_path: Path | None
    slide_key: str
    known: set[str] = field(default_factory=set)


def _id_number(spot_id: str) -> int:
    m = _ID_RE.match(str(spot_id))
    return int(m.group(1)) if m else -1


def layer_key(layer: Any) -> Hashable:
    """A layer's identity, the same for the layer and for napari's proxies of it."""
    uid = getattr(layer, "unique_id", None)
    return uid if uid is not None else id(getattr(layer, "__wrapped__", layer))


def _layer_ids(layer: Any) -> list[str]:
    feats = layer.features
    if "id" not in feats or len(feats) != len(layer.data):
        return []
    return feats["id"].astype(object).where(feats["id"].notna(), "").astype(str).tolist()


class SpotsWidget(QWidget):
    """Draw spots on a slide and see their predicted expression (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._hooked: dict[Hashable, _Hooked] = {}
        self._exprs: dict[str, SpotExpression] = {}
        self._stats: dict[str, SlideStats | None] = {}  # map path → stats (None: computing)
        self._busy = 0
        self._add_mode = False
        self._dirty: set[str] = set()  # slide keys with unsaved changes
        self._next_id: dict[str, int] = {}  # slide key → next spot number
        self._deleted: dict[str, set[str]] = {}  # slide key → ids the user deleted
        self._slide_paths: dict[str, Path] = {}
        self._reference: tuple[Hashable, list[str]] | None = None  # (layer key, spot ids)
        self._save_error: str | None = None
        self._last_update = 0.0
        self._generation = 0
        self.last_spots: pd.DataFrame = spot_table.empty_spots()  # what the table shows
        self.last_values: np.ndarray | None = None
        self.last_table: pd.DataFrame | None = None  # the comparison, in gene order
        self._ranked = True  # whether the table is sorted by the chosen ranking
        self._units: dict[str, str] = {}
        self._current_spots: dict[str, Hashable] = {}  # slide name → last active spots layer

        self._build_ui()
        _common.keep_dock_title_short(self, "Spots")

        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self.update_table)
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.timeout.connect(self.flush_saves)

        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.selection.events.active.connect(self._on_active)
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
        self.new_layer_button = QPushButton("New layer")
        self.new_layer_button.setToolTip(
            "A new drawn-spots layer on the slide: a second group of spots to compare"
        )
        self.new_layer_button.clicked.connect(self.new_spots_layer)
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

        self.rank_combo = QComboBox()
        self.rank_combo.addItems(list(RANK_CHOICES))
        self.rank_combo.setToolTip(
            "Δ: mean of the spots minus the reference's mean (log1p values: a natural-log "
            "fold change). z: Δ divided by the gene's SD across the slide's tissue."
        )
        self.rank_combo.currentIndexChanged.connect(self._on_rank_changed)
        self.ref_combo = QComboBox()
        self.ref_combo.setToolTip(
            "What the spots are compared with: the slide's tissue, another drawn-spots "
            "layer, or a group stored with 'Use as reference'"
        )
        self.ref_combo.currentIndexChanged.connect(lambda *_: self.poke())
        self.ref_button = QPushButton("Use as reference")
        self.ref_button.setToolTip(
            "Store the spots the table shows now (the selection) as the reference group"
        )
        self.ref_button.clicked.connect(self.store_reference)

        self.selection_label = QLabel()
        self.selection_label.setWordWrap(True)
        self.model = GeneTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        v_header, h_header = self.table.verticalHeader(), self.table.horizontalHeader()
        assert v_header is not None and h_header is not None  # a QTableView has both
        v_header.setVisible(False)
        # gene names in full; the numbers share the rest (headers are short, units below)
        h_header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        h_header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.units_label = QLabel()
        self.units_label.setWordWrap(True)
        self.table.sortByColumn(self.model.column("delta"), Qt.SortOrder.DescendingOrder)
        self.bars = BarPlot(self)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        size_row = QHBoxLayout()
        size_row.addWidget(self.preset_combo)
        size_row.addWidget(self.custom_spin)
        form.addRow("Diameter", size_row)
        draw_row = QHBoxLayout()
        for b in (self.add_button, self.select_button, self.new_layer_button):
            draw_row.addWidget(b)
        grid_box = QGroupBox("Grid")
        grid_form = QFormLayout(grid_box)
        grid_form.addRow("Lattice", self.lattice_combo)
        grid_form.addRow("Pitch", self.pitch_spin)
        grid_row = QHBoxLayout()
        grid_row.addWidget(self.region_button)
        grid_row.addWidget(self.fill_button)
        grid_form.addRow(grid_row)
        compare_box = QGroupBox("Compare")
        compare_form = QFormLayout(compare_box)
        compare_form.addRow("Rank by", self.rank_combo)
        ref_row = QHBoxLayout()
        ref_row.addWidget(self.ref_combo, stretch=1)
        ref_row.addWidget(self.ref_button)
        compare_form.addRow("Reference", ref_row)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addLayout(draw_row)
        layout.addWidget(self.apply_button)
        layout.addWidget(grid_box)
        layout.addWidget(compare_box)
        layout.addWidget(self.selection_label)
        layout.addWidget(self.table, stretch=1)
        layout.addWidget(self.units_label)
        layout.addWidget(self.bars)
        self._refresh_references()

    # ------------------------------------------------------------------ slides
    def current_slide(self) -> Any | None:
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
        if self._save_error:
            parts.append(f"⚠ Spots NOT saved: {self._save_error}.")
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
            self._stats.pop(str(path), None)
            self._units.pop(str(path), None)
        if layer is self.current_slide():
            self._update_status()
            self.poke()

    # ------------------------------------------------------------------ layers
    def spots_layer(self, *, create: bool = False) -> Any | None:
        """The current slide's drawn-spots layer: the active one, else the one last active
        (drawing a grid region activates the region layer), else the first; made empty on
        demand with ``create``."""
        slide = self.current_slide()
        if slide is None:
            return None
        layers = _spot_layer.spot_layers(self.viewer, slide)
        if layers:
            active = self.viewer.layers.selection.active
            wanted = [layer_key(active)] if active is not None else []
            wanted.append(self._current_spots.get(slide.name))
            for key in wanted:
                for layer in layers:
                    if layer_key(layer) == key:
                        self._current_spots[slide.name] = key
                        return layer
            return layers[0]
        if not create:
            return None
        return self._add_spots_layer(slide, spot_table.empty_spots())

    def new_spots_layer(self) -> Any | None:
        """Add an empty drawn-spots layer to the current slide and make it active."""
        slide = self.current_slide()
        if slide is None:
            _common.notify_error("Open a slide first: spots are drawn on a slide layer.")
            return None
        names = {layer.name for layer in self.viewer.layers}
        n = 2
        while f"{slide.name} spots {n}" in names:
            n += 1
        layer = self._add_spots_layer(
            slide, spot_table.empty_spots(), name=f"{slide.name} spots {n}"
        )
        self.viewer.layers.selection.active = layer
        self._current_spots[slide.name] = layer_key(layer)
        return layer

    def _add_spots_layer(self, slide: Any, spots: pd.DataFrame, name: str | None = None) -> Any:
        data, kwargs, _ = _spot_layer.spots_layer_data(
            spots, slide_name=slide.name, mpp=self._mpp(slide), name=name
        )
        layer = self.viewer.add_shapes(data, **kwargs)
        self._hook(layer)
        return layer

    def _restore(self, slide: Any) -> None:
        """Bring back the slide's saved spots (one layer per saved layer name) when it has no
        drawn-spots layer yet."""
        path = _common.slide_path(slide)
        if path is None or _spot_layer.spot_layers(self.viewer, slide):
            return
        try:
            spots = project.load_spots(path)
        except InputFileError as exc:
            _common.notify_error(exc)
            return
        if not len(spots):
            return
        default = f"{slide.name} spots"
        names = (
            spots["layer"].astype(object).where(spots["layer"].notna(), default).astype(str)
            if "layer" in spots
            else pd.Series([default] * len(spots))
        )
        for name in dict.fromkeys(names.tolist()):
            part = spots[(names == name).to_numpy()].reset_index(drop=True)
            self._add_spots_layer(slide, part[list(spot_table.SPOT_COLUMNS)], name=name)

    def _slide_of(self, layer: Any) -> Any | None:
        name = layer.metadata.get("slide")
        for slide in _common.slide_layers(self.viewer):
            if slide.name == name:
                return slide
        return None

    def _slide_infos(self, slide_key: str) -> list[_Hooked]:
        return [info for info in self._hooked.values() if info.slide_key == slide_key]

    def _hook(self, layer: Any) -> None:
        key = layer_key(layer)
        if key in self._hooked:
            return
        slide = self._slide_of(layer)
        path = _common.slide_path(slide) if slide is not None else None
        slide_key = str(path) if path is not None else f"name:{layer.metadata.get('slide')}"
        if path is not None:
            self._slide_paths[slide_key] = path
        if slide_key not in self._next_id:
            self._next_id[slide_key] = self._saved_next_id(path)
        ids = _layer_ids(layer)
        taken = self._ids_elsewhere(slide_key, None)
        info = _Hooked(layer=layer, slide_path=path, slide_key=slide_key)
        info.known = {i for i in ids if i not in taken}
        self._bump(slide_key, ids)
        self._hooked[key] = info
        layer.mouse_drag_callbacks.append(self._on_drag)
        layer.events.data.connect(self._on_data)
        layer.events.features.connect(self._on_features)
        layer.events.mode.connect(self._on_mode)
        layer.events.name.connect(self._on_name)
        layer.selected_data.events.items_changed.connect(self._on_selection)
        self._reset_defaults(layer)
        if self._normalise(layer, None):
            self._mark_dirty(layer)
        self._refresh_references()

    def _unhook(self, layer: Any) -> None:
        if self._hooked.pop(layer_key(layer), None) is None:
            return
        with contextlib.suppress(ValueError):
            layer.mouse_drag_callbacks.remove(self._on_drag)
        for emitter, cb in (
            (layer.events.data, self._on_data),
            (layer.events.features, self._on_features),
            (layer.events.mode, self._on_mode),
            (layer.events.name, self._on_name),
            (layer.selected_data.events.items_changed, self._on_selection),
        ):
            with contextlib.suppress(Exception):
                emitter.disconnect(cb)
        self._refresh_references()

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
        info = self._hooked.get(layer_key(layer))
        if info is not None:
            if info.slide_key in self._dirty:
                self._save(info.slide_key)
            self._unhook(layer)
            self.poke()
        if _common.is_slide_layer(layer):
            self._refresh_slides()

    def _on_active(self, *_: Any) -> None:
        if _common.alive(self):
            self._refresh_references()
            self.poke()

    def _on_name(self, event: Any) -> None:
        info = self._hooked.get(layer_key(event.source))
        if info is not None:
            self._mark_dirty(info.layer)  # the saved table names the layer
        self._refresh_references()

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

    @staticmethod
    def _saved_next_id(path: Path | None) -> int:
        """One above the highest ``spot_<n>`` of the slide's saved table (0 without one)."""
        if path is None:
            return 0
        try:
            saved = project.load_spots(path)
        except InputFileError:
            return 0
        return max((_id_number(i) for i in saved["id"]), default=-1) + 1

    def _bump(self, slide_key: str, ids: list[str]) -> None:
        top = max((_id_number(i) for i in ids), default=-1) + 1
        self._next_id[slide_key] = max(self._next_id.get(slide_key, 0), top)

    def _ids_elsewhere(self, slide_key: str, layer: Any | None) -> set[str]:
        """Ids held by the slide's other drawn-spots layers."""
        key = None if layer is None else layer_key(layer)
        out: set[str] = set()
        for k, info in self._hooked.items():
            if info.slide_key == slide_key and k != key:
                out.update(_layer_ids(info.layer))
        return out

    def _new_ids(self, slide_key: str, taken: set[str]) -> Iterator[str]:
        """Fresh ids of a slide: never given before, not in ``taken``."""
        for _ in itertools.count():
            n = self._next_id.get(slide_key, 0)
            self._next_id[slide_key] = n + 1
            spot_id = f"spot_{n}"
            if spot_id not in taken:
                yield spot_id

    def _normalise(self, layer: Any, indices: list[int] | None) -> bool:
        """Give new shapes unique ids (source ``drawn``) and snap shapes to circles; returns
        whether any id or source changed."""
        info = self._hooked.get(layer_key(layer))
        if info is None:
            return False
        n = len(layer.data)
        feats = layer.features
        ids = _layer_ids(layer) or [""] * n
        sources = (
            feats["source"].astype(object).where(feats["source"].notna(), "").astype(str).tolist()
            if "source" in feats and len(feats) == n
            else ["drawn"] * n
        )
        elsewhere = self._ids_elsewhere(info.slide_key, layer)
        taken = elsewhere | set(ids)
        seen: set[str] = set()
        new_ids = self._new_ids(info.slide_key, taken)
        changed = False
        for i, spot_id in enumerate(ids):
            if (
                spot_id in ("", "nan", "None")
                or spot_id in seen
                or spot_id in elsewhere
                or spot_id not in info.known
            ):
                ids[i] = next(new_ids)
                sources[i] = "drawn"
                changed = True
            elif sources[i] not in ("drawn", "grid"):
                sources[i] = "drawn"
                changed = True
            seen.add(ids[i])
        gone = info.known - seen
        if gone:  # deleted by the user: dropped from the saved table too
            self._deleted.setdefault(info.slide_key, set()).update(gone)
        with self._guard():
            if changed or "id" not in feats or len(feats) != n:
                layer.features = pd.DataFrame({"id": ids, "source": sources})
                self._reset_defaults(layer)
            info.known = seen
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
        return changed

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
        # napari's own vertex tools edit one shape this way (no public per-shape setter); a
        # plugin's proxy of the layer would warn on the private attribute, so unwrap it
        layer = _spot_layer.unwrap(layer)
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

    def _on_features(self, event: Any) -> None:
        """napari's copy/paste adds shapes with copied features and says so only with a
        ``features`` event (no ``data`` event): new ids, and save."""
        if self._busy:
            return
        layer = event.source
        info = self._hooked.get(layer_key(layer))
        if info is None:
            return
        n_before = len(info.known)
        if self._normalise(layer, []) or len(layer.data) != n_before:
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
        info = self._hooked.get(layer_key(layer))
        if info is None:
            self._hook(layer)
            info = self._hooked[layer_key(layer)]
        mpp = _spot_layer.layer_mpp(layer)
        data = [
            _spot_layer.circle_corners(x, y, d, mpp)
            for x, y, d in spots[["x_um", "y_um", "diameter_um"]].to_numpy(float)
        ]
        if not data:
            return []
        with self._guard():
            n0 = len(layer.data)
            prev_ids = _layer_ids(layer)
            feats = layer.features
            prev_src = (
                feats["source"].astype(str).tolist()
                if "source" in feats and len(feats) == n0
                else ["drawn"] * n0
            )
            if len(prev_ids) != n0:
                prev_ids = [""] * n0
            gen = self._new_ids(info.slide_key, self._ids_elsewhere(info.slide_key, None))
            ids = [next(gen) for _ in data]
            layer.add(
                data,
                shape_type="ellipse",
                edge_width=[
                    _spot_layer.edge_width_px(d, mpp) for d in spots["diameter_um"].to_numpy(float)
                ],
                edge_color="#00e5ff" if source == "drawn" else "#ffd400",
                face_color="transparent",
            )
            layer.features = pd.DataFrame(
                {"id": prev_ids + ids, "source": prev_src + [source] * len(ids)}
            )
            self._reset_defaults(layer)
            info.known.update(ids)
        if "" in prev_ids:  # features were out of step with the shapes: repair them
            self._normalise(layer, [])
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
            isinstance(_spot_layer.unwrap(active), napari.layers.Shapes)
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
        info = self._hooked.get(layer_key(layer))
        if info is None:
            return
        self._dirty.add(info.slide_key)
        self._save_timer.start(SAVE_DELAY_MS)

    def flush_saves(self) -> None:
        """Write every changed slide's spots to its project now."""
        for slide_key in list(self._dirty):
            self._save(slide_key)

    def slide_spots(self, slide_key: str) -> pd.DataFrame:
        """The spots of all the slide's open drawn-spots layers, with a ``layer`` column."""
        tables = [
            _spot_layer.spots_table(info.layer).assign(layer=str(info.layer.name))
            for info in self._slide_infos(slide_key)
        ]
        tables = [t for t in tables if len(t)]
        if not tables:
            return spot_table.empty_spots().assign(layer=pd.Series(dtype=str))
        return pd.concat(tables, ignore_index=True)

    def _save(self, slide_key: str) -> None:
        """Save the slide's spots: its open layers', plus the saved rows of layers no longer
        open that the user did not delete (see the module docstring)."""
        self._dirty.discard(slide_key)
        path = self._slide_paths.get(slide_key)
        if path is None:
            return
        try:
            live = self.slide_spots(slide_key)
            try:
                saved = project.load_spots(path)
            except InputFileError as exc:
                kept = project.set_aside_spots(path)
                _common.notify_error(
                    f"{exc}; it was kept as {kept} and a new table was written"
                    if kept is not None
                    else str(exc)
                )
                saved = spot_table.empty_spots()
            deleted = self._deleted.get(slide_key, set())
            detached = saved[~saved["id"].isin(set(live["id"]) | deleted)]
            table = pd.concat([live, detached], ignore_index=True) if len(detached) else live
            project.save_spots(path, table)
        except (InputFileError, OSError, ValueError) as exc:
            self._save_error = f"{exc}"
            _common.notify_error(f"Cannot save the spots of {path} ({exc}); they are kept open")
            self._dirty.add(slide_key)  # retried on the next change
        else:
            if self._save_error is not None:
                self._save_error = None
        self._update_status()

    # ------------------------------------------------------------------ comparison
    def _on_rank_changed(self, *_: Any) -> None:
        key = RANK_CHOICES[self.rank_combo.currentText()]
        self._ranked = True
        self.table.sortByColumn(self.model.column(key), Qt.SortOrder.DescendingOrder)
        self.poke()

    @property
    def ranking(self) -> str:
        """The ranking key (``delta``, ``z`` or ``mean``)."""
        return RANK_CHOICES[self.rank_combo.currentText()]

    def _reference_layers(self) -> list[Any]:
        """The current slide's drawn-spots layers other than the table's."""
        slide = self.current_slide()
        if slide is None:
            return []
        current = self.spots_layer()
        key = None if current is None else layer_key(current)
        return [lay for lay in _spot_layer.spot_layers(self.viewer, slide) if layer_key(lay) != key]

    def _refresh_references(self) -> None:
        """Re-list the reference choices, keeping the current one when it still exists."""
        if not hasattr(self, "ref_combo"):
            return
        current = self.ref_combo.currentText()
        items = [REF_SLIDE]
        if self._reference is not None:
            items.append(f"{REF_GROUP} ({len(self._reference[1])} spots)")
        items += [f"Layer: {lay.name}" for lay in self._reference_layers()]
        if [self.ref_combo.itemText(i) for i in range(self.ref_combo.count())] == items:
            return
        self.ref_combo.blockSignals(True)
        self.ref_combo.clear()
        self.ref_combo.addItems(items)
        if current in items:
            self.ref_combo.setCurrentText(current)
        elif current.startswith(REF_GROUP) and len(items) > 1 and items[1].startswith(REF_GROUP):
            self.ref_combo.setCurrentIndex(1)
        self.ref_combo.blockSignals(False)

    def store_reference(self) -> None:
        """Store the spots the table shows now as the reference group and compare with it."""
        layer = self.spots_layer()
        spots = self.shown_spots(layer)
        if layer is None or not len(spots):
            _common.notify_info("Select the spots of the reference group first.")
            return
        self._reference = (layer_key(layer), spots["id"].astype(str).tolist())
        self._refresh_references()
        self.ref_combo.setCurrentIndex(1)
        self.poke()

    def reference_spots(self) -> pd.DataFrame | None:
        """The reference group's spots (current geometry), ``None`` for the slide."""
        text = self.ref_combo.currentText()
        if text.startswith(REF_GROUP) and self._reference is not None:
            key, ids = self._reference
            info = self._hooked.get(key)
            if info is None:
                return spot_table.empty_spots()
            table = _spot_layer.spots_table(info.layer)
            return table[table["id"].isin(set(ids))].reset_index(drop=True)
        if text.startswith("Layer: "):
            name = text[len("Layer: ") :]
            for lay in self._reference_layers():
                if lay.name == name:
                    return _spot_layer.spots_table(lay)
            return spot_table.empty_spots()
        return None

    def slide_stats(self) -> SlideStats | None:
        """The current map's slide statistics (``None`` until computed); starts them."""
        slide = self.current_slide()
        store = _common.slide_map(slide) if slide is not None else None
        if store is None:
            return None
        key = str(store.path)
        if key not in self._stats:
            self._stats[key] = None
            self._compute_stats(store, key)
        return self._stats[key]

    def _compute_stats(self, store: Any, key: str) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(slide_stats, store)

        def done(stats: SlideStats) -> None:
            self._stats[key] = stats
            if _common.alive(self):
                self.poke()

        def failed(exc: BaseException) -> None:
            self._stats.pop(key, None)
            _common.notify_error(exc)

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()

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
            return spot_table.empty_spots()
        table = _spot_layer.spots_table(layer)
        sel = sorted(int(i) for i in layer.selected_data if 0 <= int(i) < len(table))
        return table.iloc[sel].reset_index(drop=True) if sel else table

    def update_table(self) -> None:
        """Recompute the table and bar plot now (called through :meth:`poke`)."""
        if not _common.alive(self):
            return
        self._last_update = time.perf_counter()
        self._generation += 1
        self._refresh_references()
        layer = self.spots_layer()
        slide = self.current_slide()
        spots = self.shown_spots(layer)
        self.last_spots = spots
        n_all = len(layer.data) if layer is not None else 0
        name = f" of {layer.name}" if layer is not None else ""
        if n_all == 0:
            self.selection_label.setText("No spots yet: click 'Add spots', then the slide.")
        elif len(spots) < n_all:
            self.selection_label.setText(f"{len(spots)} selected of {n_all} spots{name}")
        else:
            self.selection_label.setText(f"All {n_all} spots{name} (none selected)")
        try:
            expr = self._expression(slide) if slide is not None else None
        except InputFileError as exc:
            expr = None
            self.selection_label.setText(f"{self.selection_label.text()}: {exc}")
        if expr is None or len(spots) == 0:
            if expr is None and slide is not None:
                self.selection_label.setText(f"{self.selection_label.text()} — no map")
            self._show([], np.zeros(0), None)
            return
        ref = self.reference_spots()
        stats = self.slide_stats()
        pending = expr.pending(spots) + (expr.pending(ref) if ref is not None else 0)
        if pending > SYNC_LIMIT:
            self._compute_in_worker(expr, spots, ref, stats, self._generation)
            return
        a = expr.aggregate(spots)
        b = expr.aggregate(ref) if ref is not None else None
        self._show(expr.genes, a, self._comparison(expr.genes, a, b, ref, stats))

    def _comparison(
        self,
        genes: list[str],
        a: np.ndarray,
        b: np.ndarray | None,
        ref: pd.DataFrame | None,
        stats: SlideStats | None,
    ) -> pd.DataFrame:
        sd = stats.sd if stats is not None and stats.genes == list(genes) else None
        if ref is None:
            mean_ref = (
                stats.mean
                if stats is not None and stats.genes == list(genes)
                else np.full(len(genes), np.nan)
            )
        else:
            mean_ref = b if b is not None else np.full(len(genes), np.nan)
        return compare_groups(list(genes), a, mean_ref, sd)

    def _compute_in_worker(
        self,
        expr: SpotExpression,
        spots: pd.DataFrame,
        ref: pd.DataFrame | None,
        stats: SlideStats | None,
        gen: int,
    ) -> None:
        from napari.qt.threading import create_worker

        self.selection_label.setText(f"{self.selection_label.text()} (computing…)")

        def both() -> tuple[np.ndarray, np.ndarray | None]:
            return expr.aggregate(spots), (expr.aggregate(ref) if ref is not None else None)

        worker = create_worker(both)

        def done(result: tuple[np.ndarray, np.ndarray | None]) -> None:
            if gen == self._generation and _common.alive(self):
                self.selection_label.setText(
                    self.selection_label.text().replace(" (computing…)", "")
                )
                a, b = result
                self._show(expr.genes, a, self._comparison(expr.genes, a, b, ref, stats))

        worker.returned.connect(done)
        worker.errored.connect(_common.notify_error)
        worker.start()

    def _headers(self, unit: str) -> list[str]:
        """The table's short column titles; their units go in the line under the table."""
        ref = self.ref_combo.currentText()
        if ref == REF_SLIDE:
            ref_name, vs = "slide mean", "vs slide"
        elif ref.startswith(REF_GROUP):
            ref_name, vs = "reference mean", "vs reference"
        else:
            ref_name, vs = f"{ref[len('Layer: ') :]} mean", "vs layer"
        self.units_label.setText(
            f"mean, {ref_name}: {unit}. Δ {vs}: mean − {ref_name} (a natural-log fold "
            "change). z: Δ in units of the gene's SD across the slide's tissue (slide SDs)."
        )
        return ["gene", "mean", ref_name, f"Δ {vs}", "z"]

    def _unit(self) -> str:
        slide = self.current_slide()
        store = _common.slide_map(slide) if slide is not None else None
        if store is None:
            return "log1p counts per 10k"
        key = str(store.path)
        if key not in self._units:  # reads the run's config: once per map
            from ..inference.expression_units import expression_unit
            from ..inference.measured_vs_predicted import model_target_sum

            self._units[key] = expression_unit(model_target_sum(store)[0])
        return self._units[key]

    def _show(self, genes: list[str], values: np.ndarray, table: pd.DataFrame | None) -> None:
        self.last_values = np.asarray(values) if len(genes) else None
        self.last_table = table
        self.model.set_headers(self._headers(self._unit()))
        if table is None:
            table = (
                compare_groups(list(genes), values, np.full(len(genes), np.nan), None)
                if len(genes)
                else compare_groups([], np.zeros(0), np.zeros(0), None)
            )
        by = self.ranking
        ready = bool(np.isfinite(table[by].to_numpy(float)).any()) if len(table) else True
        if by != "mean" and not ready:
            # no reference values yet (slide statistics computing, an empty group)
            by = "mean"
            self.selection_label.setText(
                self.selection_label.text() + " — ranked by mean until the reference is ready"
            )
        if ready != self._ranked:  # sort by the ranking again once it has values
            self._ranked = ready
            self.table.sortByColumn(self.model.column(by), Qt.SortOrder.DescendingOrder)
        self.model.set_table(table)
        top = rank(table, by)
        self.bars.set_values(top["gene"].tolist(), top[by].to_numpy(dtype=float))

    def table_rows(self) -> list[tuple[str, float]]:
        """The table's ``(gene, mean)`` rows in display order."""
        return self.model.rows()

    def table_records(self) -> pd.DataFrame:
        """The whole table (gene, mean, ref_mean, delta, z) in display order."""
        return self.model.records()
