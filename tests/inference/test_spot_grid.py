"""Grid fill: lattice geometry (count, spacing, containment) and defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import Polygon, box

from napari_histoexpress.inference.spot_grid import (
    SPOT_PRESETS_UM,
    default_lattice,
    default_pitch_um,
    grid_spots,
    lattice_centres,
    region_from_shape,
)
from napari_histoexpress.io.spot_table import validate_spots


def _nn(pts: np.ndarray, k: int = 1) -> np.ndarray:
    d, _ = cKDTree(pts).query(pts, k=k + 1)
    return d[:, 1:]


def test_square_grid_counts_spacing_and_centring() -> None:
    pts = lattice_centres(box(0, 0, 1000, 500), 100.0, "square")
    assert len(pts) == 11 * 6
    np.testing.assert_allclose(_nn(pts), 100.0)
    assert pts[:, 0].min() == pytest.approx(0) and pts[:, 0].max() == pytest.approx(1000)
    # 450 µm tall region: 5 rows centred, 25 µm margins on both sides
    pts = lattice_centres(box(0, 0, 1000, 450), 100.0, "square")
    assert len(pts) == 11 * 5
    assert pts[:, 1].min() == pytest.approx(25) and pts[:, 1].max() == pytest.approx(425)


def test_hexagonal_grid_like_visium() -> None:
    region = box(0, 0, 2000, 2000)
    pts = lattice_centres(region, 100.0, "hexagonal")
    nn = _nn(pts, k=6)
    np.testing.assert_allclose(nn[:, 0], 100.0)  # nearest neighbours at one pitch
    rows = np.unique(np.round(pts[:, 1], 6))
    np.testing.assert_allclose(np.diff(rows), 100.0 * math.sqrt(3) / 2)
    # interior spots have exactly six neighbours at one pitch
    inner = (pts[:, 0] > 150) & (pts[:, 0] < 1850) & (pts[:, 1] > 150) & (pts[:, 1] < 1850)
    assert inner.sum() > 100
    np.testing.assert_allclose(nn[inner], 100.0)
    # density of a hexagonal lattice: one spot per pitch² · √3/2
    expected = region.area / (100.0**2 * math.sqrt(3) / 2)
    assert abs(len(pts) - expected) / expected < 0.1
    # odd rows are shifted by half a pitch
    r0 = np.sort(pts[np.isclose(pts[:, 1], rows[0]), 0])
    r1 = np.sort(pts[np.isclose(pts[:, 1], rows[1]), 0])
    assert (r1[0] - r0[0]) % 100.0 == pytest.approx(50.0)


@pytest.mark.parametrize("lattice", ["hexagonal", "square"])
def test_containment_keeps_exactly_the_centres_in_the_region(lattice: str) -> None:
    tri = Polygon([(0, 0), (900, 80), (300, 700)])
    pts = lattice_centres(tri, 55.0, lattice)
    assert len(pts) > 20
    assert shapely.intersects_xy(tri, pts[:, 0], pts[:, 1]).all()
    # the same lattice over the bounding box, filtered: nothing inside was left out
    full = lattice_centres(box(*tri.bounds), 55.0, lattice)
    inside = full[shapely.intersects_xy(tri, full[:, 0], full[:, 1])]
    assert len(inside) == len(pts)
    np.testing.assert_allclose(np.sort(inside, axis=0), np.sort(pts, axis=0))


def test_grid_spots_table_and_defaults() -> None:
    assert default_pitch_um(55) == 100 and default_lattice(55) == "hexagonal"
    assert default_pitch_um(8) == 8 and default_lattice(8) == "square"
    assert default_pitch_um(100) == 200 and default_pitch_um(30) == 60
    assert SPOT_PRESETS_UM["Visium HD 2 µm"] == 2 and SPOT_PRESETS_UM["Custom"] is None
    counter = iter(range(7, 10_000))
    spots = grid_spots(box(0, 0, 400, 400), 16.0, ids=(f"spot_{i}" for i in counter))
    assert len(spots) == 26 * 26  # 16 µm bins tile 400 µm: 25 gaps
    assert spots["id"].iloc[0] == "spot_7" and (spots["source"] == "grid").all()
    assert (spots["diameter_um"] == 16.0).all()
    validate_spots(spots)  # a valid project spots table
    assert len(grid_spots(box(0, 0, 400, 400), 55.0)) > 0


def test_errors_and_limits() -> None:
    with pytest.raises(ValueError, match="pitch"):
        lattice_centres(box(0, 0, 10, 10), 0.0)
    with pytest.raises(ValueError, match="lattice"):
        lattice_centres(box(0, 0, 10, 10), 1.0, "triangular")
    with pytest.raises(ValueError, match="empty"):
        lattice_centres(Polygon(), 1.0)
    with pytest.raises(ValueError, match="at most"):
        lattice_centres(box(0, 0, 10_000, 10_000), 2.0)
    with pytest.raises(ValueError, match="no area"):
        region_from_shape(np.array([[0, 0], [10, 10]]), "line")


def test_region_from_napari_shapes() -> None:
    # napari (row, col) vertices: a rectangle 100 tall, 300 wide
    rect = np.array([[0, 0], [100, 0], [100, 300], [0, 300]], float)
    geom = region_from_shape(rect, "rectangle")
    assert geom.bounds == (0, 0, 300, 100)
    ell = region_from_shape(rect, "ellipse")
    assert ell.area == pytest.approx(math.pi * 150 * 50, rel=1e-3)
    assert ell.centroid.x == pytest.approx(150) and ell.centroid.y == pytest.approx(50)


def test_a_visium_hd_capture_area_at_8_um_fits() -> None:
    from napari_histoexpress.inference.spot_grid import MAX_GRID_SPOTS

    pts = lattice_centres(box(0, 0, 6500, 6500), 8.0, "square")
    assert len(pts) == 813 * 813 <= MAX_GRID_SPOTS  # ~660,000 bins
    np.testing.assert_allclose(np.diff(pts[:2, 0]), 8.0)
    assert (pts[1:, 1] >= pts[:-1, 1]).all()  # row-major, top row first
    with pytest.raises(ValueError, match="at most"):  # 2 µm over it: ~10 million
        lattice_centres(box(0, 0, 6500, 6500), 2.0, "square")


def test_points_in_region_follows_the_grid_containment() -> None:
    from napari_histoexpress.inference.spot_grid import points_in_region

    region = box(0, 0, 100, 50)
    x = np.array([0.0, 50.0, 100.0, 100.1, 50.0, -1.0])
    y = np.array([0.0, 25.0, 50.0, 25.0, 50.1, 10.0])
    assert points_in_region(region, x, y).tolist() == [True, True, True, False, False, False]
    pts = lattice_centres(region, 10.0, "hexagonal")
    assert points_in_region(region, pts[:, 0], pts[:, 1]).all()
    assert points_in_region(region, np.zeros(0), np.zeros(0)).shape == (0,)
