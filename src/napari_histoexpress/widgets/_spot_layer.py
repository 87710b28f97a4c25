"""The drawn-spots layer: a napari Shapes layer of circles ↔ a spots table in µm.

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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..inference.spot_shapes import circle_corners, circle_of
from ..io.spot_table import SPOT_COLUMNS, empty_spots, validate_spots

__all__ = [
    "MEASURED_SPOTS_KIND",
    "SPOTS_KIND",
    "circle_corners",
    "circle_of",
    "edge_width_px",
    "is_measured_spots_layer",
    "is_spots_layer",
    "layer_mpp",
    "measured_spot_layers",
    "spot_layers",
    "spots_layer_data",
    "spots_table",
    "unwrap",
]

SPOTS_KIND = "drawn_spots"


def is_spots_layer(layer: Any) -> bool:
    md = getattr(layer, "metadata", None) or {}
    return md.get("histoexpress") == SPOTS_KIND


def spot_layers(viewer: Any, slide_layer: Any | None = None) -> list[Any]:
    """Drawn-spots layers of the viewer (only those of ``slide_layer`` when given)."""
    out = [layer for layer in viewer.layers if is_spots_layer(layer)]
    if slide_layer is not None:
        out = [layer for layer in out if layer.metadata.get("slide") == slide_layer.name]
    return out


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
    source``), in the layer's shape order."""
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
