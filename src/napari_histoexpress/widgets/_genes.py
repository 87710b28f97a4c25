"""The Genes dock widget: search the model's genes, overlay their predicted heatmaps, and
compare them with measured ST spots of the same slide.

Thin: gene search is :mod:`napari_histoexpress.models.gene_aliases`, heatmap layers are
:func:`napari_histoexpress._layers.gene_heatmap_layer_data` (lazy per-tile pyramid; the
click reads only the coarsest level), measured-vs-predicted correlations are
:mod:`napari_histoexpress.inference.measured_vs_predicted` (computed in a worker thread,
cached per map and AnnData).

Display choices: a new heatmap is inserted *below* the user's points/shapes layers
(:func:`._common.add_below_annotations`), so measured or drawn spots stay visible; the
current heatmap (and spots coloured by a gene) show napari's colour-bar overlay, and the
widget's legend line gives what the colours mean and their unit
(:func:`napari_histoexpress.inference.expression_units.expression_unit`: log1p counts per
10k), which the overlay cannot label. Errors lead with the problem and end with the map.
"""

from __future__ import annotations

import math
import time
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from .. import _layers
from ..errors import InputFileError
from ..inference import measured_vs_predicted as mvp
from ..inference.expression_units import expression_unit
from ..models.gene_aliases import aliases_of, search_genes
from . import _common, _spot_layer

#: Colormaps offered for heatmaps (napari names).
COLORMAPS = ("magma", "inferno", "plasma", "viridis", "turbo", "fire", "gray", "red", "green")
GENE_ROLE = Qt.ItemDataRole.UserRole


class GenesWidget(QWidget):
    """Pick a slide with a map, search its genes, click one to overlay its heatmap."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._store: Any | None = None
        self._current: Any | None = None  # last heatmap layer shown / selected
        self._worker: Any | None = None
        self._worker_key: tuple[int, int] | None = None
        self._pending_gene: str | None = None
        self._comparison_key: tuple[int, int] | None = None
        #: the latest :class:`~.measured_vs_predicted.MeasuredVsPredicted` shown
        self.comparison: mvp.MeasuredVsPredicted | None = None
        #: seconds the last click took to create (or select) the heatmap layer
        self.last_click_seconds: float | None = None

        self.slide_combo = _common.SlideCombo(self.viewer, require_map=True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Search genes: symbol or alias (HER2, PD-L1, Ki-67)")
        self.filter_edit.setClearButtonEnabled(True)
        self.gene_list = QListWidget()
        self.colormap_combo = QComboBox()
        self.colormap_combo.addItems(list(COLORMAPS))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(60)
        self.pcc_label = QLabel()
        self.pcc_label.setWordWrap(True)
        self.mean_pcc_label = QLabel()
        self.mean_pcc_label.setWordWrap(True)
        #: what the colours mean, with units (napari's colour bar has no title)
        self.legend_label = QLabel()
        self.legend_label.setWordWrap(True)
        self.legend_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        top = QFormLayout()
        top.addRow("Slide", self.slide_combo)
        controls = QFormLayout()
        controls.addRow("Colormap", self.colormap_combo)
        controls.addRow("Opacity", self.opacity_slider)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.gene_list, stretch=1)
        layout.addLayout(controls)
        layout.addWidget(self.legend_label)
        layout.addWidget(self.pcc_label)
        layout.addWidget(self.mean_pcc_label)

        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        self.filter_edit.textChanged.connect(self.apply_filter)
        self.gene_list.itemClicked.connect(self._on_item_clicked)
        self.gene_list.itemActivated.connect(self._on_item_clicked)
        self.colormap_combo.currentTextChanged.connect(self._on_colormap)
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        _common.hub.map_changed.connect(self._on_map_changed)
        _common.keep_dock_title_short(self, "Genes")
        self.refresh_slides()

    # ------------------------------------------------------------------ slides
    @property
    def slide_layer(self) -> Any | None:
        return self.slide_combo.current_layer()

    @property
    def store(self) -> Any | None:
        return self._store

    def refresh_slides(self, *, reload: bool = False) -> None:
        """Re-list the slide layers that have a map (keeps the current one when possible);
        ``reload`` re-reads the current slide's store even if the choice is unchanged."""
        if self.slide_combo.refresh() or reload or self._store is None:
            self._on_slide_changed()

    def _on_layers_changed(self, event: Any = None) -> None:
        if not self._alive():
            return
        self.refresh_slides()
        if self._current is not None and self._current not in self.viewer.layers:
            self._current = None

    def _on_map_changed(self, layer: Any) -> None:
        if not self._alive():
            return
        self.refresh_slides(reload=layer is self.slide_layer)

    def _on_slide_changed(self, *_: Any) -> None:
        layer = self.slide_layer
        self._store = _common.slide_map(layer) if layer is not None else None
        self.comparison = None
        self._comparison_key = None
        self.pcc_label.setText("")
        self.mean_pcc_label.setText("")
        self.legend_label.setText("")
        if self._store is None:
            self.gene_list.clear()
            if not _common.slide_layers(self.viewer):
                self.status.setText(
                    "No slide open: open a slide (File ▸ Open, or drop an .ome.tif/.svs/.h5ad) "
                    "and predict its map in the Predict widget."
                )
            else:
                self.status.setText(
                    "No slide has a predicted map yet: predict one in the Predict widget "
                    "(or set a saved map on the slide)."
                )
            return
        self.apply_filter(self.filter_edit.text())
        self._update_measured_status()

    # ------------------------------------------------------------------ gene list
    def genes(self) -> list[str]:
        return list(self._store.genes) if self._store is not None else []

    def listed_genes(self) -> list[str]:
        """The gene symbols currently listed, in order."""
        items = (self.gene_list.item(i) for i in range(self.gene_list.count()))
        return [str(item.data(GENE_ROLE)) for item in items if item is not None]

    def apply_filter(self, text: str = "") -> None:
        """List the genes matching ``text`` (symbols, then aliases; case-insensitive)."""
        self.gene_list.clear()
        store = self._store
        genes = self.genes()
        if store is None or not genes:  # no store: no genes
            return
        zero_shot = {s.symbol: s for s in store.gene_sources if s.source == "zero-shot"}
        for m in search_genes(text, genes):
            label = m.gene if m.alias is None else f"{m.gene}  ({m.alias})"
            tips = []
            aliases = aliases_of(m.gene)
            if aliases:
                tips.append(f"{m.gene}: also known as {', '.join(aliases)}")
            if m.gene in zero_shot:  # predicted from its description, never trained on
                label += "  · zero-shot"
                src = zero_shot[m.gene]
                tips.append(f"zero-shot ({src.encoder}): {src.description or 'gene bank text'}")
            item = QListWidgetItem(label)
            item.setData(GENE_ROLE, m.gene)
            if tips:
                item.setToolTip("\n".join(tips))
            self.gene_list.addItem(item)
        status = "partial map" if store.status != "complete" else "map"
        shown = self.gene_list.count()
        self.status.setText(
            f"{shown} of {len(genes)} genes ({status} {store.path.name}). "
            "Click a gene to overlay its prediction."
            if shown
            else f"No gene matches {text!r} (of {len(genes)})."
        )

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        gene = item.data(GENE_ROLE)
        if gene:
            self.show_gene(str(gene))

    # ------------------------------------------------------------------ heatmaps
    def heatmap_layer(self, gene: str) -> Any | None:
        """This map's heatmap layer of ``gene`` when shown."""
        if self._store is None:
            return None
        for layer in self.viewer.layers:
            if _common.is_heatmap_layer(layer, self._store.path) and (
                layer.metadata.get("gene") == gene
            ):
                return layer
        return None

    def show_gene(self, gene: str) -> Any | None:
        """Overlay ``gene``'s heatmap (or select it when shown) and compare with measured spots."""
        if self._store is None:
            self.status.setText("No map to show genes from: choose a slide with a predicted map.")
            return None
        t0 = time.perf_counter()
        layer = self.heatmap_layer(gene)
        if layer is None:
            from napari.layers import Layer

            try:
                data, kwargs, kind = _layers.gene_heatmap_layer_data(
                    self._store,
                    gene,
                    colormap=self.colormap_combo.currentText(),
                    opacity=self.opacity_slider.value() / 100.0,
                )
                layer = _common.add_below_annotations(self.viewer, Layer.create(data, kwargs, kind))
            except Exception as exc:  # a broken/changed store: say which
                _common.notify_error(self._problem(f"cannot show {gene}", exc, self._store.path))
                return None
        else:
            layer.visible = True
        self.viewer.layers.selection.active = layer
        self._current = layer
        self._sync_controls(layer)
        self._show_legend(layer)
        self.last_click_seconds = time.perf_counter() - t0
        self.status.setText(f"{gene}: shown in {self.last_click_seconds * 1e3:.0f} ms.")
        self._compare(gene)
        return layer

    @staticmethod
    def _problem(what: str, exc: BaseException, where: Any) -> str:
        """``"What: why — where"`` (the problem leads; see :func:`._common.problem_first`)."""
        why = exc.problem if isinstance(exc, InputFileError) else _common.describe(exc)
        return _common.problem_first(f"{what}: {why}", where)

    # ------------------------------------------------------------------ legend
    def unit(self) -> str:
        """The unit of the current map's values (and of the measured spots beside it)."""
        target_sum = mvp.model_target_sum(self._store)[0] if self._store is not None else 1e4
        return expression_unit(target_sum)

    def _show_legend(self, heatmap: Any) -> None:
        """Show ``heatmap``'s colour bar (only the current heatmap's: they would pile up
        unlabelled) and say in the legend what its colours mean."""
        for other in self.viewer.layers:
            bar = getattr(other, "colorbar", None)
            if bar is not None and _common.is_heatmap_layer(other):
                bar.visible = other is heatmap
        lo, hi = (float(v) for v in heatmap.contrast_limits)
        gene = heatmap.metadata.get("gene", heatmap.name)
        text = (
            f"{gene} in {self.unit()}. Colour bars (top right of the canvas): heatmap = "
            f"predicted ({heatmap.colormap.name}, {lo:.2f} – {hi:.2f})"
        )
        spots = self.measured_spots_layer()
        by = getattr(getattr(spots, "_face", None), "color_properties", None)
        if spots is not None and by is not None and spots.face_color_mode == "colormap":
            text += f"; {spots.name} = measured {by.name} ({spots.face_colormap.name})"
        text += "."
        self.legend_label.setText(text)

    def target_heatmap(self) -> Any | None:
        """The heatmap the colormap/opacity controls act on: the selected one, else the last."""
        active = self.viewer.layers.selection.active
        if active is not None and _common.is_heatmap_layer(active):
            return active
        if self._current is not None and self._current in self.viewer.layers:
            return self._current
        return None

    def _on_active_layer(self, event: Any = None) -> None:
        if not self._alive():
            return
        active = self.viewer.layers.selection.active
        if active is not None and _common.is_heatmap_layer(active):
            self._current = active
            self._sync_controls(active)
            self._show_legend(active)

    def _sync_controls(self, layer: Any) -> None:
        name = layer.colormap.name
        self.colormap_combo.blockSignals(True)
        if self.colormap_combo.findText(name) < 0:
            self.colormap_combo.addItem(name)
        self.colormap_combo.setCurrentText(name)
        self.colormap_combo.blockSignals(False)
        self.opacity_slider.blockSignals(True)
        self.opacity_slider.setValue(round(float(layer.opacity) * 100))
        self.opacity_slider.blockSignals(False)

    def _on_colormap(self, name: str) -> None:
        layer = self.target_heatmap()
        if layer is not None and name:
            layer.colormap = name
            self._show_legend(layer)

    def _on_opacity(self, value: int) -> None:
        layer = self.target_heatmap()
        if layer is not None:
            layer.opacity = value / 100.0

    # ------------------------------------------------------------------ measured vs predicted
    def measured_spots_layer(self) -> Any | None:
        """The measured-spots layer of the chosen slide (:func:`._spot_layer.
        measured_spots_for`)."""
        return _spot_layer.measured_spots_for(self.viewer, self.slide_layer)

    def _update_measured_status(self) -> None:
        spots = self.measured_spots_layer()
        if spots is None:
            self.pcc_label.setText(
                "No measured spots for this slide (open its .h5ad or Space Ranger folder to "
                "compare measured with predicted)."
            )
        else:
            self.pcc_label.setText(f"Measured spots: {spots.name}. Click a gene to compare.")

    def _compare(self, gene: str) -> None:
        spots = self.measured_spots_layer()
        if spots is None or self._store is None:
            self._update_measured_status()
            return
        adata = spots.metadata["adata"]
        if gene not in set(map(str, adata.var_names)):
            self.pcc_label.setText(f"{gene} is not measured in {spots.name}.")
        else:
            self._colour_spots(self._store, spots, adata, gene)
        key = (id(self._store), id(adata))
        self._pending_gene = gene
        if self._comparison_key == key and self.comparison is not None:
            self._show_pcc(gene)
            return
        if self._worker is not None and self._worker_key == key:
            return  # running: it shows the latest clicked gene when done
        self._start_comparison(self._store, adata, spots.metadata.get("library_id"), key)

    def _colour_spots(self, store: Any, spots: Any, adata: Any, gene: str) -> None:
        try:
            if gene not in spots.features.columns:
                target_sum, _ = mvp.model_target_sum(store)
                features = spots.features.copy()
                features[gene] = mvp.measured_values(adata, gene, target_sum)
                spots.features = features
            _layers.color_spots_by(spots, gene)
            spots.face_colorbar.visible = True
        except Exception as exc:
            _common.notify_error(
                self._problem(f"cannot colour the spots by {gene}", exc, spots.name)
            )
            return
        if self._current is not None and self._current in self.viewer.layers:
            self._show_legend(self._current)

    def _start_comparison(self, store: Any, adata: Any, library_id: Any, key: Any) -> None:
        from napari.qt.threading import create_worker

        self.pcc_label.setText("Comparing measured and predicted values…")
        worker = create_worker(mvp.cached_compare, store, adata, library_id=library_id)
        self._worker, self._worker_key = worker, key

        def done(result: mvp.MeasuredVsPredicted) -> None:
            if not self._alive() or self._store is not store:
                return
            self.comparison, self._comparison_key = result, key
            if self._pending_gene is not None:
                self._show_pcc(self._pending_gene)

        def failed(exc: BaseException) -> None:
            _common.notify_error(
                self._problem("cannot compare with the measured spots", exc, store.path)
            )
            if self._alive():
                self.pcc_label.setText(f"Measured vs predicted: not available ({exc}).")

        def finished() -> None:
            if self._worker is worker:
                self._worker, self._worker_key = None, None

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        worker.start()

    def _show_pcc(self, gene: str) -> None:
        res = self.comparison
        if res is None:
            return
        n = f"{res.n_spots_used} of {res.n_spots_total} spots"
        if gene not in res.genes:
            self.pcc_label.setText(f"{gene} is not a gene of the map.")
        elif gene in res.missing_genes:
            self.pcc_label.setText(f"PCC {gene}: not measured in this section.")
        else:
            r = res.pcc_of(gene)
            value = f"{r:.3f}" if math.isfinite(r) else "undefined (constant values)"
            self.pcc_label.setText(f"PCC {gene} measured vs predicted ({n}): {value}")
        mean = res.mean_pcc
        mean_txt = f"{mean:.3f}" if math.isfinite(mean) else "undefined"
        extra = f", {len(res.zero_variance_genes)} constant" if res.zero_variance_genes else ""
        self.mean_pcc_label.setText(
            f"Mean PCC over {res.n_genes_pcc} of {len(res.genes)} genes: {mean_txt} "
            f"({len(res.missing_genes)} not measured{extra})"
        )

    # ------------------------------------------------------------------ lifetime
    def _alive(self) -> bool:
        return _common.alive(self)
