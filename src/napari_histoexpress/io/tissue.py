"""Tissue detection on a slide thumbnail, used to skip background tiles (and, by models
with slide context, to pick a section's tissue lattice nodes).

Choices made here (and why):

- **Saturation + optical density, Otsu threshold.** Glass is white/grey (low saturation, low
  optical density); H&E tissue is pink/purple (saturated). Otsu on the HSV saturation of a
  low-resolution thumbnail is the usual choice of whole-slide pipelines (e.g. CLAM). The Otsu
  value is **clipped** to ``[min_threshold, max_threshold]``: on a slide that is nearly all
  background Otsu would split sensor noise, and on a slide that is nearly all tissue it would
  split pale stroma from nuclei, dropping real tissue. Pixels must also have a mean optical
  density above ``min_od`` (excludes faint coloured dust and glass tint).
- **Small morphology.** Median filter against speckle, closing of small gaps, removal of
  objects smaller than ``min_object_fraction`` of the thumbnail, hole filling, and a final
  dilation by ``dilate_px`` thumbnail pixels: the mask errs on the side of *keeping* tissue
  edges, because a skipped tile is never computed while a needless tile only costs time.
- Blank (all-equal) thumbnails give an empty mask without warnings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: Longest side of the thumbnail used for tissue detection.
TISSUE_THUMBNAIL_SIDE = 1024
#: Thumbnail pixels per tile core side used for tissue detection.
TISSUE_PX_PER_TILE = 16

__all__ = [
    "TISSUE_PX_PER_TILE",
    "TISSUE_THUMBNAIL_SIDE",
    "slide_thumbnail_for_tiles",
    "slide_tissue",
    "tissue_at",
    "tissue_in_box",
    "tissue_mask",
]


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    *,
    min_threshold: float = 0.05,
    max_threshold: float = 0.10,
    min_od: float = 0.05,
    median_px: int = 3,
    closing_px: int = 2,
    min_object_fraction: float = 1e-4,
    dilate_px: int = 2,
) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail ``(h, w, 3)``.

    Args:
        thumbnail_rgb: low-resolution image of the slide, uint8 RGB (an alpha channel is
            ignored).
        min_threshold, max_threshold: bounds of the saturation threshold (0..1).
        min_od: minimum mean optical density ``-log10(I/255)`` over the channels.
        median_px: median filter size on the saturation (0/1 disables).
        closing_px: radius of the binary closing (0 disables).
        min_object_fraction: objects smaller than this fraction of the image are removed.
        dilate_px: final dilation radius in thumbnail pixels (0 disables).

    Returns:
        ``(h, w)`` bool array, True on tissue.
    """
    rgb = np.asarray(thumbnail_rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) RGB thumbnail, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    # uint8 arithmetic and a lookup table: ~20 bytes per thumbnail pixel in all
    cmax = rgb.max(axis=2)
    cmin = rgb.min(axis=2)
    sat = (cmax - cmin).astype(np.float32)
    sat /= np.maximum(cmax, 1).astype(np.float32)
    if median_px and median_px > 1:
        sat = ndi.median_filter(sat, size=median_px)
    od = _OD_LUT[rgb[..., 0]]
    od += _OD_LUT[rgb[..., 1]]
    od += _OD_LUT[rgb[..., 2]]
    od /= 3.0

    thr = _otsu(sat)
    thr = float(np.clip(thr, min_threshold, max_threshold))
    mask = (sat > thr) & (od > min_od)
    del sat, od

    if closing_px > 0:
        mask = ndi.binary_closing(mask, structure=_disk(closing_px), border_value=0)
    if min_object_fraction > 0 and mask.any():
        labels, n = ndi.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= max(1, int(min_object_fraction * mask.size))
        keep[0] = False
        mask = keep[labels]
    mask = ndi.binary_fill_holes(mask)
    if dilate_px > 0 and mask.any():
        mask = ndi.binary_dilation(mask, structure=_disk(dilate_px))
    return np.asarray(mask, dtype=bool)


def tissue_in_box(
    mask: np.ndarray, scale_yx: tuple[float, float], box: tuple[float, float, float, float]
) -> bool:
    """Whether ``mask`` has tissue inside ``box = (y0, x0, y1, x1)`` given in another frame.

    ``scale_yx`` converts the box's frame to mask pixels (mask_px = box_px * scale). The box
    is widened to whole mask pixels (any overlap counts).
    """
    sy, sx = scale_yx
    y0 = max(int(np.floor(box[0] * sy)), 0)
    x0 = max(int(np.floor(box[1] * sx)), 0)
    y1 = min(int(np.ceil(box[2] * sy)), mask.shape[0])
    x1 = min(int(np.ceil(box[3] * sx)), mask.shape[1])
    if y1 <= y0 or x1 <= x0:
        return False
    return bool(mask[y0:y1, x0:x1].any())


def tissue_at(mask: np.ndarray, downsample: float, centres_level0: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: whether ``mask`` (level-0 px per mask px = ``downsample``) is tissue at
    each of ``centres_level0`` ``(n, 2)`` ``(x, y)`` level-0 px (continuous coordinates: the
    mask pixel holding the point; points outside the mask are not tissue)."""
    xy = np.asarray(centres_level0, dtype=np.float64).reshape(-1, 2)
    col = np.floor(xy[:, 0] / float(downsample)).astype(np.int64)
    row = np.floor(xy[:, 1] / float(downsample)).astype(np.int64)
    inside = (row >= 0) & (col >= 0) & (row < mask.shape[0]) & (col < mask.shape[1])
    out = np.zeros(len(xy), dtype=bool)
    out[inside] = np.asarray(mask, dtype=bool)[row[inside], col[inside]]
    return out


def slide_tissue(slide: Any, tile_level0_px: float) -> tuple[np.ndarray, float]:
    """The tissue mask (:func:`tissue_mask`) of :func:`slide_thumbnail_for_tiles` for chunks
    of ``tile_level0_px``, and its downsample: what the predictors decide background chunks
    with (``inference.predict_slide.mark_background_boxes``), and what training of a model
    with slide context picks a section's tissue lattice nodes with."""
    thumb, downsample = slide_thumbnail_for_tiles(slide, tile_level0_px)
    return tissue_mask(thumb), downsample


def slide_thumbnail_for_tiles(slide: Any, tile_level0_px: float) -> tuple[np.ndarray, float]:
    """A small RGB image of the slide and its downsample (level-0 px per thumbnail px).

    Resolution: :data:`TISSUE_PX_PER_TILE` thumbnail pixels per tile side (enough to decide
    whether a tile holds tissue), but never more than :data:`TISSUE_THUMBNAIL_SIDE` pixels on
    the long side, so its cost does not grow with the slide. Taken from the coarsest level
    *stored in the file*, subsampled with a stride: computed levels would decode the whole of
    level 0, plain striding reads only what it keeps (aliasing does not matter here).
    """
    level = max(0, int(getattr(slide, "n_stored_levels", len(slide.levels))) - 1)
    arr = slide.levels[level]
    h0, w0 = slide.shape
    level_ds = h0 / arr.shape[0]
    want = max(max(h0, w0) / TISSUE_THUMBNAIL_SIDE, tile_level0_px / TISSUE_PX_PER_TILE)
    step = max(1, math.floor(want / level_ds))
    thumb = np.asarray(arr[::step, ::step].compute(scheduler="synchronous"), dtype=np.uint8)
    return thumb, h0 / thumb.shape[0]


_OD_LUT = (-np.log10(np.clip(np.arange(256, dtype=np.float64), 1.0, 255.0) / 255.0)).astype(
    np.float32
)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of values in [0, 1]; 0 for a constant image."""
    v = values.ravel()
    if v.size == 0 or float(v.max() - v.min()) < 1e-6:
        return 0.0
    hist, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= r * r
