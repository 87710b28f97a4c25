"""Circle geometry of drawn spots and grid regions (Qt-free)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoexpress.inference.spot_shapes import (
    circle_corners,
    circle_of,
    shapes_region,
    snapped_circle,
)


def test_circle_corners_round_trip() -> None:
    corners = circle_corners(100.0, 50.0, 20.0, 2.0)  # µm, at 2 µm/px
    np.testing.assert_allclose(corners, [[20, 45], [30, 45], [30, 55], [20, 55]])
    assert circle_of(corners, 2.0) == pytest.approx((100.0, 50.0, 20.0))


def test_a_circle_is_left_alone() -> None:
    assert snapped_circle(circle_corners(100.0, 50.0, 20.0, 2.0), "ellipse", 2.0) is None


def test_a_stretched_ellipse_snaps_to_the_mean_side() -> None:
    v = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 30.0], [0.0, 30.0]])  # 10 tall, 30 wide
    target = snapped_circle(v, "ellipse", 1.5)
    assert target is not None
    x, y, d = circle_of(target, 1.5)
    assert (x / 1.5, y / 1.5, d / 1.5) == pytest.approx((15.0, 5.0, 20.0))
    assert np.ptp(target[:, 0]) == pytest.approx(np.ptp(target[:, 1]))


def test_a_rotated_ellipse_keeps_its_side_lengths() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    box = np.array([[-5.0, -15.0], [5.0, -15.0], [5.0, 15.0], [-5.0, 15.0]]) @ [[c, -s], [s, c]]
    target = snapped_circle(box + np.array([40.0, 60.0]), "ellipse", 1.0)
    assert target is not None
    assert circle_of(target, 1.0) == pytest.approx((60.0, 40.0, 20.0))


def test_other_shapes_snap_from_their_bounding_box() -> None:
    rect = np.array([[0, 0], [0, 8], [4, 8], [4, 0]], dtype=float)
    target = snapped_circle(np.c_[np.zeros(4), rect], "rectangle", 1.0)  # a slice column first
    assert target is not None and target.shape == (4, 2)
    assert circle_of(target, 1.0) == pytest.approx((4.0, 2.0, 6.0))


def test_a_collapsed_shape_becomes_a_tiny_circle() -> None:
    target = snapped_circle(np.zeros((4, 2)), "rectangle", 1.0)
    assert target is not None and circle_of(target, 1.0)[2] > 0


def test_shapes_region_is_the_union() -> None:
    a = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], dtype=float)  # (row, col)
    b = a + np.array([0.0, 5.0])
    region = shapes_region([(a, "rectangle"), (b, "polygon")])
    assert region is not None and region.area == pytest.approx(150.0)
    assert region.bounds == pytest.approx((0.0, 0.0, 15.0, 10.0))  # x, y
    assert shapes_region([]) is None
    with pytest.raises(ValueError, match="encloses no area"):
        shapes_region([(a[:2], "line")])


def test_circles_to_points_and_back() -> None:
    from napari_histoexpress.inference.spot_shapes import circles_to_points, points_to_circles

    x, y, d = np.array([10.0, 250.5]), np.array([20.0, 30.25]), np.array([8.0, 16.0])
    centres, size = circles_to_points(x, y, d, 0.5)
    np.testing.assert_allclose(centres, [[40.0, 20.0], [60.5, 501.0]])  # (row, col) px
    np.testing.assert_allclose(size, [16.0, 32.0])
    # the same centres as a drawn circle's corners
    np.testing.assert_allclose(circle_corners(x[1], y[1], d[1], 0.5).mean(axis=0), centres[1])
    bx, by, bd = points_to_circles(centres, size, 0.5)
    np.testing.assert_allclose([bx, by, bd], [x, y, d])
    _, scalar = circles_to_points(x, y, 8.0, 0.5)
    np.testing.assert_allclose(scalar, [16.0, 16.0])
