"""What the dock widgets share: finding slide layers and their map stores, one signal that
tells every widget a slide's map changed, and errors shown as napari notifications.

Conventions (all widgets follow them):

- A **slide layer** is an image layer whose ``metadata["histoexpress"] == "slide"`` (made by
  the reader, :func:`napari_histoexpress._layers.slide_layer_data`); its
  ``metadata["path"]`` is the slide file and ``metadata["microns_per_pixel"]`` its µm/px.
- The dense-map store predicted for a slide layer is recorded as
  ``metadata["histoexpress_map"]`` (a path); :func:`set_slide_map` sets it and emits
  :data:`hub.map_changed`, :func:`slide_map` opens it (cached per path).
- **Errors** are worded for a napari toast, which shows only its first words: the problem
  first, the file last (:func:`describe`); they name buttons and fields, never Python
  arguments.
- **Heatmaps go below annotations**: :func:`add_below_annotations` inserts a layer under the
  lowest points/shapes layer above the slides, so a clicked gene never hides the spots.
- **Short dock titles**: napari names a plugin's dock "Predict (napari-histoexpress)", cut
  to "Predict (nap…" when four are tabbed; :func:`keep_dock_title_short` makes the tab say
  "Predict" (napari still finds the dock by its full name, so Plugins-menu toggles work).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from psygnal import Signal
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox, QDockWidget, QWidget

from .._layers import MAP_KEY
from ..errors import InputFileError

log = logging.getLogger(__name__)


class _Hub:
    """Signals between the dock widgets (one instance: :data:`hub`)."""

    #: ``(slide_layer)``: a slide layer's map store was set, replaced or finished.
    map_changed = Signal(object)


hub = _Hub()

_STORES: dict[str, Any] = {}


def is_slide_layer(layer: Any) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return md.get("histoexpress") == "slide"


def slide_layers(viewer: Any) -> list[Any]:
    """The viewer's slide layers, top-most first."""
    return [layer for layer in reversed(list(viewer.layers)) if is_slide_layer(layer)]


def slide_path(layer: Any) -> Path | None:
    path = (getattr(layer, "metadata", None) or {}).get("path")
    return Path(path) if path else None


def slide_mpp(layer: Any) -> float | None:
    mpp = (getattr(layer, "metadata", None) or {}).get("microns_per_pixel")
    return float(mpp) if mpp else None


def slide_map_path(layer: Any) -> Path | None:
    path = (getattr(layer, "metadata", None) or {}).get(MAP_KEY)
    return Path(path) if path else None


def slide_map(layer: Any) -> Any | None:
    """The :class:`~napari_histoexpress.inference.map_store.DenseMapStore` of a slide layer,
    or ``None`` when it has none (or it cannot be opened: logged)."""
    from ..inference.map_store import DenseMapStore

    path = slide_map_path(layer)
    if path is None:
        return None
    key = str(path)
    if key not in _STORES:
        try:
            _STORES[key] = DenseMapStore.open(path, mode="r")
        except Exception as exc:  # reported; the layer just has no map
            log.warning("%s: cannot open the map store (%s)", path, exc)
            return None
    return _STORES[key]


def is_heatmap_layer(layer: Any, map_path: str | Path | None = None) -> bool:
    """Whether ``layer`` is a gene heatmap (``_layers.gene_heatmap_layer_data``), read from
    the map store at ``map_path`` when one is given."""
    md = getattr(layer, "metadata", None) or {}
    if md.get("histoexpress") != "heatmap":
        return False
    return map_path is None or md.get("map") == str(Path(map_path))


def set_slide_map(layer: Any, path: str | Path | None) -> None:
    """Record ``path`` as the slide layer's map (``None`` clears it) and tell the widgets."""
    if path is None:
        layer.metadata.pop(MAP_KEY, None)
    else:
        _STORES.pop(str(Path(path)), None)  # reopen: the store may have grown
        layer.metadata[MAP_KEY] = str(Path(path))
    hub.map_changed.emit(layer)


def notify_error(message: str | BaseException) -> None:
    """Show an error to the user as a napari notification (and log it)."""
    from napari.utils.notifications import show_error

    text = str(message) if not isinstance(message, BaseException) else describe(message)
    log.error(text)
    show_error(text)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def problem_first(problem: str, where: str | Path | None = None) -> str:
    """``"Problem — /full/path"``: what went wrong leads (a toast shows only its start),
    the file comes last (in full, so it can be found)."""
    text = problem.strip() or "unknown problem"
    if text[0].isascii():  # "µm/px …" stays (µ upper-cased is Greek Mu)
        text = text[0].upper() + text[1:]
    return f"{text} — {where}" if where else text


#: What a user does in the widgets to fix an error whose ``.setting`` is the key
#: (:data:`napari_histoexpress.errors.SETTINGS`): GUI words, never a Python argument.
SETTING_HINTS: dict[str, str] = {
    "mpp": "type the slide's µm/px in the Predict widget's \"slide µm/px\" field and press Enter",
    "restart": "tick Start over in the Predict widget and click Predict",
}


def describe(exc: BaseException) -> str:
    """How an exception is worded for the user: an :class:`InputFileError` (``"path:
    problem"``) becomes :func:`problem_first`, with what to click when its ``setting`` says
    which setting fixes it (:data:`SETTING_HINTS`); other errors of this package keep their
    text; foreign ones are prefixed with their type (``"KeyError: ..."``)."""
    if isinstance(exc, InputFileError):
        hint = SETTING_HINTS.get(str(getattr(exc, "setting", None)))
        problem = exc.problem if hint is None else f"{exc.problem.rstrip('. ')}; {hint}"
        return problem_first(problem, exc.path)
    text = str(exc) or type(exc).__name__
    return (
        text
        if type(exc).__module__.startswith("napari_histoexpress")
        else (f"{type(exc).__name__}: {text}")
    )


def short_path(path: str | Path) -> str:
    """A path as ``…/parent/name`` (enough to recognise it in a status line)."""
    p = Path(path)
    return f"…/{p.parent.name}/{p.name}" if p.parent.name else p.name


ANNOTATION_TYPES = ("points", "shapes")


def _layer_type(layer: Any) -> str:
    return type(layer).__name__.lower()


def add_below_annotations(viewer: Any, layer: Any) -> Any:
    """Insert ``layer`` (a heatmap) just below the lowest points/shapes layer that sits above
    every slide layer, else on top: overlays never cover the user's spots or drawings.

    (Annotation layers below a slide are left alone: they are hidden by the slide anyway.)
    """
    layers = list(viewer.layers)
    slides = [i for i, lyr in enumerate(layers) if is_slide_layer(lyr)]
    above = max(slides) + 1 if slides else 0
    marks = [
        i for i, lyr in enumerate(layers) if i >= above and _layer_type(lyr) in ANNOTATION_TYPES
    ]
    viewer.layers.insert(min(marks) if marks else len(layers), layer)
    return layer


class _DockTitle(QObject):
    """Event filter: when its widget is put in a :class:`QDockWidget`, title that dock."""

    def __init__(self, widget: QWidget, title: str) -> None:
        super().__init__(widget)
        self._title = title
        widget.installEventFilter(self)
        self.apply(widget)

    def apply(self, widget: QWidget) -> None:
        dock = widget.parentWidget()
        if isinstance(dock, QDockWidget) and dock.windowTitle() != self._title:
            dock.setWindowTitle(self._title)

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        parented = event is not None and event.type() == QEvent.Type.ParentChange
        if parented and isinstance(obj, QWidget):
            self.apply(obj)
        return False


def keep_dock_title_short(widget: QWidget, title: str) -> None:
    """Make the dock that holds ``widget`` (now or later) titled ``title`` in its tab.

    Only the window title changes; napari's dock name (its key in the Window and Plugins
    menus) stays as napari made it.
    """
    _DockTitle(widget, title)


class SlideCombo(QComboBox):
    """A combo box of the viewer's slide layers (optionally only those with a map) that
    keeps the chosen layer when the list is refreshed. ``currentIndexChanged`` fires only
    when the user (or :meth:`select`) changes the choice, not on :meth:`refresh`."""

    def __init__(self, viewer: Any, *, require_map: bool = False, parent: Any = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._require_map = require_map
        self._layers: list[Any] = []

    @property
    def layers(self) -> list[Any]:
        return list(self._layers)

    def current_layer(self) -> Any | None:
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def select(self, layer: Any) -> None:
        """Choose ``layer`` (if listed)."""
        for i, candidate in enumerate(self._layers):
            if candidate is layer:
                self.setCurrentIndex(i)
                return

    def refresh(self) -> bool:
        """Re-list the slide layers; returns whether the chosen layer changed."""
        layers = [
            layer
            for layer in slide_layers(self._viewer)
            if not self._require_map or slide_map(layer) is not None
        ]
        current = self.current_layer()
        if [id(x) for x in layers] != [id(x) for x in self._layers]:
            self.blockSignals(True)
            self._layers = layers
            self.clear()
            self.addItems([layer.name for layer in layers])
            for i, layer in enumerate(layers):
                if layer is current:
                    self.setCurrentIndex(i)
            self.blockSignals(False)
        return self.current_layer() is not current


def alive(widget: Any) -> bool:
    """False once Qt has deleted ``widget`` (its viewer closed); its :data:`hub` slot named
    ``_on_map_changed`` is disconnected then, so a closed widget never handles a signal."""
    try:
        widget.objectName()
    except RuntimeError:
        slot = getattr(widget, "_on_map_changed", None)
        if slot is not None:
            hub.map_changed.disconnect(slot, missing_ok=True)
        return False
    return True
