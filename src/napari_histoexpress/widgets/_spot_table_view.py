"""The Spots widget's live table: the spots' expression against a reference, and a bar plot.

For the selected spots of the active spots layer — a drawn-spots layer or a bins layer
(:mod:`._spot_layer`; all its spots when none is selected) — every gene's mean of each
spot's circle mean, compared with a **reference**: the slide's tissue (default) or another
group of spots (another spots layer, or a selection stored with *Use as reference*).
Columns: mean, reference mean, Δ (a log fold change: difference of log1p means) and z
(Δ in slide SDs); their units are in the line under the table
(:mod:`napari_histoexpress.inference.spot_compare`,
:mod:`napari_histoexpress.inference.spot_compare_table`). Ranked by Δ by default (*Rank
by*: Δ, z or the plain mean); every column sorts. The slide statistics are computed once
per map in a worker thread; until then the table ranks by the mean.

It follows a drag live: :meth:`SpotTableView.poke` asks for an update, run at most once per
:data:`LIVE_INTERVAL_S`, which reads the shapes' current vertices.
:class:`~napari_histoexpress.inference.live_spots.SpotExpression` keeps chunks and per-spot
results cached, so only moved spots are recomputed; a selection needing more than
:data:`SYNC_LIMIT` new circles, or of more than :data:`WORKER_MIN_SPOTS` spots (the
cache lookup of 100,000 bins is itself too slow for the GUI thread), is computed in a
worker thread, one at a time (a request made meanwhile runs when it is done). The spots
table of a bins layer is built from the layer's arrays (:func:`._spot_layer.bins_table`),
never point by point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
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

from ..errors import InputFileError
from ..inference.live_spots import SpotExpression
from ..inference.spot_compare import SlideStats, rank, slide_stats
from ..inference.spot_compare_table import comparison_table, plain_table, ranking_ready
from ..io import spot_table
from . import _common, _spot_layer
from ._spot_drawing import layer_key
from ._spots_table import BarPlot, GeneTableModel

#: At most one live table update per this many seconds while a spot is dragged.
LIVE_INTERVAL_S = 0.04
#: Selections needing more new circles than this are computed in a worker thread.
SYNC_LIMIT = 200
#: Queries of more spots than this always go to the worker thread (no cache check here).
WORKER_MIN_SPOTS = 5_000
#: Reference choices of the comparison (besides other layers and a stored group).
REF_SLIDE = "Slide tissue (map mean)"
REF_GROUP = "Stored reference group"
_REF_LAYER = "Layer: "
#: "Rank by" choices → :data:`napari_histoexpress.inference.spot_compare.RANKINGS` keys.
RANK_CHOICES = {
    "Δ vs reference (log fold change)": "delta",
    "z-score (Δ in slide SDs)": "z",
    "Mean expression": "mean",
}
_COMPUTING = " (computing…)"


class SpotTableView(QWidget):
    """The *Compare* box, the gene table, its units line and the bar plot (module docstring).

    ``current_slide`` and ``spots_layer`` give the slide and the drawn-spots layer the table
    shows; ``layer_of`` finds a hooked layer by :func:`~._spot_drawing.layer_key` (the layer
    of a stored reference group).
    """

    def __init__(
        self,
        viewer: Any,
        *,
        current_slide: Callable[[], Any | None],
        spots_layer: Callable[[], Any | None],
        layer_of: Callable[[Hashable], Any | None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._current_slide = current_slide
        self._spots_layer = spots_layer
        self._layer_of = layer_of
        self._exprs: dict[str, SpotExpression] = {}  # map path → its live expression
        self._stats: dict[str, SlideStats | None] = {}  # map path → stats (None: computing)
        self._units: dict[str, str] = {}  # map path → expression unit
        # (layer key, spot ids, their id numbers for a bins layer)
        self._reference: tuple[Hashable, list[str], np.ndarray | None] | None = None
        self._worker_busy = False  # a worker computes a large query now
        self._rerun = False  # an update was asked for meanwhile
        self._last_update = 0.0
        self._generation = 0
        self._ranked = True  # whether the table is sorted by the chosen ranking
        self.last_spots: pd.DataFrame = spot_table.empty_spots()  # what the table shows
        self.last_values: np.ndarray | None = None
        self.last_table: pd.DataFrame | None = None  # the comparison, in gene order
        self._build_ui()
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self.update_table)

    def _build_ui(self) -> None:
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

        compare_box = QGroupBox("Compare")
        compare_form = QFormLayout(compare_box)
        compare_form.addRow("Rank by", self.rank_combo)
        ref_row = QHBoxLayout()
        ref_row.addWidget(self.ref_combo, stretch=1)
        ref_row.addWidget(self.ref_button)
        compare_form.addRow("Reference", ref_row)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(compare_box)
        layout.addWidget(self.selection_label)
        layout.addWidget(self.table, stretch=1)
        layout.addWidget(self.units_label)
        layout.addWidget(self.bars)
        self.refresh_references()

    # ------------------------------------------------------------------ maps
    def expression(self, slide: Any) -> SpotExpression | None:
        """The live expression of the slide's map (``None`` without a map; raises
        :class:`InputFileError` when the map cannot place µm)."""
        store = _common.slide_map(slide)
        if store is None:
            return None
        key = str(store.path)
        if key not in self._exprs:
            self._exprs[key] = SpotExpression(store)
        return self._exprs[key]

    def forget_map(self, path: str) -> None:
        """Drop what was read from the map at ``path`` (it was replaced or finished)."""
        self._exprs.pop(path, None)
        self._stats.pop(path, None)
        self._units.pop(path, None)

    def slide_stats(self) -> SlideStats | None:
        """The current map's slide statistics (``None`` until computed); starts them."""
        slide = self._current_slide()
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

    def _unit(self) -> str:
        slide = self._current_slide()
        store = _common.slide_map(slide) if slide is not None else None
        if store is None:
            return "log1p counts per 10k"
        key = str(store.path)
        if key not in self._units:  # reads the run's config: once per map
            from ..inference.expression_units import expression_unit
            from ..inference.measured_vs_predicted import model_target_sum

            self._units[key] = expression_unit(model_target_sum(store)[0])
        return self._units[key]

    # ------------------------------------------------------------------ reference
    @property
    def ranking(self) -> str:
        """The ranking key (``delta``, ``z`` or ``mean``)."""
        return RANK_CHOICES[self.rank_combo.currentText()]

    def _on_rank_changed(self, *_: Any) -> None:
        self._ranked = True
        self.table.sortByColumn(self.model.column(self.ranking), Qt.SortOrder.DescendingOrder)
        self.poke()

    def _reference_layers(self) -> list[Any]:
        """The current slide's spots layers (drawn and bins) other than the table's."""
        slide = self._current_slide()
        if slide is None:
            return []
        current = self._spots_layer()
        key = None if current is None else layer_key(current)
        layers = _spot_layer.any_spot_layers(self.viewer, slide)
        return [lay for lay in layers if layer_key(lay) != key]

    def refresh_references(self) -> None:
        """Re-list the reference choices, keeping the current one when it still exists."""
        current = self.ref_combo.currentText()
        items = [REF_SLIDE]
        if self._reference is not None:
            items.append(f"{REF_GROUP} ({len(self._reference[1])} spots)")
        items += [f"{_REF_LAYER}{lay.name}" for lay in self._reference_layers()]
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
        layer = self._spots_layer()
        spots = self.shown_spots(layer)
        if layer is None or not len(spots):
            _common.notify_info("Select the spots of the reference group first.")
            return
        numbers = None
        if _spot_layer.is_bins_layer(layer):
            sel = _spot_layer.selected_indices(layer)
            numbers = _spot_layer.bin_numbers(layer)
            numbers = np.sort(numbers[sel] if len(sel) else numbers)
        self._reference = (layer_key(layer), spots["id"].astype(str).tolist(), numbers)
        self.refresh_references()
        self.ref_combo.setCurrentIndex(1)
        self.poke()

    def reference_spots(self) -> pd.DataFrame | None:
        """The reference group's spots (current geometry), ``None`` for the slide."""
        text = self.ref_combo.currentText()
        if text.startswith(REF_GROUP) and self._reference is not None:
            key, ids, numbers = self._reference
            layer = self._layer_of(key)
            if layer is None:
                return spot_table.empty_spots()
            if numbers is not None and _spot_layer.is_bins_layer(layer):
                index = np.flatnonzero(np.isin(_spot_layer.bin_numbers(layer), numbers))
                return _spot_layer.bins_table(layer, index)
            table = _spot_layer.spots_table(layer)
            return table[table["id"].isin(set(ids))].reset_index(drop=True)
        if text.startswith(_REF_LAYER):
            name = text[len(_REF_LAYER) :]
            for lay in self._reference_layers():
                if lay.name == name:
                    return _spot_layer.spots_table(lay)
            return spot_table.empty_spots()
        return None

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
        layer = layer if layer is not None else self._spots_layer()
        if layer is None or len(layer.data) == 0:
            return spot_table.empty_spots()
        sel = _spot_layer.selected_indices(layer)
        if _spot_layer.is_bins_layer(layer):
            return _spot_layer.bins_table(layer, sel if len(sel) else None)
        table = _spot_layer.spots_table(layer)
        return table.iloc[sel].reset_index(drop=True) if len(sel) else table

    def _say(self, text: str) -> None:
        """Append ``text`` to the selection line."""
        self.selection_label.setText(self.selection_label.text() + text)

    def update_table(self) -> None:
        """Recompute the table and bar plot now (called through :meth:`poke`)."""
        if not _common.alive(self):
            return
        self._last_update = time.perf_counter()
        self._generation += 1
        self.refresh_references()
        layer = self._spots_layer()
        slide = self._current_slide()
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
            expr = self.expression(slide) if slide is not None else None
        except InputFileError as exc:
            expr = None
            self._say(f": {exc}")
        if expr is None or len(spots) == 0:
            if expr is None and slide is not None:
                self._say(" — no map")
            self._show([], np.zeros(0), None)
            return
        ref = self.reference_spots()
        stats = self.slide_stats()
        if len(spots) + (len(ref) if ref is not None else 0) > WORKER_MIN_SPOTS:
            self._compute_in_worker(expr, spots, ref, stats, self._generation)
            return
        pending = expr.pending(spots) + (expr.pending(ref) if ref is not None else 0)
        if pending > SYNC_LIMIT:
            self._compute_in_worker(expr, spots, ref, stats, self._generation)
            return
        a = expr.aggregate(spots)
        b = expr.aggregate(ref) if ref is not None else None
        self._show(expr.genes, a, comparison_table(expr.genes, a, stats, b))

    def _compute_in_worker(
        self,
        expr: SpotExpression,
        spots: pd.DataFrame,
        ref: pd.DataFrame | None,
        stats: SlideStats | None,
        gen: int,
    ) -> None:
        from napari.qt.threading import create_worker

        self._say(_COMPUTING)
        if self._worker_busy:  # one at a time: this request runs when the current one ends
            self._rerun = True
            return
        self._worker_busy = True

        def both() -> tuple[np.ndarray, np.ndarray | None]:
            return expr.aggregate(spots), (expr.aggregate(ref) if ref is not None else None)

        worker = create_worker(both)

        def done(result: tuple[np.ndarray, np.ndarray | None]) -> None:
            if gen == self._generation and _common.alive(self):
                self.selection_label.setText(self.selection_label.text().replace(_COMPUTING, ""))
                a, b = result
                self._show(expr.genes, a, comparison_table(expr.genes, a, stats, b))

        def finished() -> None:
            self._worker_busy = False
            if self._rerun and _common.alive(self):
                self._rerun = False
                self.poke()

        worker.returned.connect(done)
        worker.errored.connect(_common.notify_error)
        worker.finished.connect(finished)
        worker.start()

    def _headers(self, unit: str) -> list[str]:
        """The table's short column titles; their units go in the line under the table."""
        ref = self.ref_combo.currentText()
        if ref == REF_SLIDE:
            ref_name, vs = "slide mean", "vs slide"
        elif ref.startswith(REF_GROUP):
            ref_name, vs = "reference mean", "vs reference"
        else:
            ref_name, vs = f"{ref[len(_REF_LAYER) :]} mean", "vs layer"
        self.units_label.setText(
            f"mean, {ref_name}: {unit}. Δ {vs}: mean − {ref_name} (a natural-log fold "
            "change). z: Δ in units of the gene's SD across the slide's tissue (slide SDs)."
        )
        return ["gene", "mean", ref_name, f"Δ {vs}", "z"]

    def _show(self, genes: list[str], values: np.ndarray, table: pd.DataFrame | None) -> None:
        self.last_values = np.asarray(values) if len(genes) else None
        self.last_table = table
        self.model.set_headers(self._headers(self._unit()))
        if table is None:
            table = plain_table(list(genes), values)
        by = self.ranking
        ready = ranking_ready(table, by)
        if by != "mean" and not ready:
            # no reference values yet (slide statistics computing, an empty group)
            by = "mean"
            self._say(" — ranked by mean until the reference is ready")
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
