"""The Spots widget's hold on bins layers: large grids as napari Points, ids as numbers.

A grid of :data:`BIN_LAYER_MIN` spots or more (*Fill with grid*; a Visium HD capture area at
8 µm is ~660,000 bins) goes into a new **bins layer** (:mod:`._spot_layer`: a Points layer,
each bin a translucent disc of its true diameter), because a Shapes layer pays for every
ellipse in Python (10,201 circles took 14 s to appear). Smaller grids and hand-drawn spots
stay editable circles in the drawn-spots layer.

:class:`BinLayers` keeps what :class:`~._spot_drawing.SpotDrawing` keeps for a drawn-spots
layer, with array operations only:

- **ids**: a bin's id is ``spot_<n>``, ``n`` in the int64 feature ``id_number``; a fill
  takes one block of fresh numbers from the slide's counter; points added with napari's
  point tool, pasted or copied by *Duplicate layer* get fresh numbers
  (:func:`~._spot_ids.assign_numbers`), deleted numbers are remembered (their rows leave
  the saved table);
- **changes** (points moved, added, deleted or resized, the layer renamed) bump the slide's
  :meth:`BinLayers.version`, tell the widget to save (the bins table is rewritten only
  when the version moved) and poke the table; napari's select tool reports a drag of
  points only when it ends, so the layer's mouse-drag callback pokes the table on every
  move (it reads ``layer.data``, which napari edits in place): the table follows live;
- selecting points (napari's select tool, a box, or *Select in region*) drives the table as
  selecting shapes does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..io.spot_table import id_numbers
from . import _common, _spot_layer
from ._spot_ids import assign_numbers, layer_ids

if TYPE_CHECKING:
    from ._spot_drawing import HookedLayer, SpotDrawing

#: A grid with at least this many spots becomes a bins layer (below: circles in the
#: drawn-spots layer, each editable like a hand-drawn spot).
BIN_LAYER_MIN = 500


def _defaults(layer: Any) -> None:
    with contextlib.suppress(Exception):  # an empty features table has no columns yet
        layer.feature_defaults = {"id_number": -1, "source": "grid"}


class BinLayers:
    """The bins layers of a :class:`~._spot_drawing.SpotDrawing` (module docstring)."""

    def __init__(self, drawing: SpotDrawing) -> None:
        self.drawing = drawing
        self._version: dict[str, int] = {}  # slide key → bins changes so far
        self._deleted: dict[str, np.ndarray] = {}  # slide key → deleted id numbers

    # ------------------------------------------------------------------ state
    def version(self, slide_key: str) -> int:
        """How many times the slide's bins changed (saving compares it with the saved one)."""
        return self._version.get(slide_key, 0)

    def deleted_numbers(self, slide_key: str) -> np.ndarray:
        """The id numbers of the slide's bins that the user deleted (sorted int64)."""
        return self._deleted.get(slide_key, np.zeros(0, dtype=np.int64))

    def infos(self, slide_key: str) -> list[HookedLayer]:
        """The slide's hooked bins layers."""
        return [i for i in self.drawing.slide_layers(slide_key) if i.numbers is not None]

    def numbers(self, slide_key: str, *, but: Hashable | None = None) -> np.ndarray:
        """The id numbers held by the slide's bins layers (all but the layer key ``but``)."""
        from ._spot_drawing import layer_key

        parts = [
            i.numbers
            for i in self.infos(slide_key)
            if i.numbers is not None and layer_key(i.layer) != but
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _elsewhere(self, slide_key: str, layer: Any) -> np.ndarray:
        """Numbers held by the slide's other spots layers (bins, and drawn ``spot_<n>``)."""
        from ._spot_drawing import layer_key

        drawn = [
            id_numbers(layer_ids(i.layer))
            for i in self.drawing.slide_layers(slide_key)
            if i.numbers is None
        ]
        nums = np.concatenate([self.numbers(slide_key, but=layer_key(layer)), *drawn])
        return np.unique(nums[nums >= 0])

    def table(self, slide_key: str) -> pd.DataFrame:
        """The bins of the slide's open bins layers: ``id_number, x_um, y_um, diameter_um,
        source, layer`` (the table :func:`napari_histoexpress.project.save_spot_bins` takes)."""
        parts = [
            _spot_layer.bins_table(i.layer, numbers=True).assign(layer=str(i.layer.name))
            for i in self.infos(slide_key)
        ]
        parts = [p for p in parts if len(p)]
        if not parts:
            none, text = np.zeros(0), np.zeros(0, dtype=object)
            return pd.DataFrame(
                {"id_number": np.zeros(0, dtype=np.int64), "x_um": none, "y_um": none,
                 "diameter_um": none, "source": text, "layer": text}
            )  # fmt: skip
        return pd.concat(parts, ignore_index=True)

    # ------------------------------------------------------------------ hooks
    def _events(self, layer: Any) -> list[tuple[Any, Callable[[Any], None]]]:
        return [
            (layer.events.data, self._on_data),
            (layer.events.features, self._on_features),
            (layer.events.size, self._on_size),
            (layer.events.name, self._on_name),
            (layer.selected_data.events.items_changed, self._on_selection),
        ]

    def hook(self, info: HookedLayer) -> None:
        """Start listening to a bins layer (``info`` already registered): number its bins."""
        layer = info.layer
        nums = _spot_layer.bin_numbers(layer)
        taken = self._elsewhere(info.slide_key, layer)
        keep = nums >= 0
        if len(taken):
            keep &= ~np.isin(nums, taken)
        info.numbers = nums[keep]  # what it may keep
        self.drawing.slide_ids(info.slide_key).reserve(0, nums[nums >= 0])
        for emitter, callback in self._events(layer):
            emitter.connect(callback)
        layer.mouse_drag_callbacks.append(self._on_drag)
        _defaults(_spot_layer.unwrap(layer))
        if self.normalise(layer, force=True):
            self.changed(layer)

    def unhook(self, layer: Any) -> None:
        """Stop listening to a bins layer (its ids stay given out)."""
        with contextlib.suppress(ValueError):
            layer.mouse_drag_callbacks.remove(self._on_drag)
        for emitter, callback in self._events(layer):
            with contextlib.suppress(Exception):
                emitter.disconnect(callback)

    def normalise(self, layer: Any, *, force: bool = False) -> bool:
        """Apply the id rule to the layer's bins when their numbers moved (a cheap check
        otherwise); returns whether a number changed or a bin was deleted."""
        info = self.drawing.info(layer)
        if info is None or info.numbers is None:
            return False
        nums = _spot_layer.bin_numbers(layer)
        if not force and len(nums) == len(info.numbers) and np.array_equal(nums, info.numbers):
            return False
        new, changed = assign_numbers(
            nums,
            known=info.numbers,
            elsewhere=self._elsewhere(info.slide_key, layer),
            ids=self.drawing.slide_ids(info.slide_key),
        )
        same = len(new) == len(info.numbers) and np.array_equal(new, info.numbers)
        gone = np.zeros(0, dtype=np.int64) if same else np.setdiff1d(info.numbers, new)
        if len(gone):  # deleted by the user: they leave the saved table too
            self._deleted[info.slide_key] = np.union1d(self.deleted_numbers(info.slide_key), gone)
        if changed:
            with self.drawing.guard():
                real = _spot_layer.unwrap(layer)
                feats = real.features
                if len(feats) == len(new) and "id_number" in feats:
                    feats["id_number"] = new  # napari's own table, edited in place
                else:
                    real.features = pd.DataFrame(
                        {
                            "id_number": new,
                            "source": pd.Categorical(_spot_layer.bins_table(real)["source"]),
                        }
                    )
                _defaults(real)
        info.numbers = new
        return changed or bool(len(gone))

    def changed(self, layer: Any) -> None:
        """The layer's bins changed: bump the version, save later, update the table."""
        info = self.drawing.info(layer)
        if info is None:
            return
        self._version[info.slide_key] = self.version(info.slide_key) + 1
        self.drawing.edited(info.slide_key)
        self.drawing.poke()

    # ------------------------------------------------------------------ events
    def _on_data(self, event: Any) -> None:
        if self.drawing.busy:
            return
        action = str(getattr(event, "action", ""))
        if action not in ("added", "changed", "removed"):
            return
        self.normalise(event.source)
        self.changed(event.source)

    def _on_features(self, event: Any) -> None:
        if self.drawing.busy:
            return
        if self.normalise(event.source):
            self.changed(event.source)

    def _on_size(self, event: Any) -> None:
        if not self.drawing.busy:
            self.changed(event.source)

    def _on_name(self, event: Any) -> None:
        self.changed(event.source)  # the saved table names the layer
        self.drawing.layers_changed()

    def _on_drag(self, layer: Any, event: Any) -> Iterator[None]:
        """Mouse-drag callback: poke the table on every move of a drag (live values)."""
        yield
        while event.type == "mouse_move":
            self.drawing.poke()
            yield

    def _on_selection(self, *_: Any) -> None:
        # napari's paste adds points and selects them without a data event
        for info in list(self.drawing.hooked.values()):
            layer = info.layer
            if info.numbers is not None and len(layer.data) != len(info.numbers):
                self.normalise(layer)
                self.changed(layer)
        self.drawing.poke()

    # ------------------------------------------------------------------ edits
    def add_layer(
        self,
        slide: Any,
        spots: pd.DataFrame,
        *,
        name: str | None = None,
        numbers: np.ndarray | None = None,
    ) -> Any:
        """Add a bins layer to the slide holding ``spots`` (``x_um, y_um, diameter_um``,
        optional ``source``); ids are fresh unless ``numbers`` (saved ones) are given."""
        mpp = _common.slide_mpp(slide) or 1.0
        slide_key = self.drawing.slide_key_of(slide)
        n = len(spots)
        if numbers is None:
            start = self.drawing.slide_ids(slide_key).reserve(n, self.numbers(slide_key))
            numbers = np.arange(start, start + n, dtype=np.int64)
        source = spots["source"].to_numpy(dtype=object) if "source" in spots else "grid"
        data, kwargs, _ = _spot_layer.bins_layer_data(
            spots["x_um"].to_numpy(float),
            spots["y_um"].to_numpy(float),
            spots["diameter_um"].to_numpy(float),
            numbers=numbers,
            slide_name=slide.name,
            mpp=mpp,
            source=source,
            name=name or self._new_name(slide, spots),
        )
        layer = self.drawing.viewer.add_points(data, **kwargs)
        self.drawing.hook(layer)
        return layer

    def _new_name(self, slide: Any, spots: pd.DataFrame) -> str:
        d = np.unique(spots["diameter_um"].to_numpy(float))
        base = f"{slide.name} bins" + (f" {d[0]:g} µm" if len(d) == 1 else "")
        names = {layer.name for layer in self.drawing.viewer.layers}
        name, n = base, 2
        while name in names:
            name, n = f"{base} ({n})", n + 1
        return name

    def set_diameter(self, layer: Any, indices: np.ndarray, diameter_um: float) -> None:
        """Give bins ``indices`` the diameter ``diameter_um`` (centres kept)."""
        size = np.array(layer.size, dtype=np.float64)
        size[np.asarray(indices, dtype=np.int64)] = float(diameter_um) / _spot_layer.layer_mpp(
            layer
        )
        with self.drawing.guard():
            layer.size = size
        self.changed(layer)
