"""The spots layers: drawn spots (a Shapes layer of circles) and bins (a Points layer) ↔ a
spots table in µm.

Representation (the Spots and Export widgets and the tests rely on it):

- a Shapes layer with ``metadata["histoexpress"] == "drawn_spots"`` and
  ``metadata["slide"]`` = the slide layer's name; its ``scale`` is the slide's
  ``(µm/px, µm/px)``, so shape data are slide pixels ``(row, col)`` and napari shows µm;
- every shape is an ``ellipse`` whose bounding box is a square (a circle); the circle's
  centre is the mean of the four corners, its diameter the box side (mean of the two
  sides if a user stretched it before it was snapped back);
- ``features`` carries ``id`` (text, unique across all drawn-spots layers of the slide) and
  ``source`` (``drawn`` / ``grid``).

:func:`spots_table` turns the layer into the table of :mod:`napari_histoexpress.project`
(``id, x_um, y_um, diameter_um, source``), :func:`spots_layer_data` does the reverse. The circle
geometry (:func:`circle_corners`, :func:`circle_of`) lives in
:mod:`napari_histoexpress.inference.spot_shapes`; it is re-exported here.

**Bins layers** hold large grids (Visium HD bins: hundreds to millions of spots), which a
Shapes layer cannot (every ellipse is triangulated and kept as a Python object: 10,000
circles took 14 s to add). Representation:

- a Points layer with ``metadata["histoexpress"] == "spot_bins"`` and ``metadata["slide"]``,
  ``scale`` = the slide's ``(µm/px, µm/px)``; ``data`` = the centres ``(row, col)`` in
  slide px, ``size`` = each bin's diameter in slide px (napari draws it in data units, so a
  bin is drawn at its true size, at least one screen pixel), translucent discs without
  border or antialiasing margin (a lattice of 100,000 bins draws in ~0.2 s on software
  OpenGL instead of ~0.85 s);
- ``features``: ``id_number`` (int64: the bin's id is ``spot_<id_number>``, unique across the
  slide's spots layers, see :mod:`._spot_ids`) and ``source`` (category, ``grid``); the
  diameter is the point's size (napari's hover and features table show the id number).

:func:`bins_table` reads such a layer into a spots table with array operations only (no
per-point Python); :func:`spots_table` does it for either kind; :func:`bins_layer_data`
makes the layer-data tuple.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..inference.spot_shapes import circle_corners, circle_of, circles_to_points, points_to_circles
from ..io.spot_table import SPOT_COLUMNS, empty_spots, ids_from_numbers, validate_spots

__all__ = [
    "BINS_COLOUR",
    "BINS_KIND",
    "MEASURED_SPOTS_KIND",
    "SPOTS_KIND",
    "any_spot_layers",
    "bin_layers",
    "bin_numbers",
    "bins_layer_data",
    "bins_table",
    "circle_corners",
    "circle_of",
    "edge_width_px",
    "is_any_spots_layer",
    "is_bins_layer",
    "is_measured_spots_layer",
    "is_spots_layer",
    "layer_mpp",
    "measured_spot_layers",
    "selected_indices",
    "spot_layers",
    "spots_layer_data",
    "spots_table",
    "unwrap",
]

SPOTS_KIND = "drawn_spots"
BINS_KIND = "spot_bins"
#: Face colour of bins (RGBA): translucent, so the tissue shows through a lattice.
BINS_COLOUR = (1.0, 0.83, 0.0, 0.35)


def _kind(layer: Any) -> Any:
    md = getattr(layer, "metadata", None) or {}
    return md.get("histoexpress")


def is_spots_layer(layer: Any) -> bool:
    """Whether ``layer`` is a drawn-spots (Shapes) layer."""
    return _kind(layer) == SPOTS_KIND


def is_bins_layer(layer: Any) -> bool:
    """Whether ``layer`` is a bins (Points) layer."""
    return _kind(layer) == BINS_KIND


def is_any_spots_layer(layer: Any) -> bool:
    """Whether ``layer`` holds spots of the Spots widget (drawn or bins)."""
    return _kind(layer) in (SPOTS_KIND, BINS_KIND)


def _of_slide(layers: list[Any], slide_layer: Any | None) -> list[Any]:
    if slide_layer is None:
        return layers
    return [layer for layer in layers if layer.metadata.get("slide") == slide_layer.name]


def spot_layers(viewer: Any, slide_layer: Any | None = None) -> list[Any]:
    """Drawn-spots layers of the viewer (only those of ``slide_layer`` when given)."""
    return _of_slide([layer for layer in viewer.layers if is_spots_layer(layer)], slide_layer)


def bin_layers(viewer: Any, slide_layer: Any | None = None) -> list[Any]:
    """Bins layers of the viewer (only those of ``slide_layer`` when given)."""
    return _of_slide([layer for layer in viewer.layers if is_bins_layer(layer)], slide_layer)


def any_spot_layers(viewer: Any, slide_layer: Any | None = None) -> list[Any]:
    """Drawn-spots and bins layers of the viewer, in layer order."""
    layers = [layer for layer in viewer.layers if is_any_spots_layer(layer)]
    return _of_slide(layers, slide_layer)


def selected_indices(layer: Any) -> np.ndarray:
    """The layer's selected shapes or points, sorted (int64; out-of-range ones dropped)."""
    selected = layer.selected_data
    sel = np.fromiter(iter(selected), dtype=np.int64, count=len(selected))
    sel.sort()
    return sel[(sel >= 0) & (sel < len(layer.data))]


def edge_width_px(diameter_um: float, mpp: float) -> float:
    """Outline width of a drawn spot in slide px: 6 % of its diameter (at least 1 px), so
    circles of any size stay visible when zoomed out without hiding small HD bins."""
    return max(1.0, 0.06 * float(diameter_um) / float(mpp))


def unwrap(obj: Any) -> Any:
    """The napari object behind a plugin's ``PublicOnlyProxy`` (napari hands dock widgets a
    proxied viewer, whose layers warn on private attributes), or ``obj`` itself."""
    return getattr(obj, "__wrapped__", obj)


def layer_mpp(layer: Any) -> float:
    return float(layer.scale[-1])


def spots_table(layer: Any) -> pd.DataFrame:
    """The spots of a drawn-spots layer as a table (columns ``id, x_um, y_um, diameter_um,
    source``), in the layer's shape order (a bins layer: :func:`bins_table`)."""
    if is_bins_layer(layer):
        return bins_table(layer)
    if len(layer.data) == 0:
        return empty_spots()
    mpp = layer_mpp(layer)
    circles = np.array([circle_of(v, mpp) for v in layer.data], dtype=float).reshape(-1, 3)
    feats = layer.features
    n = len(circles)
    ids = (
        feats["id"].astype(str).tolist()
        if "id" in feats and len(feats) == n
        else [f"spot_{i}" for i in range(n)]
    )
    source = (
        feats["source"].astype(str).tolist()
        if "source" in feats and len(feats) == n
        else ["drawn"] * n
    )
    df = pd.DataFrame(
        {
            "id": ids,
            "x_um": circles[:, 0],
            "y_um": circles[:, 1],
            "diameter_um": circles[:, 2],
            "source": source,
        }
    )
    return df[list(SPOT_COLUMNS)]


def spots_layer_data(
    spots: pd.DataFrame, *, slide_name: str, mpp: float, name: str | None = None
) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """A layer-data tuple of a drawn-spots Shapes layer holding ``spots``."""
    spots = validate_spots(spots) if len(spots) else empty_spots()
    data = [
        circle_corners(x, y, d, mpp)
        for x, y, d in spots[["x_um", "y_um", "diameter_um"]].to_numpy(float)
    ]
    kwargs: dict[str, Any] = {
        "name": name or f"{slide_name} spots",
        "shape_type": "ellipse",
        "scale": (mpp, mpp),
        "units": ("micrometer", "micrometer"),
        "features": pd.DataFrame(
            {"id": spots["id"].astype(str).tolist(), "source": spots["source"].tolist()}
        ),
        "edge_color": "#00e5ff",
        "edge_width": [edge_width_px(d, mpp) for d in spots["diameter_um"].to_numpy(float)] or 2.0,
        "face_color": "transparent",
        "metadata": {"histoexpress": SPOTS_KIND, "slide": slide_name},
    }
    return (data, kwargs, "shapes")


# --------------------------------------------------------------------------- bins
def bin_numbers(layer: Any) -> np.ndarray:
    """The id numbers of a bins layer's points (int64; ``-1`` where missing, all ``-1`` when
    the features are out of step with the points)."""
    n = len(layer.data)
    feats = layer.features
    if "id_number" not in feats or len(feats) != n:
        return np.full(n, -1, dtype=np.int64)
    col = pd.to_numeric(feats["id_number"], errors="coerce")
    return col.fillna(-1).to_numpy(dtype=np.int64)


def _bin_sources(layer: Any, index: np.ndarray | None) -> np.ndarray:
    feats = layer.features
    n = len(layer.data) if index is None else len(index)
    if "source" not in feats or len(feats) != len(layer.data):
        return np.full(n, "grid", dtype=object)
    col = feats["source"]
    col = col if index is None else col.iloc[index]
    return col.astype(object).where(col.notna(), "grid").to_numpy(dtype=object)


def bins_table(
    layer: Any, index: np.ndarray | None = None, *, numbers: bool = False
) -> pd.DataFrame:
    """The bins of a bins layer (all, or the points ``index``) as a spots table, built from
    the layer's arrays: ``id`` (``spot_<n>``; with ``numbers=True`` the int64 column
    ``id_number`` instead, no text made), ``x_um, y_um, diameter_um, source``."""
    mpp = layer_mpp(layer)
    data = np.asarray(layer.data, dtype=np.float64)
    size = np.asarray(layer.size, dtype=np.float64)
    nums = bin_numbers(layer)
    if index is not None:
        data, size, nums = data[index], size[index], nums[index]
    x, y, d = points_to_circles(data.reshape(-1, 2), size, mpp)
    first: dict[str, Any]
    if numbers:
        first = {"id_number": nums}
    else:
        ids = ids_from_numbers(np.maximum(nums, 0))
        missing = nums < 0  # not numbered yet (no Spots widget hooked the layer)
        if missing.any():
            ids[missing] = [f"point_{i}" for i in np.flatnonzero(missing)]
        first = {"id": ids}
    return pd.DataFrame(
        {**first, "x_um": x, "y_um": y, "diameter_um": d, "source": _bin_sources(layer, index)}
    )


def bins_layer_data(
    x_um: np.ndarray,
    y_um: np.ndarray,
    diameter_um: np.ndarray | float,
    *,
    numbers: np.ndarray,
    slide_name: str,
    mpp: float,
    source: np.ndarray | str = "grid",
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """A layer-data tuple of a bins Points layer: bins centred at ``(x_um, y_um)`` of
    ``diameter_um``, with id numbers ``numbers`` (see the module docstring)."""
    centres, size = circles_to_points(x_um, y_um, diameter_um, mpp)
    n = len(centres)
    src = np.broadcast_to(np.asarray(source, dtype=object), (n,))
    kwargs: dict[str, Any] = {
        "name": name or f"{slide_name} bins",
        "size": size.copy(),
        "scale": (mpp, mpp),
        "units": ("micrometer", "micrometer"),
        "symbol": "disc",
        "face_color": list(BINS_COLOUR),
        "border_width": 0.0,
        # no antialiasing margin, and no 2-px minimum on screen: a zoomed-out lattice is
        # drawn at its true size (≥ 1 px), ~4× fewer fragments on software OpenGL
        "antialiasing": 0.0,
        "canvas_size_limits": (1, 10_000),
        "features": pd.DataFrame(
            {
                "id_number": np.asarray(numbers, dtype=np.int64).reshape(-1),
                "source": pd.Categorical(src),
            }
        ),
        "metadata": {"histoexpress": BINS_KIND, "slide": slide_name},
    }
    return (centres, kwargs, "points")


# --------------------------------------------------------------------------- measured spots
#: ``metadata["histoexpress"]`` of the measured ST spots Points layer made by the reader
#: (:func:`napari_histoexpress._layers.spots_layer_data`; AnnData in ``metadata["adata"]``).
MEASURED_SPOTS_KIND = "spots"


def is_measured_spots_layer(layer: Any) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return md.get("histoexpress") == MEASURED_SPOTS_KIND and md.get("adata") is not None


def measured_spot_layers(viewer: Any) -> list[Any]:
    """The viewer's measured-spots (Points) layers, top-most first."""
    return [layer for layer in reversed(list(viewer.layers)) if is_measured_spots_layer(layer)]


def measured_spots_for(viewer: Any, slide: Any | None) -> Any | None:
    """The measured-spots layer of the slide layer ``slide``: one whose AnnData's source
    image is the slide file, else the only measured-spots layer of the viewer (if just one)."""
    from ..inference import measured_vs_predicted as mvp
    from . import _common

    layers = measured_spot_layers(viewer)
    if slide is None or not layers:
        return None
    path = _common.slide_path(slide)
    if path is not None:
        for layer in layers:
            lib = layer.metadata.get("library_id")
            if mvp.matches_slide(layer.metadata["adata"], path, lib):
                return layer
    return layers[0] if len(layers) == 1 else None
