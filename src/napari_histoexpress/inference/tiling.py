"""Tiles with overlapping halos on the working-resolution grid of a dense model.

A dense model maps an image at the working resolution (``model_mpp`` µm/px) to a feature
map of stride ``s`` (one feature pixel per ``s x s`` input pixels). The slide is cut into
square *cores* of ``tile_px`` input pixels; each core is read with a *halo* of ``halo_px``
pixels on every side, the model runs on the whole window, and only the core of the output is
kept. Each core writes exactly its own region of the output map (cores partition the map),
so a map built tile by tile has no gaps and no double writes.

Choices made here (and why):

- **``tile_px`` and ``halo_px`` are multiples of the stride.** Feature pixel ``k`` covers
  input pixels ``[k*s, (k+1)*s)``. A window that starts at a multiple of ``s`` produces feature
  pixels that sit exactly on the global feature grid, so the halo is a whole number of feature
  pixels (``halo_px // s``) and the core crop is exact: no resampling, no half-pixel shifts.
- **They must even be multiples of the network's total downsampling** (``align``, e.g. 32 for
  a ResNet U-Net), when the model has one. A CNN with stride-2 layers is only translation
  equivariant for shifts that are multiples of its total downsampling: shifting the window by
  another amount changes which input pixels each pooled pixel sees, so tiles would not match
  the map computed on the whole image. Windows start at ``k*tile_px - halo_px``, hence the
  rule. ``align`` defaults to the output stride.
- **All windows have the same size** (``tile_px + 2*halo_px``), including at the right and
  bottom edges where the window runs past the image (it is padded with white, the colour of
  glass). Equal sizes let tiles be batched and keep one compiled shape on accelerators.
- **Halo and receptive field.** With ``halo_px >= receptive_field / 2`` a core pixel never
  sees the zero padding at the window border, and the tiled map equals the whole-image map
  up to float rounding (tested). A smaller halo is a speed/accuracy trade-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SettingError

__all__ = ["Tile", "grid_shape", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile: its core in map pixels and its input window in working pixels.

    Attributes:
        index: flat index in row-major tile-grid order (the key of the ``done`` mask).
        row, col: position in the tile grid.
        map_y0, map_x0, map_y1, map_x1: the core in feature-map pixels (end exclusive,
            clipped to the map).
        in_y0, in_x0: top-left corner of the input window in working-resolution pixels
            (may be negative: white padding).
        in_size: side of the (square) input window in working pixels.
        crop: offset of the core inside the window's feature map, in feature pixels.
    """

    index: int
    row: int
    col: int
    map_y0: int
    map_x0: int
    map_y1: int
    map_x1: int
    in_y0: int
    in_x0: int
    in_size: int
    crop: int

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the core in feature-map pixels."""
        return self.map_y1 - self.map_y0, self.map_x1 - self.map_x0

    @property
    def map_slice(self) -> tuple[slice, slice]:
        """Slices of the core in the feature map."""
        return slice(self.map_y0, self.map_y1), slice(self.map_x0, self.map_x1)


def grid_shape(map_shape_hw: tuple[int, int], tile_px: int, stride: int) -> tuple[int, int]:
    """Number of tile rows and columns covering a map of ``map_shape_hw`` feature pixels."""
    core = tile_px // stride
    return math.ceil(map_shape_hw[0] / core), math.ceil(map_shape_hw[1] / core)


def plan_tiles(
    map_shape_hw: tuple[int, int],
    tile_px: int,
    halo_px: int,
    stride: int,
    *,
    align: int | None = None,
) -> list[Tile]:
    """Plan the tiles covering a feature map of ``map_shape_hw`` pixels.

    Args:
        map_shape_hw: ``(H_map, W_map)``: the feature map, i.e. the working-resolution image
            size divided by ``stride`` (rounded up).
        tile_px: side of a tile core in working pixels (multiple of ``align``).
        halo_px: context added on each side of the core, in working pixels (multiple of
            ``align``, may be 0).
        stride: model output stride (input pixels per feature pixel).
        align: the grid that window origins must sit on (see module docstring); defaults to
            ``stride`` and must be a multiple of it.

    Returns:
        Tiles in row-major order; their cores partition the map exactly.
    """
    align = stride if align is None else int(align)
    if stride < 1 or align < 1 or align % stride:
        raise ValueError(f"align ({align}) must be a positive multiple of stride ({stride})")
    if tile_px <= 0 or tile_px % align:
        raise SettingError(
            "tile_px",
            f"the tile side ({tile_px} px) must be a positive multiple of {align} px "
            "for this model",
        )
    if halo_px < 0 or halo_px % align:
        raise ValueError(f"halo_px ({halo_px}) must be a non-negative multiple of {align}")
    h_map, w_map = (int(v) for v in map_shape_hw)
    if h_map <= 0 or w_map <= 0:
        raise ValueError(f"empty map shape {map_shape_hw}")
    core = tile_px // stride
    rows, cols = grid_shape((h_map, w_map), tile_px, stride)
    tiles: list[Tile] = []
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * core, c * core
            tiles.append(
                Tile(
                    index=r * cols + c,
                    row=r,
                    col=c,
                    map_y0=y0,
                    map_x0=x0,
                    map_y1=min(y0 + core, h_map),
                    map_x1=min(x0 + core, w_map),
                    in_y0=y0 * stride - halo_px,
                    in_x0=x0 * stride - halo_px,
                    in_size=tile_px + 2 * halo_px,
                    crop=halo_px // stride,
                )
            )
    return tiles
