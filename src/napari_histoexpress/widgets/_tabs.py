"""The dock widgets in one dock, as tabs in workflow order: Predict, Genes, Zero-shot,
Spots, Export.

Why: napari names a plugin's docks "<widget> (<plugin>)" and, when several are tabbed
(``napari -w napari-histoexpress __all__`` or ``add_plugin_dock_widget(..., tabify=True)``),
shows the last one added and cuts the titles ("Predict (nap…"); opened one by one from the
Plugins menu they stack in the order clicked. A plugin cannot change napari's naming or
placement, but it can offer one widget whose own tabs it controls: short titles, the order
of the work, Predict in front. (Each widget also shortens its dock's tab title when docked
on its own: :func:`._common.keep_dock_title_short`.)
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QTabWidget, QWidget

#: Tab titles in workflow order, and the widget class each holds (``widgets.__init__``).
TABS = (
    ("Predict", "PredictWidget"),
    ("Genes", "GenesWidget"),
    ("Zero-shot", "ZeroShotWidget"),
    ("Spots", "SpotsWidget"),
    ("Export", "ExportWidget"),
)


class HistoExpressTabs(QTabWidget):
    """Predict, Genes, Zero-shot, Spots and Export as tabs of one dock widget (Predict
    shown first)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        from .. import widgets

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setDocumentMode(True)
        #: the widgets by tab title
        self.pages: dict[str, QWidget] = {}
        for title, cls_name in TABS:
            page = getattr(widgets, cls_name)(napari_viewer)
            self.pages[title] = page
            self.addTab(page, title)
        self.setCurrentIndex(0)
