"""Geometry of drawn spots and grid regions (Qt-free): circles ↔ napari shape vertices.

A drawn spot is stored as napari stores an ellipse: the four ``(row, col)`` corners (slide
pixels) of its bounding box. A circle's box is a square; its centre is the mean of the
corners, its diameter the box side. Users stretch shapes (napari's select tool resizes
them freely) and draw ellipses, so :func:`snapped_circle` gives the circle a shape snaps
back to: same centre, diameter = the mean of the two sides. :func:`shapes_region` is the
union (µm) of the shapes a grid fills (rectangles, polygons, ellipses).

Bins (large grids) are points instead: a centre ``(row, col)`` in slide pixels and a
diameter in slide pixels (a napari Points layer's ``data`` and ``size``, which napari
draws in data units); :func:`circles_to_points` and :func:`points_to_circles` convert whole
arrays at once.

Coordinates: ``x_um, y_um, diameter_um`` in µm; vertices in slide pixels of ``mpp`` µm.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from shapely.geometry.base import BaseGeometry

from .spot_grid import region_from_shape

__all__ = [
    "circle_corners",
    "circle_of",
    "circles_to_points",
    "points_to_circles",
    "shapes_region",
    "snapped_circle",
]

#: Snapped diameters never go below this (slide px), so a collapsed shape stays a shape.
MIN_DIAMETER_PX = 1e-6


def circle_corners(x_um: float, y_um: float, diameter_um: float, mpp: float) -> np.ndarray:
    """The four ``(row, col)`` corners (slide px) of a circle's bounding square."""
    r = diameter_um / 2.0 / mpp
    cy, cx = y_um / mpp, x_um / mpp
    return np.array(
        [[cy - r, cx - r], [cy + r, cx - r], [cy + r, cx + r], [cy - r, cx + r]], dtype=float
    )


def circle_of(vertices: np.ndarray, mpp: float) -> tuple[float, float, float]:
    """``(x_um, y_um, diameter_um)`` of an ellipse shape's vertices (slide px)."""
    v = np.asarray(vertices, dtype=float)
    cy, cx = v.mean(axis=0)
    h = float(np.ptp(v[:, 0]))
    w = float(np.ptp(v[:, 1]))
    return float(cx) * mpp, float(cy) * mpp, (h + w) / 2.0 * mpp


def circles_to_points(
    x_um: np.ndarray, y_um: np.ndarray, diameter_um: np.ndarray | float, mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(centres (n, 2) (row, col), diameters (n,))`` in slide px of circles in µm."""
    x = np.asarray(x_um, dtype=np.float64).reshape(-1)
    y = np.asarray(y_um, dtype=np.float64).reshape(-1)
    d = np.broadcast_to(np.asarray(diameter_um, dtype=np.float64), x.shape)
    return np.stack([y / mpp, x / mpp], axis=1), d / mpp


def points_to_circles(
    centres_rc: np.ndarray, diameters_px: np.ndarray, mpp: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_um, y_um, diameter_um)`` arrays of points ``(row, col)`` with diameters in slide
    px (only the last two columns of ``centres_rc`` are read)."""
    c = np.asarray(centres_rc, dtype=np.float64).reshape(-1, np.shape(centres_rc)[-1] or 2)
    d = np.asarray(diameters_px, dtype=np.float64).reshape(-1)
    return c[:, -1] * mpp, c[:, -2] * mpp, d * mpp


def snapped_circle(vertices: np.ndarray, shape_type: str, mpp: float) -> np.ndarray | None:
    """The corners of the circle a shape snaps to, ``None`` when it already is that circle.

    An ``ellipse`` (four corners of a possibly rotated box) keeps its centre and gets the
    mean of its two side lengths as diameter; any other shape keeps the centre of its
    axis-aligned bounding box and the mean of that box's sides. Only the last two columns
    of ``vertices`` are read (napari may prepend slice coordinates).
    """
    v = np.asarray(vertices, dtype=float)[:, -2:]
    if shape_type == "ellipse" and len(v) == 4:
        centre = v.mean(axis=0)
        diameter = float(np.linalg.norm(v[1] - v[0]) + np.linalg.norm(v[2] - v[1])) / 2.0
    else:
        lo, hi = v.min(axis=0), v.max(axis=0)
        centre, diameter = (lo + hi) / 2.0, float(np.mean(hi - lo))
    diameter = max(float(diameter), MIN_DIAMETER_PX)
    target = circle_corners(centre[1] * mpp, centre[0] * mpp, diameter * mpp, mpp)
    if shape_type == "ellipse" and v.shape == target.shape and np.allclose(v, target, atol=1e-6):
        return None
    return target


def shapes_region(shapes: Iterable[tuple[np.ndarray, str]]) -> BaseGeometry | None:
    """The union (µm, ``x, y``) of shapes given as ``(world vertices (row, col), shape
    type)``; ``None`` when there is none. Raises ``ValueError`` for a line or a path
    (:func:`~.spot_grid.region_from_shape`)."""
    import shapely

    geoms = [region_from_shape(vertices, kind) for vertices, kind in shapes]
    return shapely.union_all(geoms) if geoms else None
