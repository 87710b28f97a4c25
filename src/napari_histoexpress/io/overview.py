"""Overview pictures: a slide thumbnail with its spots drawn at their true diameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import spatial


def slide_thumbnail(slide: Any, max_side: int = 1600) -> tuple[np.ndarray, float]:
    """``(rgb, scale)``: the slide resized so its longer side is at most ``max_side`` px.

    Reads the smallest pyramid level that is at least ``max_side`` on its longer side (never
    the full resolution of a big slide); ``scale`` maps level-0 px to thumbnail px.
    """
    from PIL import Image

    h0, w0 = slide.shape
    target = min(1.0, max_side / max(h0, w0))
    level = 0
    for k, arr in enumerate(slide.levels):
        if max(arr.shape[:2]) >= max(h0, w0) * target:
            level = k
    arr = np.asarray(slide.levels[level])
    out_w, out_h = max(1, round(w0 * target)), max(1, round(h0 * target))
    if arr.shape[:2] != (out_h, out_w):
        arr = np.asarray(Image.fromarray(arr).resize((out_w, out_h), Image.Resampling.LANCZOS))
    return arr, out_w / w0


def spots_overview(
    slide: Any, adata: Any, *, color_by: str | None = None, max_side: int = 1600
) -> np.ndarray:
    """RGB thumbnail with every spot drawn as a circle of its true diameter.

    Spots are outlined and filled by ``color_by`` (a gene: log1p counts per 10k; default:
    total counts) with the viridis colormap.
    """
    import matplotlib
    from PIL import Image, ImageDraw

    thumb, scale = slide_thumbnail(slide, max_side)
    xy = spatial.spot_centres_px(adata) * scale
    radius = 0.5 * spatial.spot_diameter_px(adata) * scale
    x = adata.layers.get("counts", adata.X)
    totals = np.asarray(x.sum(axis=1)).ravel().astype(float)
    if color_by is not None:
        col = (
            adata[:, color_by].X
            if "counts" not in adata.layers
            else adata[:, color_by].layers["counts"]
        )
        col = np.asarray(col.todense() if hasattr(col, "todense") else col).ravel()
        values = np.log1p(col / np.maximum(totals, 1) * 1e4)
    else:
        values = totals
    lo, hi = np.percentile(values, [1, 99]) if len(values) else (0, 1)
    norm = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    colours = (matplotlib.colormaps["viridis"](norm)[:, :3] * 255).astype(np.uint8)
    image = Image.fromarray(thumb).convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for (cx, cy), c in zip(xy, colours, strict=True):
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=(*map(int, c), 170), outline=(255, 255, 255, 220))
    return np.asarray(Image.alpha_composite(image, overlay).convert("RGB"))


def write_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB array as PNG atomically (see :func:`.export.write_png_atomic`)."""
    from .export import write_png_atomic

    return write_png_atomic(rgb, path)
