"""The Zero-shot dock widget: predict a gene the model never trained on from its description.

Thin: the gene bank is the gene-knowledge description table
(:func:`napari_histoexpress.models.gene_knowledge.descriptions.load_descriptions`), the new
gene's head column is :func:`napari_histoexpress.inference.zero_shot_map.add_zero_shot_genes`
(run in a worker thread: the text encoder and the model's text stream take a few seconds),
its heatmap :func:`napari_histoexpress._layers.gene_heatmap_layer_data`, its PCC against the
measured spots :mod:`napari_histoexpress.inference.measured_vs_predicted`. The map's other
widgets learn about the new gene through :data:`._common.hub` (the Genes widget lists it,
marked zero-shot; the Spots table and exports carry it like any gene).

A gene needs a symbol (the map's name for it) and a description: typed, or the gene bank's
for that symbol when the box is left empty; a description without a symbol gets the name
``zero-shot-N``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..inference import measured_vs_predicted as mvp
from . import _common, _spot_layer

SYMBOL_ROLE = Qt.ItemDataRole.UserRole
#: gene-bank rows listed at most (the first matches)
BANK_ROWS = 200


class ZeroShotWidget(QWidget):
    """Type a symbol and/or a description, or pick one from the gene bank, and see the gene's
    predicted heatmap on a map made by a zero-shot model."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._store: Any | None = None
        self._worker: Any | None = None
        self._bank: Any | None = None
        self._models: dict[tuple[str, float], tuple[Any, dict[str, Any]]] = {}
        #: the last gene added, its heatmap layer and its PCC against measured spots
        self.last_gene: str | None = None
        self.last_layer: Any | None = None
        self.last_pcc: float | None = None

        self.slide_combo = _common.SlideCombo(self.viewer, require_map=True)
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("the zero-shot run folder that predicted the map")
        self.bank_filter = QLineEdit()
        self.bank_filter.setPlaceholderText("Search the gene bank: symbol or words (mucin)")
        self.bank_filter.setClearButtonEnabled(True)
        self.bank_list = QListWidget()
        self.symbol_edit = QLineEdit()
        self.symbol_edit.setPlaceholderText("gene symbol, e.g. MUCL1")
        self.description_edit = QPlainTextEdit()
        self.description_edit.setPlaceholderText(
            "Description (empty: the gene bank's description of the symbol)"
        )
        self.description_edit.setFixedHeight(90)
        self.add_button = QPushButton("Predict zero-shot gene")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.pcc_label = QLabel()
        self.pcc_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Run", self.run_edit)
        form.addRow("Symbol", self.symbol_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Description"))
        layout.addWidget(self.description_edit)
        layout.addWidget(self.add_button)
        layout.addWidget(self.status)
        layout.addWidget(self.pcc_label)
        layout.addWidget(self.bank_filter)
        layout.addWidget(self.bank_list, stretch=1)

        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        self.bank_filter.textChanged.connect(self.search_bank)
        self.bank_list.itemClicked.connect(self._on_bank_item)
        self.add_button.clicked.connect(self.add_gene)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        _common.hub.map_changed.connect(self._on_map_changed)
        _common.keep_dock_title_short(self, "Zero-shot")
        self.slide_combo.refresh()
        self._on_slide_changed()

    # ------------------------------------------------------------------ slide and run
    @property
    def slide_layer(self) -> Any | None:
        return self.slide_combo.current_layer()

    @property
    def store(self) -> Any | None:
        return self._store

    def _on_layers_changed(self, event: Any = None) -> None:
        if _common.alive(self) and self.slide_combo.refresh():
            self._on_slide_changed()

    def _on_map_changed(self, layer: Any) -> None:
        if not _common.alive(self):
            return
        if self.slide_combo.refresh() or layer is self.slide_layer:
            self._on_slide_changed()

    def _on_slide_changed(self, *_: Any) -> None:
        layer = self.slide_layer
        self._store = _common.slide_map(layer) if layer is not None else None
        if self._store is None:
            self.status.setText(
                "No slide with a predicted map: predict one with a zero-shot model (ALIGN-ST) "
                "in the Predict widget."
            )
            return
        run = self._store.provenance.get("run_dir")
        if run and not self.run_edit.text().strip():
            self.run_edit.setText(str(run))
        model = self._store.provenance.get("model")
        self.status.setText(f"Map {self._store.path.name} (model {model}). {self._hint()}")

    @staticmethod
    def _hint() -> str:
        return "Type a symbol and/or a description, or pick a gene from the bank below."

    # ------------------------------------------------------------------ gene bank
    def bank(self) -> Any:
        """The description table (loaded on first use)."""
        if self._bank is None:
            from ..models.gene_knowledge.descriptions import load_descriptions

            self._bank = load_descriptions()
        return self._bank

    def search_bank(self, text: str = "") -> list[str]:
        """List the gene bank's genes whose symbol starts with ``text`` (first) or whose
        name or description holds it (case-insensitive); returns the symbols listed."""
        self.bank_list.clear()
        query = text.strip().lower()
        if not query:
            return []
        rows = list(self.bank())
        first = [r for r in rows if r.symbol.lower().startswith(query)]
        rest = [
            r
            for r in rows
            if r not in first and (query in r.name.lower() or query in r.description.lower())
        ]
        listed = []
        for row in (first + rest)[:BANK_ROWS]:
            item = QListWidgetItem(f"{row.symbol} — {row.name}" if row.name else row.symbol)
            item.setData(SYMBOL_ROLE, row.symbol)
            item.setToolTip(row.description)
            self.bank_list.addItem(item)
            listed.append(row.symbol)
        return listed

    def _on_bank_item(self, item: QListWidgetItem) -> None:
        symbol = str(item.data(SYMBOL_ROLE))
        self.symbol_edit.setText(symbol)
        entry = self.bank().get(symbol)
        self.description_edit.setPlainText(entry.description if entry is not None else "")

    # ------------------------------------------------------------------ adding a gene
    def _symbol(self) -> str:
        symbol = self.symbol_edit.text().strip()
        if symbol:
            return symbol
        genes = set(self._store.genes) if self._store is not None else set()
        n = 1
        while f"zero-shot-{n}" in genes:
            n += 1
        return f"zero-shot-{n}"

    def _model(self, run: Path) -> tuple[Any, dict[str, Any]]:
        """The run's zero-shot model, loaded once per run folder (and its config's mtime)."""
        from ..inference.zero_shot_map import zero_shot_model

        key = (str(run.resolve()), (run / "config.json").stat().st_mtime)
        if key not in self._models:
            self._models[key] = zero_shot_model(run)
        return self._models[key]

    def add_gene(self) -> Any | None:
        """Start predicting the typed gene (a worker thread); returns the worker."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            self.status.setText("Still predicting the last gene…")
            return None
        if self._store is None:
            _common.notify_error("No map to add a gene to: choose a slide with a predicted map.")
            return None
        text = self.description_edit.toPlainText().strip()
        symbol = self._symbol()
        if not self.symbol_edit.text().strip() and not text:
            _common.notify_error("Type a gene symbol or a description first.")
            return None
        run_text = self.run_edit.text().strip()
        if not run_text:
            _common.notify_error("Choose the run that predicted the map (Run).")
            return None
        run = Path(run_text).expanduser()
        store, slide = self._store, self.slide_layer
        spots = _spot_layer.measured_spots_for(self.viewer, slide)
        adata = None if spots is None else spots.metadata["adata"]
        library = None if spots is None else spots.metadata.get("library_id")
        descriptions = {symbol: text} if text else None

        def job() -> tuple[str, Any]:
            from ..inference.zero_shot_map import add_zero_shot_genes

            model, meta = self._model(run)
            add_zero_shot_genes(
                store.path,
                run,
                [symbol],
                descriptions=descriptions,
                replace=symbol in store.genes,
                model=model,
                meta=meta,
            )
            comparison = None
            if adata is not None and symbol in set(map(str, adata.var_names)):
                comparison = mvp.cached_compare(store, adata, library_id=library)
            return symbol, comparison

        self.add_button.setEnabled(False)
        self.status.setText(f"Predicting {symbol} from its description…")
        # errors are this widget's to report (a toast naming the problem), not napari's
        worker = thread_worker(job, start_thread=False, ignore_errors=True)()
        self._worker = worker
        worker.returned.connect(lambda out: self._added(store, slide, *out))
        worker.errored.connect(lambda exc: self._failed(symbol, exc, store))
        worker.finished.connect(self._finished)
        worker.start()
        return worker

    def _added(self, store: Any, slide: Any, symbol: str, comparison: Any) -> None:
        if not _common.alive(self):
            return
        self.last_gene = symbol
        _common.hub.map_changed.emit(slide)  # the Genes widget lists the gene
        self.last_layer = self._show(store, symbol)
        self.last_pcc = None
        if comparison is not None:
            r = comparison.pcc_of(symbol)
            self.last_pcc = r
            value = f"{r:.3f}" if math.isfinite(r) else "undefined (constant values)"
            n = f"{comparison.n_spots_used} of {comparison.n_spots_total} spots"
            self.pcc_label.setText(f"PCC {symbol} measured vs zero-shot ({n}): {value}")
        else:
            self.pcc_label.setText(f"{symbol} is not measured on this slide: no PCC.")
        self.status.setText(
            f"{symbol} added to {Path(store.path).name} (zero-shot): shown as a heatmap, "
            "listed in Genes, in the Spots table and in exports."
        )

    def _show(self, store: Any, gene: str) -> Any | None:
        from napari.layers import Layer

        for layer in self.viewer.layers:
            if _common.is_heatmap_layer(layer, store.path) and layer.metadata.get("gene") == gene:
                self.viewer.layers.remove(layer)  # a recomputed column: draw it again
                break
        try:
            data, kwargs, kind = _layers.gene_heatmap_layer_data(store, gene)
            layer = _common.add_below_annotations(self.viewer, Layer.create(data, kwargs, kind))
        except Exception as exc:
            _common.notify_error(
                _common.problem_first(f"cannot show {gene}: {_common.describe(exc)}", store.path)
            )
            return None
        self.viewer.layers.selection.active = layer
        return layer

    def _failed(self, symbol: str, exc: BaseException, store: Any) -> None:
        _common.notify_error(
            _common.problem_first(f"cannot predict {symbol}: {_common.describe(exc)}", store.path)
        )
        if _common.alive(self):
            self.status.setText(f"{symbol}: not added ({_common.describe(exc)}).")

    def _finished(self) -> None:
        self._worker = None
        if _common.alive(self):
            self.add_button.setEnabled(True)
