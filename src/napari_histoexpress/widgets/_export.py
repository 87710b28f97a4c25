"""The Export dock widget: a slide's spots and their predicted expression → ``.h5ad`` / ``.csv``.

Thin: the file is made by :func:`napari_histoexpress.inference.spot_export.export_spots` (the
scanpy/squidpy spatial AnnData, or a CSV of one row per spot), in a napari ``thread_worker``
(always: even a few spots read the slide's pyramid for the hires/lowres images). Spots are
those of every spots layer of the chosen slide (:mod:`._spot_layer`: drawn-spots layers and
bins layers, every bin), all of them or only the drawn or gridded ones; a bins layer's
table is built from its arrays. A CSV of many spots is large (one text row per spot with
every gene): the status line says how large before it is written, and suggests ``.h5ad``.
The default output is ``<project>/spots.h5ad``
(``<project>/spots_expression.csv`` for CSV, never the project's own ``spots.csv`` table).

**Heatmaps (OME-TIFF)**: the genes typed (default: the heatmaps shown for the slide's map)
are written by :func:`napari_histoexpress.inference.heatmap_export.export_heatmap_ome_tiff`
as one pyramidal OME-TIFF, in a worker too (default ``<project>/heatmaps.ome.tif``), on the
map's grid or, with *Match slide pixels*, at the slide's full-resolution size (QuPath).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import project
from ..inference.heatmap_export import HeatmapExport, export_heatmap_ome_tiff
from ..inference.spot_export import EXPORT_FORMATS, ExportResult, combine_spot_tables, export_spots
from . import _common, _spot_layer
from ._common import notify_error, notify_info

#: Spot choices: label → the ``source`` values kept (``None``: all).
SPOT_CHOICES: dict[str, tuple[str, ...] | None] = {
    "All spots (drawn + grid)": None,
    "Drawn spots only": ("drawn",),
    "Grid spots only": ("grid",),
}
#: Default output file name in the slide's project folder, per format.
DEFAULT_NAMES = {
    ".h5ad": "spots.h5ad",
    ".csv": "spots_expression.csv",
    ".geojson": "spots_regions.geojson",
    ".zarr": "spots.sdata.zarr",
}
#: Default heatmap OME-TIFF name in the slide's project folder.
HEATMAP_NAME = "heatmaps.ome.tif"
#: Above this estimated size (MB) the status line warns that a CSV export is large.
CSV_WARN_MB = 200.0
#: Bytes per value of a CSV export (a float written as text with its comma), an estimate.
_CSV_BYTES_PER_VALUE = 11


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


class ExportWidget(QWidget):
    """Choose a slide with a map, which spots, a format and a file; Export."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._watched: list[Any] = []
        self._worker: Any | None = None
        self._path_is_default = True
        #: the last successful export (``None`` before)
        self.last_result: ExportResult | None = None

        self.slide_combo = _common.SlideCombo(self.viewer)
        self.spots_combo = QComboBox()
        self.spots_combo.addItems(list(SPOT_CHOICES))
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(EXPORT_FORMATS))
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("output (.h5ad, .csv, .geojson, .zarr = SpatialData)")
        self.browse_button = QPushButton("Browse…")
        self.export_button = QPushButton("Export")
        self.status = QLabel()
        self.status.setWordWrap(True)
        #: the last successful heatmap export (``None`` before)
        self.last_heatmap: HeatmapExport | None = None
        self._heatmap_path_is_default = True
        self.heatmap_genes_edit = QLineEdit()
        self.heatmap_genes_edit.setPlaceholderText("genes, e.g. ERBB2 KRT19 (default: shown)")
        self.heatmap_match_slide = QCheckBox("Match slide pixels (QuPath overlay)")
        self.heatmap_background = QComboBox()
        self.heatmap_background.addItems(["zero", "nan"])
        self.heatmap_path_edit = QLineEdit()
        self.heatmap_path_edit.setPlaceholderText("output file (.ome.tif)")
        self.heatmap_button = QPushButton("Export heatmaps (OME-TIFF)")

        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, stretch=1)
        path_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Spots", self.spots_combo)
        form.addRow("Format", self.format_combo)
        form.addRow("Output", path_row)
        heat_form = QFormLayout()
        heat_form.addRow("Genes", self.heatmap_genes_edit)
        heat_form.addRow("Background", self.heatmap_background)
        heat_form.addRow("", self.heatmap_match_slide)
        heat_form.addRow("Heatmap file", self.heatmap_path_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(QLabel("<b>Heatmaps as OME-TIFF</b>"))
        layout.addLayout(heat_form)
        layout.addWidget(self.heatmap_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.slide_combo.currentIndexChanged.connect(self._on_slide_changed)
        self.spots_combo.currentIndexChanged.connect(self._refresh_status)
        self.format_combo.currentTextChanged.connect(self._on_format_changed)
        self.format_combo.currentTextChanged.connect(self._refresh_status)
        self.path_edit.textEdited.connect(self._on_path_edited)
        self.browse_button.clicked.connect(self.browse)
        self.export_button.clicked.connect(self.export)
        self.heatmap_button.clicked.connect(self.export_heatmaps)
        self.heatmap_path_edit.textEdited.connect(self._on_heatmap_path_edited)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        _common.hub.map_changed.connect(self._on_map_changed)
        _common.keep_dock_title_short(self, "Export")
        self.refresh_slides()

    # ------------------------------------------------------------------ choices
    @property
    def slide_layer(self) -> Any | None:
        return self.slide_combo.current_layer()

    @property
    def export_format(self) -> str:
        return self.format_combo.currentText()

    def refresh_slides(self) -> None:
        """Re-list the slide layers (keeping the current one when possible)."""
        self.slide_combo.refresh()
        self._on_slide_changed()

    def spot_tables(self) -> dict[str, pd.DataFrame]:
        """The current slide's spots, one table per spots layer (drawn and bins), the
        chosen sources only (read from the layers' arrays: quick even for a million bins)."""
        layer = self.slide_layer
        if layer is None:
            return {}
        keep = SPOT_CHOICES[self.spots_combo.currentText()]
        tables = {}
        for lay in _spot_layer.any_spot_layers(self.viewer, layer):
            table = _spot_layer.spots_table(lay)
            if keep is not None:
                table = table[table["source"].isin(keep)].reset_index(drop=True)
            tables[lay.name] = table
        return tables

    def region_annotations(self) -> list[Any]:
        """The regions (QuPath annotations loaded on the current slide, holes kept) exported
        with the spots to ``.geojson`` (:func:`..._region_layers.layer_regions`)."""
        from .._region_layers import REGIONS_KIND, layer_regions

        layer = self.slide_layer
        if layer is None:
            return []
        out: list[Any] = []
        for lay in self.viewer.layers:
            md = getattr(lay, "metadata", None) or {}
            if md.get("histoexpress") != REGIONS_KIND or md.get("slide") != layer.name:
                continue
            if not len(lay.data):
                continue
            out += layer_regions(
                [np.array([lay.data_to_world(v) for v in shape]) for shape in lay.data],
                lay.features,
                mpp=float(lay.scale[-1]),
                metadata=md,
            )
        return out

    def spots(self) -> pd.DataFrame:
        """The chosen spots of the current slide (all its spots layers, combined)."""
        return combine_spot_tables(self.spot_tables())

    def default_path(self, fmt: str | None = None) -> Path | None:
        """``<project folder>/spots.h5ad`` (or ``spots_expression.csv``) of the slide."""
        path = _common.slide_path(self.slide_layer) if self.slide_layer is not None else None
        if path is None:
            return None
        return project.project_dir(path) / DEFAULT_NAMES[fmt or self.export_format]

    def default_heatmap_path(self) -> Path | None:
        """``<project folder>/heatmaps.ome.tif`` of the slide."""
        path = _common.slide_path(self.slide_layer) if self.slide_layer is not None else None
        return None if path is None else project.project_dir(path) / HEATMAP_NAME

    def heatmap_genes(self, store: Any) -> list[str]:
        """The genes typed (spaces or commas between them), else those of the heatmap
        layers shown for ``store`` (in layer order)."""
        typed = [g for g in self.heatmap_genes_edit.text().replace(",", " ").split() if g]
        if typed:
            return typed
        return [
            str(lay.metadata.get("gene"))
            for lay in self.viewer.layers
            if _common.is_heatmap_layer(lay, store.path) and lay.metadata.get("gene")
        ]

    # ------------------------------------------------------------------ events
    def _alive(self) -> bool:
        return _common.alive(self)

    def _on_layers_changed(self, event: Any = None) -> None:
        if self._alive():
            self.refresh_slides()

    def _on_map_changed(self, layer: Any) -> None:
        if self._alive():
            self._refresh_status()

    def _on_slide_changed(self, *_: Any) -> None:
        if self._path_is_default:
            default = self.default_path()
            self.path_edit.setText(str(default) if default is not None else "")
        if self._heatmap_path_is_default:
            heat = self.default_heatmap_path()
            self.heatmap_path_edit.setText(str(heat) if heat is not None else "")
        self._watch_spot_layers()
        self._refresh_status()

    def _on_format_changed(self, fmt: str) -> None:
        text = self.path_edit.text().strip()
        if self._path_is_default or not text:
            default = self.default_path(fmt)
            self.path_edit.setText(str(default) if default is not None else "")
        elif Path(text).suffix.lower() != fmt:
            self.path_edit.setText(str(Path(text).with_suffix(fmt)))

    def _on_heatmap_path_edited(self, text: str) -> None:
        self._heatmap_path_is_default = not text.strip()

    def _on_path_edited(self, text: str) -> None:
        self._path_is_default = not text.strip()
        suffix = Path(text.strip()).suffix.lower()
        if suffix in EXPORT_FORMATS and suffix != self.export_format:
            self.format_combo.blockSignals(True)
            self.format_combo.setCurrentText(suffix)
            self.format_combo.blockSignals(False)

    def _watch_spot_layers(self) -> None:
        """Update the spot count when the slide's spots layers change."""
        for lay in self._watched:
            lay.events.data.disconnect(self._refresh_status)
        self._watched = []
        if self.slide_layer is not None:
            self._watched = _spot_layer.any_spot_layers(self.viewer, self.slide_layer)
            for lay in self._watched:
                lay.events.data.connect(self._refresh_status)

    def _refresh_status(self, *_: Any) -> None:
        if not self._alive():
            return
        layer = self.slide_layer
        if layer is None:
            self.status.setText("No slide open: open a slide and predict its map first.")
            return
        store = _common.slide_map(layer)  # cached per path: same object as on every call
        if store is None:
            self.status.setText(
                f"{layer.name} has no predicted map yet: predict one in the Predict widget."
            )
            return
        spot_layers = _spot_layer.any_spot_layers(self.viewer, layer)
        keep = SPOT_CHOICES[self.spots_combo.currentText()]
        n = 0
        for lay in spot_layers:
            feats = lay.features
            if keep is None or "source" not in feats or len(feats) != len(lay.data):
                n += len(lay.data)
            else:
                source = feats["source"]
                if not isinstance(source.dtype, pd.CategoricalDtype):
                    source = source.astype(str)
                n += int(source.isin(keep).sum())
        if n == 0:
            self.status.setText(
                f"No spots on {layer.name}: draw spots or make a grid in the Spots widget."
            )
        else:
            text = (
                f"{n} spot(s) in {len(spot_layers)} layer(s) ready to export with "
                f"{len(store.genes)} genes."
            )
            csv_mb = n * (len(store.genes) + 6) * _CSV_BYTES_PER_VALUE / 1e6
            if self.export_format == ".csv" and csv_mb > CSV_WARN_MB:
                text += (
                    f" The CSV will be about {csv_mb:,.0f} MB and slow to write; .h5ad keeps "
                    "every spot in a compact binary file."
                )
            self.status.setText(text)

    # ------------------------------------------------------------------ actions
    def browse(self) -> None:
        """Pick the output file with a save-file dialog."""
        start = self.path_edit.text().strip() or str(self.default_path() or "")
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export spots",
            start,
            "AnnData (*.h5ad);;CSV table (*.csv);;QuPath GeoJSON (*.geojson)",
        )
        if not path:
            return
        suffix = Path(path).suffix.lower()
        if suffix not in EXPORT_FORMATS:
            path = str(Path(path).with_suffix(self.export_format))
        self.path_edit.setText(path)
        self._on_path_edited(path)

    def output_path(self) -> Path | None:
        text = self.path_edit.text().strip()
        if not text:
            return None
        path = Path(text).expanduser()
        if path.suffix.lower() not in EXPORT_FORMATS:
            path = path.with_name(path.name + self.export_format)
        return path

    def export(self) -> None:
        """Check the choices (errors are notified) and export in a worker thread."""
        if self._worker is not None:
            return
        layer = self.slide_layer
        if layer is None:
            notify_error("Export: no slide layer; open a slide and predict its map first.")
            return
        store = _common.slide_map(layer)
        if store is None:
            notify_error(
                f"Export: {layer.name} has no predicted map; predict one in the Predict widget "
                "first (or set a saved map on the slide)."
            )
            return
        try:
            tables = self.spot_tables()
        except Exception as exc:  # e.g. a layer whose spots cannot be read
            notify_error(exc)
            return
        regions = self.region_annotations() if self.export_format == ".geojson" else []
        if sum(len(t) for t in tables.values()) == 0 and not regions:
            notify_error(
                f"Export: no spots on {layer.name} ({self.spots_combo.currentText().lower()}); "
                "draw spots or make a grid in the Spots widget first."
            )
            return
        path = self.output_path()
        if path is None:
            notify_error("Export: choose an output file (.h5ad, .csv, .geojson or .zarr).")
            return
        slide = _common.slide_path(layer)
        if slide is not None:
            if path.resolve() == project.spots_path(slide).resolve():
                notify_error(
                    _common.problem_first(
                        "Export: this is the slide's saved spots table; choose another file name",
                        path,
                    )
                )
                return
            if path.parent == project.project_dir(slide):
                path.parent.mkdir(parents=True, exist_ok=True)
        # a SpatialData store also gets the dense maps of the heatmaps shown for this map
        shown = [
            str(lay.metadata.get("gene"))
            for lay in self.viewer.layers
            if _common.is_heatmap_layer(lay, store.path) and lay.metadata.get("gene")
        ]
        self._start(store, tables, path, slide, regions, shown if path.suffix == ".zarr" else [])

    def _start(
        self,
        store: Any,
        tables: dict[str, pd.DataFrame],
        path: Path,
        slide: Path | None,
        regions: list[Any] | None = None,
        gene_maps: list[str] | None = None,
    ) -> None:
        from napari.qt.threading import thread_worker

        def job() -> ExportResult:
            # combined and checked in the worker too (a million bins take a second)
            return export_spots(
                store,
                combine_spot_tables(tables),
                path,
                slide_path=slide,
                annotations=regions,
                gene_maps=gene_maps or (),
            )

        worker = thread_worker(job, start_thread=False, ignore_errors=True)()
        n = sum(len(t) for t in tables.values())
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.export_button.setEnabled(False)
        self.status.setText(f"Exporting {n} spot(s) to {path} …")
        worker.start()

    def export_heatmaps(self) -> None:
        """Check the choices (errors are notified) and write the OME-TIFF in a worker."""
        if self._worker is not None:
            return
        layer = self.slide_layer
        store = None if layer is None else _common.slide_map(layer)
        if layer is None or store is None:
            notify_error(
                "Export heatmaps: no slide with a predicted map; predict one in the Predict "
                "widget first."
            )
            return
        genes = self.heatmap_genes(store)
        if not genes:
            notify_error(
                "Export heatmaps: no genes; type them (e.g. ERBB2 KRT19) or show their "
                "heatmaps with the Genes widget."
            )
            return
        text = self.heatmap_path_edit.text().strip()
        if not text:
            notify_error("Export heatmaps: choose an output file (.ome.tif).")
            return
        path = Path(text).expanduser()
        if not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
            path = path.with_name(path.name + ".ome.tif")
        slide = _common.slide_path(layer)
        if slide is not None and path.parent == project.project_dir(slide):
            path.parent.mkdir(parents=True, exist_ok=True)
        grid = "slide" if self.heatmap_match_slide.isChecked() else "map"
        background = self.heatmap_background.currentText()

        from napari.qt.threading import thread_worker

        def job() -> HeatmapExport:
            return export_heatmap_ome_tiff(store, genes, path, grid=grid, background=background)

        worker = thread_worker(job, start_thread=False, ignore_errors=True)()
        worker.returned.connect(self._on_heatmap_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.export_button.setEnabled(False)
        self.heatmap_button.setEnabled(False)
        self.status.setText(f"Writing {', '.join(genes)} to {path} …")
        worker.start()

    def _on_heatmap_returned(self, result: HeatmapExport) -> None:
        self.last_heatmap = result
        _, h, w = result.shape
        message = (
            f"Exported heatmaps of {', '.join(result.genes)} ({w} × {h} px, "
            f"{len(result.level_shapes)} levels) to {result.path}"
        )
        notify_info(message)
        for warning in result.warnings:
            notify_warning(warning)
        if self._alive():
            self.status.setText(message)

    def _on_returned(self, result: ExportResult) -> None:
        self.last_result = result
        message = f"Exported {result.n_spots} spots × {result.n_genes} genes to {result.path}"
        notify_info(message)
        for warning in result.warnings:
            notify_warning(warning)
        if self._alive():
            self.status.setText(message + ("" if not result.warnings else " (without image)"))

    def _on_errored(self, exc: BaseException) -> None:
        notify_error(exc)
        if self._alive():
            self.status.setText(f"Export failed: {_common.describe(exc)}")

    def _on_finished(self) -> None:
        self._worker = None
        if self._alive():
            self.export_button.setEnabled(True)
            self.heatmap_button.setEnabled(True)
