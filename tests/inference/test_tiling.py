"""Tile planning: cores partition the map, windows sit on the alignment grid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoexpress.inference.tiling import grid_shape, plan_tiles


@pytest.mark.parametrize(("shape", "tile", "halo", "stride"), [((250, 300), 128, 32, 2),
                         ((7, 1), 64, 0, 4), ((64, 64), 256, 64, 4)])  # fmt: skip
def test_cores_partition_the_map(shape: tuple[int, int], tile: int, halo: int, stride: int) -> None:
    tiles = plan_tiles(shape, tile, halo, stride)
    hits = np.zeros(shape, np.int32)
    for t in tiles:
        hits[t.map_slice] += 1
        assert t.in_size == tile + 2 * halo
        assert t.in_y0 == t.map_y0 * stride - halo and t.in_x0 == t.map_x0 * stride - halo
        # the core sits inside the window's feature map at offset `crop`
        mh, mw = t.map_shape
        assert t.crop * stride == halo and t.crop + max(mh, mw) <= t.in_size // stride
    np.testing.assert_array_equal(hits, 1)
    rows, cols = grid_shape(shape, tile, stride)
    assert len(tiles) == rows * cols
    assert [t.index for t in tiles] == list(range(rows * cols))
    assert all(t.index == t.row * cols + t.col for t in tiles)


def test_edge_tiles_are_clipped() -> None:
    tiles = plan_tiles((250, 300), 128, 32, 2)
    last = tiles[-1]
    assert (last.row, last.col) == (3, 4)
    assert last.map_shape == (250 - 3 * 64, 300 - 4 * 64)


@pytest.mark.parametrize(
    ("tile", "halo", "stride", "align"),
    [(102, 0, 4, None), (128, 30, 4, None), (128, 16, 4, 32), (128, 0, 4, 6), (0, 0, 2, None)],
)
def test_rejects_misaligned_sizes(tile: int, halo: int, stride: int, align: int | None) -> None:
    with pytest.raises(ValueError, match="multiple"):
        plan_tiles((100, 100), tile, halo, stride, align=align)


def test_alignment_grid() -> None:
    tiles = plan_tiles((100, 100), 128, 32, 4, align=32)
    assert all(t.in_y0 % 32 == 0 and t.in_x0 % 32 == 0 for t in tiles)
