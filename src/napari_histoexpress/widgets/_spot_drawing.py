"""The Spots widget's hold on the drawn-spots layers: events, ids, circles, clicks.

:class:`SpotDrawing` listens to every drawn-spots layer (:mod:`._spot_layer`) of the viewer:

- **Click-to-place**: in add mode, a click (no drag: a drag still pans) on the layer in
  pan/zoom mode places a circle of the chosen diameter centred at the click.
- **Snapping**: after a resize with napari's select tool or an ellipse drawn with its
  ellipse tool, the shape becomes a circle again (same centre, diameter = mean side:
  :func:`~napari_histoexpress.inference.spot_shapes.snapped_circle`).
- **Unique ids** across the slide's layers (:mod:`._spot_ids`), whatever added the shape:
  a click, the ellipse tool, a grid, napari's copy/paste (which says so only with a
  ``features`` event), a duplicated layer, restored spots. Layers are told apart by
  :func:`layer_key` (napari's ``layer.unique_id``): a plugin dock widget gets the viewer
  through napari's ``PublicOnlyProxy``, so the same layer reaches it as different objects.
- **Live moves**: napari reports a Shapes data change only when a drag ends, so the layer's
  mouse-drag callback pokes the table on every move (the table reads ``layer.data``, which
  napari edits in place during the drag).
- **Bins layers** (large grids as napari Points) are hooked here too and handled by
  :class:`~._spot_bins.BinLayers` (:attr:`SpotDrawing.bins`), with array operations only.

Changes are told through callbacks: ``edited(slide_key)`` (the slide's spots changed: save
them), ``poke()`` (update the table), ``layers_changed()`` (a layer was hooked, unhooked or
renamed) and ``add_mode_left()`` (the layer left pan/zoom while adding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from napari.layers.base import ActionType

from ..inference.spot_shapes import snapped_circle
from ..io import spot_table
from . import _common, _spot_layer
from ._spot_bins import BinLayers
from ._spot_ids import SlideIds, assign_ids, layer_ids, layer_sources, saved_next_id

#: A drawn spot's outline colour, by source.
EDGE_COLOURS = {"drawn": "#00e5ff", "grid": "#ffd400"}


def layer_key(layer: Any) -> Hashable:
    """A layer's identity, the same for the layer and for napari's proxies of it."""
    uid = getattr(layer, "unique_id", None)
    return uid if uid is not None else id(getattr(layer, "__wrapped__", layer))


@dataclass
class HookedLayer:
    """What :class:`SpotDrawing` keeps about one drawn-spots layer it listens to."""

    layer: Any
    slide_path: Path | None
    slide_key: str  # the slide file's path, or "name:<slide layer name>" without a file
    known: set[str] = field(default_factory=set)  # the ids given out to this layer
    #: a bins layer's id numbers (in point order, as last seen); ``None``: a drawn layer
    numbers: np.ndarray | None = None


def _reset_defaults(layer: Any) -> None:
    with contextlib.suppress(Exception):  # an empty features table has no columns yet
        layer.feature_defaults = {"id": "", "source": "drawn"}


def _set_shape(layer: Any, index: int, vertices: np.ndarray, new_type: str | None) -> None:
    # napari's own vertex tools edit one shape this way (no public per-shape setter); a
    # plugin's proxy of the layer would warn on the private attribute, so unwrap it
    layer = _spot_layer.unwrap(layer)
    with layer.events.set_data.blocker():
        layer._data_view.edit(index, vertices, new_type=new_type)


def _emit_changed(layer: Any, indices: list[int]) -> None:
    """Redraw ``layer`` and tell napari's listeners that shapes ``indices`` changed."""
    layer.refresh()
    layer.events.data(
        value=layer.data,
        action=ActionType.CHANGED,
        data_indices=tuple(indices),
        vertex_indices=((),),
    )


class SpotDrawing:
    """The drawn-spots layers of a viewer, kept as unique-id circles (module docstring)."""

    def __init__(
        self,
        viewer: Any,
        *,
        diameter_um: Callable[[], float],
        edited: Callable[[str], None],
        poke: Callable[[], None],
        layers_changed: Callable[[], None],
        add_mode_left: Callable[[], None],
    ) -> None:
        self.viewer = viewer
        self.add_mode = False
        self.hooked: dict[Hashable, HookedLayer] = {}
        self.slide_paths: dict[str, Path] = {}  # slide key → slide file
        self._ids: dict[str, SlideIds] = {}  # slide key → its id counter, deleted ids
        self._current: dict[str, Hashable] = {}  # slide name → last active spots layer
        self._current_table: dict[str, Hashable] = {}  # slide name → last active (any kind)
        self._busy = 0
        self._diameter_um = diameter_um
        self._edited = edited
        self._poke = poke
        self._layers_changed = layers_changed
        self._add_mode_left = add_mode_left
        #: the bins layers' part (:mod:`._spot_bins`)
        self.bins = BinLayers(self)

    # ------------------------------------------------------------------ for the parts
    @property
    def busy(self) -> bool:
        """Whether the events seen now come from this object's own edits."""
        return self._busy > 0

    def guard(self) -> contextlib.AbstractContextManager[None]:
        """Ignore the layer events of the edits made inside."""
        return self._guard()

    def edited(self, slide_key: str) -> None:
        """Tell the widget that the slide's spots changed (they will be saved)."""
        self._edited(slide_key)

    def poke(self) -> None:
        """Ask the widget for a table update."""
        self._poke()

    def layers_changed(self) -> None:
        """Tell the widget a layer was hooked, unhooked or renamed."""
        self._layers_changed()

    def slide_key_of(self, slide: Any) -> str:
        """The key of a slide layer (its file's path, else ``name:<layer name>``), with its
        id counter made (from the saved tables) when it has none yet."""
        path = _common.slide_path(slide)
        return self._slide_key(path, slide.name)

    def _slide_key(self, path: Path | None, slide_name: Any) -> str:
        slide_key = str(path) if path is not None else f"name:{slide_name}"
        if path is not None:
            self.slide_paths[slide_key] = path
        if slide_key not in self._ids:
            self._ids[slide_key] = SlideIds(saved_next_id(path))
        return slide_key

    def slide_ids(self, slide_key: str) -> SlideIds:
        """The slide's id counter (and deleted ids)."""
        return self._ids[slide_key]

    # ------------------------------------------------------------------ layers
    def slide_layers(self, slide_key: str) -> list[HookedLayer]:
        """The hooked layers of a slide."""
        return [info for info in self.hooked.values() if info.slide_key == slide_key]

    def layer(self, key: Hashable) -> Any | None:
        """The hooked layer of a :func:`layer_key`, ``None`` when it is gone."""
        info = self.hooked.get(key)
        return None if info is None else info.layer

    def info(self, layer: Any) -> HookedLayer | None:
        """What is kept about ``layer`` (``None`` when it is not hooked)."""
        return self.hooked.get(layer_key(layer))

    def deleted_ids(self, slide_key: str) -> set[str]:
        """The ids of the slide's spots that the user deleted."""
        ids = self._ids.get(slide_key)
        return set() if ids is None else ids.deleted

    def deleted_numbers(self, slide_key: str) -> np.ndarray:
        """The id numbers of the slide's bins that the user deleted."""
        return self.bins.deleted_numbers(slide_key)

    def bins_version(self, slide_key: str) -> int:
        """How many times the slide's bins changed."""
        return self.bins.version(slide_key)

    def slide_bins(self, slide_key: str) -> pd.DataFrame:
        """The bins of the slide's open bins layers (``id_number`` and a ``layer`` column)."""
        return self.bins.table(slide_key)

    def bin_numbers(self, slide_key: str) -> np.ndarray:
        """The id numbers held by the slide's open bins layers."""
        return self.bins.numbers(slide_key)

    def slide_spots(self, slide_key: str) -> pd.DataFrame:
        """The spots of all the slide's open drawn-spots layers, with a ``layer`` column
        (bins layers: :meth:`slide_bins`)."""
        tables = [
            _spot_layer.spots_table(info.layer).assign(layer=str(info.layer.name))
            for info in self.slide_layers(slide_key)
            if info.numbers is None
        ]
        tables = [t for t in tables if len(t)]
        if not tables:
            return spot_table.empty_spots().assign(layer=pd.Series(dtype=str))
        return pd.concat(tables, ignore_index=True)

    def spots_layer(self, slide: Any | None, *, create: bool = False) -> Any | None:
        """The slide's drawn-spots layer: the active one, else the one last active (drawing
        a grid region activates the region layer), else the first; made empty on demand
        with ``create``."""
        if slide is None:
            return None
        layers = _spot_layer.spot_layers(self.viewer, slide)
        if layers:
            active = self.viewer.layers.selection.active
            wanted = [layer_key(active)] if active is not None else []
            wanted.append(self._current.get(slide.name))
            for key in wanted:
                for layer in layers:
                    if layer_key(layer) == key:
                        self._current[slide.name] = key
                        return layer
            return layers[0]
        if not create:
            return None
        return self.add_layer(slide, spot_table.empty_spots())

    def table_layer(self, slide: Any | None) -> Any | None:
        """The slide's spots layer the table shows (drawn or bins): the active one, else
        the one last active, else the first drawn-spots layer, else the first bins layer."""
        if slide is None:
            return None
        layers = _spot_layer.any_spot_layers(self.viewer, slide)
        if not layers:
            return None
        active = self.viewer.layers.selection.active
        wanted = [layer_key(active)] if active is not None else []
        wanted.append(self._current_table.get(slide.name))
        for key in wanted:
            for layer in layers:
                if layer_key(layer) == key:
                    self._current_table[slide.name] = key
                    return layer
        drawn = [layer for layer in layers if _spot_layer.is_spots_layer(layer)]
        return drawn[0] if drawn else layers[0]

    def add_bins_layer(
        self,
        slide: Any,
        spots: pd.DataFrame,
        *,
        name: str | None = None,
        numbers: np.ndarray | None = None,
        changed: bool = True,
    ) -> Any:
        """Add a bins layer holding ``spots`` to the slide (hooked; fresh ids unless saved
        ``numbers`` are given); ``changed``: the bins are new to the saved table."""
        layer = self.bins.add_layer(slide, spots, name=name, numbers=numbers)
        if changed:
            self.bins.changed(layer)
        return layer

    def new_layer(self, slide: Any) -> Any:
        """Add an empty drawn-spots layer ``<slide> spots <n>`` and make it active."""
        names = {layer.name for layer in self.viewer.layers}
        n = 2
        while f"{slide.name} spots {n}" in names:
            n += 1
        layer = self.add_layer(slide, spot_table.empty_spots(), name=f"{slide.name} spots {n}")
        self.viewer.layers.selection.active = layer
        self._current[slide.name] = layer_key(layer)
        return layer

    def add_layer(self, slide: Any, spots: pd.DataFrame, name: str | None = None) -> Any:
        """Add a drawn-spots layer holding ``spots`` to the slide (hooked)."""
        mpp = _common.slide_mpp(slide) or 1.0
        data, kwargs, _ = _spot_layer.spots_layer_data(
            spots, slide_name=slide.name, mpp=mpp, name=name
        )
        layer = self.viewer.add_shapes(data, **kwargs)
        self.hook(layer)
        return layer

    def _slide_of(self, layer: Any) -> Any | None:
        name = layer.metadata.get("slide")
        for slide in _common.slide_layers(self.viewer):
            if slide.name == name:
                return slide
        return None

    def _events(self, layer: Any) -> list[tuple[Any, Callable[[Any], None]]]:
        return [
            (layer.events.data, self._on_data),
            (layer.events.features, self._on_features),
            (layer.events.mode, self._on_mode),
            (layer.events.name, self._on_name),
            (layer.selected_data.events.items_changed, self._on_selection),
        ]

    def hook(self, layer: Any) -> None:
        """Listen to a drawn-spots layer; give its shapes unique ids and circles."""
        key = layer_key(layer)
        if key in self.hooked:
            return
        slide = self._slide_of(layer)
        path = _common.slide_path(slide) if slide is not None else None
        slide_key = self._slide_key(path, layer.metadata.get("slide"))
        if _spot_layer.is_bins_layer(layer):
            info = HookedLayer(layer=layer, slide_path=path, slide_key=slide_key)
            info.numbers = np.zeros(0, dtype=np.int64)
            self.hooked[key] = info
            self.bins.hook(info)
            self._layers_changed()
            return
        ids = layer_ids(layer)
        taken = self._ids_elsewhere(slide_key, None)
        info = HookedLayer(layer=layer, slide_path=path, slide_key=slide_key)
        info.known = {i for i in ids if i not in taken}
        self._ids[slide_key].bump(ids)
        self.hooked[key] = info
        layer.mouse_drag_callbacks.append(self._on_drag)
        for emitter, callback in self._events(layer):
            emitter.connect(callback)
        _reset_defaults(layer)
        if self._normalise(layer, None):
            self._edited(slide_key)
        self._layers_changed()

    def unhook(self, layer: Any) -> None:
        """Stop listening to a layer (its ids stay given out)."""
        info = self.hooked.pop(layer_key(layer), None)
        if info is None:
            return
        if info.numbers is not None:
            self.bins.unhook(layer)
            self._layers_changed()
            return
        with contextlib.suppress(ValueError):
            layer.mouse_drag_callbacks.remove(self._on_drag)
        for emitter, callback in self._events(layer):
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)
        self._layers_changed()

    # ------------------------------------------------------------------ ids, circles
    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Ignore the layer events of the edits made inside."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    def _ids_elsewhere(self, slide_key: str, layer: Any | None) -> set[str]:
        """Ids held by the slide's drawn-spots layers other than ``layer``."""
        key = None if layer is None else layer_key(layer)
        out: set[str] = set()
        for k, info in self.hooked.items():
            if info.slide_key == slide_key and k != key and info.numbers is None:
                out.update(layer_ids(info.layer))
        return out

    def _normalise(self, layer: Any, indices: list[int] | None) -> bool:
        """Give new shapes unique ids (source ``drawn``) and snap shapes ``indices`` (all
        with ``None``) to circles; returns whether any id or source changed."""
        info = self.info(layer)
        if info is None:
            return False
        n = len(layer.data)
        feats = layer.features
        ids = layer_ids(layer) or [""] * n
        sources = layer_sources(layer)
        slide_ids = self._ids[info.slide_key]
        elsewhere = self._ids_elsewhere(info.slide_key, layer)
        changed, seen = assign_ids(
            ids,
            sources,
            known=info.known,
            elsewhere=elsewhere,
            fresh=slide_ids.fresh(elsewhere | set(ids)),
        )
        gone = info.known - seen
        if gone:  # deleted by the user: dropped from the saved table too
            slide_ids.deleted.update(gone)
        with self._guard():
            if changed or "id" not in feats or len(feats) != n:
                layer.features = pd.DataFrame({"id": ids, "source": sources})
                _reset_defaults(layer)
            info.known = seen
            check = range(n) if indices is None else [i for i in indices if 0 <= i < n]
            snapped = [i for i in check if self._snap(layer, i)]
            if snapped:
                _emit_changed(layer, snapped)
        return changed

    @staticmethod
    def _snap(layer: Any, index: int) -> bool:
        """Make shape ``index`` a circle; returns whether it changed."""
        kind = layer.shape_type[index]
        target = snapped_circle(layer.data[index], kind, _spot_layer.layer_mpp(layer))
        if target is None:
            return False
        _set_shape(layer, index, target, None if kind == "ellipse" else "ellipse")
        return True

    # ------------------------------------------------------------------ events
    def _changed(self, layer: Any) -> None:
        info = self.info(layer)
        if info is not None:
            self._edited(info.slide_key)

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
        self._changed(layer)
        self._poke()

    def _on_features(self, event: Any) -> None:
        """napari's copy/paste adds shapes with copied features and says so only with a
        ``features`` event (no ``data`` event): new ids, and save."""
        if self._busy:
            return
        layer = event.source
        info = self.info(layer)
        if info is None:
            return
        n_before = len(info.known)
        if self._normalise(layer, []) or len(layer.data) != n_before:
            self._changed(layer)
            self._poke()

    def _on_selection(self, *_: Any) -> None:
        self._poke()

    def _on_mode(self, event: Any) -> None:
        if self.add_mode and str(event.mode) != "pan_zoom":
            self._add_mode_left()

    def _on_name(self, event: Any) -> None:
        info = self.info(event.source)
        if info is not None:
            self._edited(info.slide_key)  # the saved table names the layer
        self._layers_changed()

    def _on_drag(self, layer: Any, event: Any) -> Iterator[None]:
        """Mouse-drag callback of the spots layer: click-to-add, and live updates on moves."""
        adding = self.add_mode and layer.mode == "pan_zoom"
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
                self._poke()
            yield
        if adding and not dragged:
            row, col = np.asarray(layer.world_to_data(press_world), dtype=float)[-2:]
            mpp = _spot_layer.layer_mpp(layer)
            self.add_spot(layer, col * mpp, row * mpp)
        elif not adding:
            self._poke()

    # ------------------------------------------------------------------ edits
    def add_spot(
        self, layer: Any, x_um: float, y_um: float, diameter_um: float | None = None
    ) -> str:
        """Add one drawn spot (centre in µm, the chosen diameter by default); its id."""
        d = self._diameter_um() if diameter_um is None else float(diameter_um)
        spots = pd.DataFrame({"x_um": [x_um], "y_um": [y_um], "diameter_um": [d]})
        return self.append(layer, spots, "drawn")[0]

    def append(self, layer: Any, spots: pd.DataFrame, source: str) -> list[str]:
        """Add circles (columns ``x_um, y_um, diameter_um``) of ``source`` to ``layer``;
        returns their new ids."""
        info = self.info(layer)
        if info is None:
            self.hook(layer)
            info = self.hooked[layer_key(layer)]
        mpp = _spot_layer.layer_mpp(layer)
        data = [
            _spot_layer.circle_corners(x, y, d, mpp)
            for x, y, d in spots[["x_um", "y_um", "diameter_um"]].to_numpy(float)
        ]
        if not data:
            return []
        with self._guard():
            n0 = len(layer.data)
            prev_ids = layer_ids(layer)
            feats = layer.features
            prev_src = (
                feats["source"].astype(str).tolist()
                if "source" in feats and len(feats) == n0
                else ["drawn"] * n0
            )
            if len(prev_ids) != n0:
                prev_ids = [""] * n0
            fresh = self._ids[info.slide_key].fresh(self._ids_elsewhere(info.slide_key, None))
            ids = [next(fresh) for _ in data]
            layer.add(
                data,
                shape_type="ellipse",
                edge_width=[
                    _spot_layer.edge_width_px(d, mpp) for d in spots["diameter_um"].to_numpy(float)
                ],
                edge_color=EDGE_COLOURS["drawn" if source == "drawn" else "grid"],
                face_color="transparent",
            )
            layer.features = pd.DataFrame(
                {"id": prev_ids + ids, "source": prev_src + [source] * len(ids)}
            )
            _reset_defaults(layer)
            info.known.update(ids)
        if "" in prev_ids:  # features were out of step with the shapes: repair them
            self._normalise(layer, [])
        self._changed(layer)
        self._poke()
        return ids

    def set_diameter(self, layer: Any, indices: list[int], diameter_um: float) -> None:
        """Give shapes ``indices`` of ``layer`` the diameter ``diameter_um`` (centres kept)."""
        mpp = _spot_layer.layer_mpp(layer)
        with self._guard():
            for i in indices:
                x, y, _ = _spot_layer.circle_of(layer.data[i], mpp)
                _set_shape(layer, i, _spot_layer.circle_corners(x, y, diameter_um, mpp), None)
            _emit_changed(layer, indices)
        self._changed(layer)
        self._poke()
