"""A small finished dense-map store for the OME-TIFF heatmap tests (``tests/`` is on pytest's
``pythonpath``): :func:`heatmap_store`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_histoexpress.inference.map_store import DenseMapStore


class _At:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x


GENES = ["ERBB2", "KRT19", "COL1A1"]
MAP_MPP = 8.0
SLIDE_MPP = 0.5


def heatmap_store(
    path: Path,
    *,
    map_shape: tuple[int, int] = (300, 170),
    slide_shape: tuple[int, int] | None = None,
    chunk: int = 64,
    background: tuple[tuple[int, int], ...] = ((0, 0), (2, 1)),
    seed: int = 0,
) -> DenseMapStore:
    """A complete store (pyramid built) of ``map_shape`` map px at :data:`MAP_MPP` µm/px over
    a slide of ``slide_shape`` px at :data:`SLIDE_MPP` (default: the size whose map rounds up
    to ``map_shape``), 4 feature channels, :data:`GENES`, the chunks of ``background``
    skipped as background (NaN)."""
    h, w = map_shape
    ratio = int(MAP_MPP / SLIDE_MPP)
    if slide_shape is None:
        slide_shape = (h * ratio - 5, w * ratio - 7)
    rng = np.random.default_rng(seed)
    c = 4
    store = DenseMapStore.create(
        path,
        map_shape=map_shape,
        feature_dim=c,
        genes=GENES,
        head_W=rng.normal(size=(c, len(GENES))),
        head_b=rng.normal(size=len(GENES)) + 2.0,
        map_mpp=MAP_MPP,
        chunk=chunk,
        normalisation={"target_sum": 1e4, "transform": "log1p"},
        attrs={"slide": {"mpp": SLIDE_MPP, "shape": list(slide_shape), "path": "slide.tif"}},
    )
    ys, xs = np.mgrid[0:h, 0:w]
    feats = np.stack(
        [np.sin(ys / 17.0), np.cos(xs / 11.0), rng.normal(size=(h, w)), (ys + xs) / (h + w)],
        axis=-1,
    ).astype(np.float32)
    rows, cols = store.tile_grid
    for r in range(rows):
        for col in range(cols):
            if (r, col) in background:
                store.mark_done((r, col), computed=False)  # never written: the fill value
                continue
            tile = _At(r * chunk, col * chunk)
            store.write_tile(
                tile, feats[r * chunk : (r + 1) * chunk, col * chunk : (col + 1) * chunk]
            )
            store.mark_done((r, col))
    store.build_pyramid()
    store.set_status("complete")
    return store
