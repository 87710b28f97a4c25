"""Hires/lowres thumbnails of a source image for ``uns['spatial'][lib]['images']``.

Choices (scanpy/Space Ranger conventions):

* ``hires`` has its longest side at most 2000 px, ``lowres`` at most 600 px (Space Ranger's
  sizes). An image already smaller than a target is *not* up-sampled (scale factor 1).
* The scale factor maps full-resolution pixel coordinates to thumbnail pixel coordinates
  (``thumb_xy = fullres_xy * scalef``), one factor for both axes, exactly as scanpy's
  ``sc.pl.spatial`` uses ``tissue_hires_scalef``; the thumbnail size is
  ``round(side * scalef)``, so the rounding error is below half a thumbnail pixel.
* The pixels come from the smallest pyramid level that is at least as large as the
  thumbnail (so no detail is invented and little is read), resized with PIL's Lanczos
  filter (antialiased, with ``reducing_gap`` box pre-reduction). Exception: a level 0 of
  at most :data:`DIRECT_MAX_PIXELS` pixels is used directly, because the coarser levels of a
  JPEG/PNG are *computed* by ``slides`` (a dask area-mean of the whole decoded image:
  about 4 s for a her2st image against about 2 s for PIL's reduce of level 0);
  for such sizes reading level 0 is cheap and the result is the same area-mean.
  ``lowres`` is made from ``hires`` when ``hires`` is at least as large: ``hires`` is
  then simply the cheapest level of adequate size.
* Output is always ``uint8`` RGB ``(h, w, 3)``; an alpha channel is dropped and a grey
  image is repeated to three channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Longest side of each thumbnail, in pixels (Space Ranger's sizes).
THUMBNAIL_SIZES: dict[str, int] = {"hires": 2000, "lowres": 600}
#: Level 0 up to this many pixels is resized directly (see the module docstring).
DIRECT_MAX_PIXELS = 120_000_000


def as_rgb_uint8(array: Any) -> np.ndarray:
    """``array`` (H, W[, C]) as ``uint8`` RGB ``(H, W, 3)``."""
    img = np.asarray(array)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.size and float(np.nanmax(img)) <= 1.0:
            img = img * 255.0
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _resize(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == size_wh:
        return img
    resized = Image.fromarray(img).resize(size_wh, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(resized)


def make_thumbnails(
    levels: Sequence[Any],
    sizes: Mapping[str, int] = THUMBNAIL_SIZES,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Thumbnails of a pyramid (level 0 = full resolution, decreasing sizes).

    Returns ``(images, scalefactors)`` with ``scalefactors[f"tissue_{key}_scalef"]``
    for every ``key`` of ``sizes``. ``levels`` are ``(H, W, C)`` array-likes (lazy dask
    arrays are fine: only the chosen level is computed).
    """
    if not levels:
        raise ValueError("no image levels")
    height, width = (int(v) for v in levels[0].shape[:2])
    images: dict[str, np.ndarray] = {}
    scalefactors: dict[str, float] = {}
    # Largest target first, so that smaller ones can reuse it.
    for key, max_side in sorted(sizes.items(), key=lambda kv: -kv[1]):
        scalef = min(1.0, max_side / max(height, width))
        out_wh = (max(1, round(width * scalef)), max(1, round(height * scalef)))
        source = None
        for img in images.values():
            if img.shape[1] >= out_wh[0] and img.shape[0] >= out_wh[1]:
                source = img  # an already-made, larger thumbnail
        if source is None:
            candidates = [
                lev for lev in levels if lev.shape[1] >= out_wh[0] and lev.shape[0] >= out_wh[1]
            ]
            if height * width <= DIRECT_MAX_PIXELS:
                chosen = levels[0]
            else:
                chosen = min(candidates, key=lambda lev: lev.shape[0] * lev.shape[1])
            source = as_rgb_uint8(chosen)
        images[key] = as_rgb_uint8(_resize(source, out_wh))
        scalefactors[f"tissue_{key}_scalef"] = float(scalef)
    return images, scalefactors


def thumbnails_from_slide(slide: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`make_thumbnails` of a :class:`napari_histoexpress.io.slides.Slide`."""
    return make_thumbnails(list(slide.levels))


def read_png_rgb(path: str | Path) -> np.ndarray:
    """A PNG/JPEG thumbnail (e.g. Space Ranger's) as ``uint8`` RGB."""
    with Image.open(path) as im:
        return as_rgb_uint8(np.asarray(im.convert("RGB")))
