"""Fill a region of a slide with a lattice of spots, like a capture area (Qt-free, shapely).

Presets (:data:`SPOT_PRESETS_UM`) name the spot sizes of the common technologies: Visium HD
bins of 2, 8 and 16 µm, Visium spots of 55 µm, legacy ST spots of 100 µm.

Choices (each is an argument; these are the defaults):

- **Pitch** (centre-to-centre distance, :func:`default_pitch_um`): 100 µm for 55 µm spots
  (Visium's layout); the bin size for Visium HD bins (2, 8, 16 µm: HD bins tile the area with
  no gap, so drawn as circles they touch); twice the diameter otherwise (legacy ST: 100 µm
  spots on a 200 µm pitch, and a gap of one diameter for custom sizes).
- **Lattice** (:func:`default_lattice`): hexagonal for 55 µm spots (Visium's rows are
  offset by half a pitch, rows ``pitch·√3/2`` apart, so every spot has six neighbours at one
  pitch); square for everything else (HD bins and the ST array are square grids).
- **Placement**: the lattice is centred on the region's bounding box (the same margin on
  both sides), so a rectangle gets a symmetric grid.
- **Containment**: a spot is kept when its *centre* lies in the region or on its border (as
  Visium defines a capture area by spot centres). Spots at the border may therefore stick
  out of the region by up to one radius; a rule "whole circle inside" would instead lose the
  border row of a region drawn tightly around the tissue.
- Regions come as shapely geometries in µm, ``x`` to the right and ``y`` down (slide µm,
  as napari shows a slide layer of ``scale = (mpp, mpp)``); :func:`region_from_shape` turns
  a napari shape's world vertices ``(row, col)`` into one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import shapely
from shapely import affinity
from shapely.geometry import Point, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = [
    "HD_BIN_SIZES_UM",
    "LATTICES",
    "SPOT_PRESETS_UM",
    "default_lattice",
    "default_pitch_um",
    "grid_spots",
    "lattice_centres",
    "points_in_region",
    "region_from_shape",
]

#: Spot-diameter presets in µm (``None``: custom size).
SPOT_PRESETS_UM: dict[str, float | None] = {
    "Visium HD 2 µm": 2.0,
    "Visium HD 8 µm": 8.0,
    "Visium HD 16 µm": 16.0,
    "Visium 55 µm": 55.0,
    "ST 100 µm": 100.0,
    "Custom": None,
}
HD_BIN_SIZES_UM = (2.0, 8.0, 16.0)
VISIUM_DIAMETER_UM = 55.0
VISIUM_PITCH_UM = 100.0
LATTICES = ("hexagonal", "square")
#: A grid larger than this is refused: a Visium HD capture area (6.5 mm square) is ~660,000
#: bins at 8 µm and fits; at 2 µm it is ~10 million (draw a smaller region, ≤ 2.8 mm square).
MAX_GRID_SPOTS = 2_000_000


def default_pitch_um(diameter_um: float) -> float:
    """Centre-to-centre distance for spots of ``diameter_um`` (see the module docstring)."""
    d = float(diameter_um)
    if math.isclose(d, VISIUM_DIAMETER_UM):
        return VISIUM_PITCH_UM
    if any(math.isclose(d, s) for s in HD_BIN_SIZES_UM):
        return d
    return 2.0 * d


def default_lattice(diameter_um: float) -> str:
    """``"hexagonal"`` for Visium's 55 µm spots, ``"square"`` otherwise."""
    return "hexagonal" if math.isclose(float(diameter_um), VISIUM_DIAMETER_UM) else "square"


def lattice_centres(
    region: BaseGeometry,
    pitch_um: float,
    lattice: str = "hexagonal",
    *,
    max_spots: int = MAX_GRID_SPOTS,
) -> np.ndarray:
    """``(n, 2)`` centres ``(x, y)`` in µm of the lattice points lying in ``region``.

    Row-major order (top row first, left to right). Raises ``ValueError`` for an empty
    region, a non-positive pitch, an unknown lattice or more than ``max_spots`` points.
    """
    if lattice not in LATTICES:
        raise ValueError(f"lattice must be one of {LATTICES}, got {lattice!r}")
    pitch = float(pitch_um)
    if not pitch > 0 or not math.isfinite(pitch):
        raise ValueError(f"the pitch must be a positive number of µm, got {pitch_um!r}")
    if region.is_empty or region.area <= 0:
        raise ValueError("the region is empty (draw a polygon, rectangle or ellipse)")
    minx, miny, maxx, maxy = region.bounds
    w, h = maxx - minx, maxy - miny
    dy = pitch * math.sqrt(3.0) / 2.0 if lattice == "hexagonal" else pitch
    ny = math.floor(h / dy + 1e-9) + 1
    nx = math.floor(w / pitch + 1e-9) + 1
    if nx * ny > 4 * max_spots:
        raise ValueError(
            f"a {pitch:g} µm pitch over this region makes about {nx * ny} spots "
            f"(at most {max_spots}); draw a smaller region or use a larger pitch"
        )
    y0 = miny + (h - (ny - 1) * dy) / 2.0
    x0 = minx + (w - (nx - 1) * pitch) / 2.0
    ys = y0 + dy * np.arange(ny)
    # row-major, vectorised: odd hexagonal rows sit half a pitch to the right, with one
    # more column so the band stays covered
    odd = (np.arange(ny) % 2 == 1) & (lattice == "hexagonal")
    lengths = np.where(odd, nx + 1, nx)
    starts = np.where(odd, x0 - pitch / 2.0, x0)
    row = np.repeat(np.arange(ny), lengths)
    col = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pts = np.stack([starts[row] + pitch * col, ys[row]], axis=1)
    shapely.prepare(region)
    keep = shapely.intersects_xy(region, pts[:, 0], pts[:, 1])  # centre inside or on border
    pts = pts[keep]
    if len(pts) > max_spots:
        raise ValueError(
            f"the grid would have {len(pts)} spots (at most {max_spots}); "
            "draw a smaller region or use a larger pitch"
        )
    return pts


def grid_spots(
    region: BaseGeometry,
    diameter_um: float,
    *,
    pitch_um: float | None = None,
    lattice: str | None = None,
    ids: Iterable[str] | None = None,
    max_spots: int = MAX_GRID_SPOTS,
) -> pd.DataFrame:
    """A spots table (``id, x_um, y_um, diameter_um, source='grid'``) filling ``region``.

    ``pitch_um`` / ``lattice`` default to :func:`default_pitch_um` /
    :func:`default_lattice` of the diameter; ``ids`` (an iterable, e.g. a counter) names the
    spots (default ``grid_0, grid_1, ...``).
    """
    d = float(diameter_um)
    if not d > 0 or not math.isfinite(d):
        raise ValueError(f"the spot diameter must be a positive number of µm, got {diameter_um!r}")
    pitch = default_pitch_um(d) if pitch_um is None else float(pitch_um)
    kind = default_lattice(d) if lattice is None else lattice
    pts = lattice_centres(region, pitch, kind, max_spots=max_spots)
    n = len(pts)
    if ids is None:
        names = [f"grid_{i}" for i in range(n)]
    else:
        it = iter(ids)
        names = [str(next(it)) for _ in range(n)]
    return pd.DataFrame(
        {
            "id": names,
            "x_um": pts[:, 0],
            "y_um": pts[:, 1],
            "diameter_um": np.full(n, d),
            "source": ["grid"] * n,
        }
    )


def points_in_region(region: BaseGeometry, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Boolean mask of the centres ``(x_um, y_um)`` lying in ``region`` or on its border (the
    containment rule of the grids), vectorised (e.g. to select the bins of a drawn region)."""
    x = np.asarray(x_um, dtype=np.float64).reshape(-1)
    y = np.asarray(y_um, dtype=np.float64).reshape(-1)
    if region is None or region.is_empty or not len(x):
        return np.zeros(len(x), dtype=bool)
    shapely.prepare(region)
    return np.asarray(shapely.intersects_xy(region, x, y), dtype=bool)


def region_from_shape(vertices_rc: np.ndarray, shape_type: str) -> BaseGeometry:
    """A shapely region (µm, ``x, y``) from a napari shape's world vertices ``(row, col)``.

    ``rectangle`` and ``polygon`` are their vertices; an ``ellipse`` is given by the four
    corners of its (possibly rotated) bounding box, as napari stores it. Lines and paths
    enclose no area and raise ``ValueError``.
    """
    v = np.asarray(vertices_rc, dtype=np.float64)[:, -2:][:, ::-1]  # (x, y)
    if shape_type in ("rectangle", "polygon"):
        geom = Polygon(v)
        if not geom.is_valid:
            geom = geom.buffer(0)  # a self-intersecting lasso: its enclosed area
        return geom
    if shape_type == "ellipse":
        centre = v.mean(axis=0)
        e1, e2 = v[1] - v[0], v[2] - v[1]
        a, b = np.linalg.norm(e1) / 2.0, np.linalg.norm(e2) / 2.0
        angle = math.degrees(math.atan2(e1[1], e1[0]))
        disk = Point(0.0, 0.0).buffer(1.0, quad_segs=64)
        geom = affinity.scale(disk, a, b, origin=(0.0, 0.0))
        geom = affinity.rotate(geom, angle, origin=(0.0, 0.0))
        return affinity.translate(geom, centre[0], centre[1])
    raise ValueError(f"a {shape_type} encloses no area; draw a rectangle, polygon or ellipse")
