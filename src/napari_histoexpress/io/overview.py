"""Overview pictures: a slide thumbnail with its spots drawn at their true diameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..expression import expression_matrix, raw_counts
from . import spatial


def slide_thumbnail(slide: Any, max_side: int = 1600) -> tuple[np.ndarray, float]:
    """``(rgb, scale)``: the slide resized so its longer side is at most ``max_side`` px.

    Reads the smallest pyramid level that is big enough (:func:`.thumbnails.make_thumbnails`);
    ``scale`` maps level-0 px to thumbnail px.
    """
    from .thumbnails import make_thumbnails

    images, scalefactors = make_thumbnails(list(slide.levels), {"overview": max_side})
    return images["overview"], scalefactors["tissue_overview_scalef"]


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
    if color_by is not None:
        values = expression_matrix(adata, [color_by])[:, 0]
    else:
        values = np.asarray(raw_counts(adata).sum(axis=1), dtype=float).ravel()
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
