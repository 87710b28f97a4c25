"""Expression of a few spots on a stored dense map, fast enough to follow a mouse drag.

:func:`~.spots.predict_circles` is built for tables of many circles: it reads one map block
per group of circles and returns an AnnData. The Spots widget asks a different question
dozens of times per second: *what is the expression of these one to ten spots, now that one
of them moved by a few µm?* :class:`SpotExpression` answers it with the same geometry and
the same exact aggregation, but keeps what is slow out of the loop:

- the µm/px of the map and of the slide are read once (the store's typed
  :attr:`~.map_store.DenseMapStore.slide_mpp` / :attr:`~.map_store.DenseMapStore.map_mpp`);
  the head is the store's (:meth:`~.map_store.DenseMapStore.apply_head`, float64), so genes
  added to the map (:meth:`~.map_store.DenseMapStore.add_genes`) show at the next query;
- **feature chunks** (the zarr reads and decompression are the slow part: one 128 × 128 × 64
  float16 chunk is 2 MiB to decode) are kept in an LRU cache bounded in bytes, so a spot
  dragged across a region reads each chunk once;
- **per-spot results** (pooled features and covered area) are memoised by the circle's
  ``(x_um, y_um, diameter_um)``, so when one spot of a selection moves only that spot is
  recomputed.

Each circle is aggregated on the window of the map around it only (its bounding box plus a
margin of 2 px, exactly the window :func:`~.spots.aggregate_circles` uses for a circle alone),
with :class:`~napari_histoexpress.geometry.CircleAggregator`: exact area weights at partial
pixels, ``NaN`` for a circle entirely outside the map, the mean over the covered part at the
map's border.
Many circles at once (a grid) are grouped by map block (:attr:`SpotExpression.block_px`) as
in :func:`~.spots.aggregate_circles`, one window per group, unless the group's window would be
more than twice the circles' own windows (a few spots spread over a block: one window each);
the values agree with :func:`~.spots.predict_circles` to float64 rounding (bit for bit for
a circle alone).

A map that is still being predicted (status ``partial``) keeps growing on disk; cached chunks
would then go stale, so build a new :class:`SpotExpression` (or call :meth:`clear_cache`)
when the store changes (the Spots widget does this on ``hub.map_changed``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..geometry import CircleAggregator
from .map_store import DenseMapStore
from .spots import circles_to_grid

__all__ = ["CacheStats", "SpotExpression", "rank_genes"]

_Key = tuple[float, float, float]


@dataclass
class CacheStats:
    """Counters of the feature-chunk cache (for benchmarks and tests)."""

    hits: int = 0
    misses: int = 0
    bytes: int = 0
    chunks: int = 0


class SpotExpression:
    """Every gene's expression over circles of a :class:`DenseMapStore`, cached for live use.

    ``spots`` tables have the columns ``x_um, y_um, diameter_um`` (µm as napari shows a slide
    layer with ``scale = (mpp, mpp)``; see :mod:`.spots`). Thread-safe: a GUI may compute a
    large selection in a worker thread while it queries small ones.

    Args:
        store: the map store (or its path).
        cache_mb: budget of the feature-chunk LRU cache (MiB, decoded chunks).
        memo_size: how many per-circle results to remember.
        block_px: map block used to group many circles into one window (as in
            :func:`~.spots.aggregate_circles`; smaller than its 1024 so a few spread-out
            circles never read a big window).
    """

    def __init__(
        self,
        store: DenseMapStore | str | os.PathLike[str],
        *,
        cache_mb: float = 512.0,
        memo_size: int = 200_000,
        block_px: int = 256,
    ) -> None:
        if not isinstance(store, DenseMapStore):
            store = DenseMapStore.open(store, mode="r")
        self.store = store
        slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
        if slide_mpp is None or map_mpp is None:
            raise InputFileError(
                store.path, "the map store does not record µm/px; cannot place circles in µm"
            )
        self.slide_mpp = slide_mpp
        self.map_mpp = map_mpp
        self.map_shape = store.map_shape
        self.feature_dim = store.feature_dim
        self.chunk = store.chunk
        self._budget = int(cache_mb * 2**20)
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._memo: OrderedDict[_Key, tuple[np.ndarray, float]] = OrderedDict()
        self._memo_size = int(memo_size)
        self.block_px = int(block_px)
        self.stats = CacheStats()
        self._lock = threading.RLock()

    @property
    def genes(self) -> list[str]:
        """The map's genes, in the order of :meth:`values` (the store's, read each time)."""
        return self.store.genes

    # ------------------------------------------------------------------ caches
    def clear_cache(self) -> None:
        """Forget cached chunks and per-circle results (e.g. after the store changed)."""
        with self._lock:
            self._chunks.clear()
            self._memo.clear()
            self.stats = CacheStats()

    def _chunk(self, ci: int, cj: int) -> np.ndarray:
        key = (ci, cj)
        with self._lock:
            block = self._chunks.get(key)
            if block is not None:
                self._chunks.move_to_end(key)
                self.stats.hits += 1
                return block
        ch, cw = self.chunk
        block = self.store.read_features(
            slice(ci * ch, (ci + 1) * ch), slice(cj * cw, (cj + 1) * cw)
        )
        with self._lock:
            self.stats.misses += 1
            if key not in self._chunks:
                self._chunks[key] = block
                self.stats.bytes += block.nbytes
            while self.stats.bytes > self._budget and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self.stats.bytes -= old.nbytes
            self.stats.chunks = len(self._chunks)
        return block

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Features ``[y0:y1, x0:x1]`` (float64) of the map, from cached chunks."""
        ch, cw = self.chunk
        out = np.empty((y1 - y0, x1 - x0, self.feature_dim), dtype=np.float64)
        for ci in range(y0 // ch, (y1 - 1) // ch + 1):
            for cj in range(x0 // cw, (x1 - 1) // cw + 1):
                block = self._chunk(ci, cj)
                ya, yb = max(y0, ci * ch), min(y1, ci * ch + block.shape[0])
                xa, xb = max(x0, cj * cw), min(x1, cj * cw + block.shape[1])
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                    ya - ci * ch : yb - ci * ch, xa - cj * cw : xb - cj * cw
                ]
        return out

    @staticmethod
    def _keys(circles: np.ndarray) -> list[_Key]:
        return [tuple(row) for row in np.round(circles, 9).tolist()]  # type: ignore[misc]

    def pending(self, spots: pd.DataFrame) -> int:
        """How many of ``spots`` are not memoised yet (what a query would compute)."""
        circles = _circles(spots)
        with self._lock:
            return sum(k not in self._memo for k in self._keys(circles))

    # ------------------------------------------------------------------ queries
    def features(self, spots: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features ``(n, C)`` (mean over each circle) and covered area ``(n,)``
        (map px²; 0 → the row is ``NaN``)."""
        circles = _circles(spots)
        n = len(circles)
        pooled = np.full((n, self.feature_dim), np.nan)
        area = np.zeros(n)
        keys = self._keys(circles)
        todo: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                hit = self._memo.get(key)
                if hit is None:
                    todo.append(i)
                else:
                    self._memo.move_to_end(key)
                    pooled[i], area[i] = hit
        if todo:
            idx = np.asarray(todo)
            p, a = self._compute(circles[idx])
            pooled[idx], area[idx] = p, a
            with self._lock:
                for j, i in enumerate(todo):
                    self._memo[keys[i]] = (p[j], float(a[j]))
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
        return pooled, area

    def values(self, spots: pd.DataFrame) -> np.ndarray:
        """``(n, G)`` float64: every gene's mean over each circle (``NaN`` rows for circles
        entirely outside the map), on the model's scale (as :func:`~.spots.predict_circles`)."""
        pooled, _area = self.features(spots)
        return self.store.apply_head(pooled)

    def aggregate(self, spots: pd.DataFrame) -> np.ndarray:
        """``(G,)``: the mean over the spots of each spot's circle mean (spots outside the map
        are left out; all ``NaN`` when none is on the map or there are no spots)."""
        pooled, area = self.features(spots)
        on_map = area > 0
        if not on_map.any():
            return np.full(len(self.genes), np.nan)
        # the head is affine: mean over spots of (f_i W + b) = (mean f_i) W + b
        return self.store.apply_head(pooled[on_map].mean(axis=0))

    def _bounds(self, centres: np.ndarray, radii: np.ndarray) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the window of :func:`.spots.aggregate_circles` for circles."""
        h, w = self.map_shape
        margin = int(np.ceil(radii.max())) + 2
        x0 = int(max(0, np.floor(centres[:, 0].min()) - margin))
        x1 = int(min(w, np.ceil(centres[:, 0].max()) + margin + 1))
        y0 = int(max(0, np.floor(centres[:, 1].min()) - margin))
        y1 = int(min(h, np.ceil(centres[:, 1].max()) + margin + 1))
        return y0, y1, x0, x1

    def _compute(self, circles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centres, radii = circles_to_grid(
            circles[:, 0],
            circles[:, 1],
            circles[:, 2],
            map_mpp=self.map_mpp,
            slide_mpp=self.slide_mpp,
        )
        n = len(radii)
        pooled = np.full((n, self.feature_dim), np.nan)
        area = np.zeros(n)
        block = self.block_px
        by = np.floor(centres[:, 1] / block).astype(np.int64)
        bx = np.floor(centres[:, 0] / block).astype(np.int64)
        groups = pd.Series(np.arange(n)).groupby(by * (1 << 32) + bx).indices
        for members in groups.values():
            idx = np.asarray(members)
            bounds = self._bounds(centres[idx], radii[idx])
            alone = [self._bounds(centres[[i]], radii[[i]]) for i in idx]
            area_alone = sum(_area(b) for b in alone)
            if len(idx) > 1 and _area(bounds) > 2 * area_alone:
                # sparse circles (a selection spread over the block): one window each
                parts = [(idx[[k]], b) for k, b in enumerate(alone)]
            else:
                parts = [(idx, bounds)]
            for sub, (y0, y1, x0, x1) in parts:
                if x1 <= x0 or y1 <= y0:  # entirely outside the map
                    continue
                agg = CircleAggregator(self.window(y0, y1, x0, x1))
                local = centres[sub] - np.array([x0, y0], float)
                vals, covered = agg.aggregate_many(
                    local, radii[sub], reduce="mean", return_area=True
                )
                pooled[sub], area[sub] = vals, covered
        return pooled, area


def _area(bounds: tuple[int, int, int, int]) -> int:
    y0, y1, x0, x1 = bounds
    return max(0, y1 - y0) * max(0, x1 - x0)


def _circles(spots: pd.DataFrame | np.ndarray) -> np.ndarray:
    if isinstance(spots, pd.DataFrame):
        arr = spots[["x_um", "y_um", "diameter_um"]].to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(spots, dtype=np.float64)
    arr = arr.reshape(-1, 3)
    if not np.isfinite(arr).all() or (arr[:, 2] <= 0).any():
        raise ValueError("spot centres and diameters must be finite, diameters positive")
    return arr


def rank_genes(genes: list[str], values: np.ndarray) -> pd.DataFrame:
    """A ``gene, value`` table sorted by value, highest first (``NaN`` last)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(np.where(np.isnan(values), np.inf, -values), kind="stable")
    return pd.DataFrame(
        {"gene": np.asarray(genes, dtype=object)[order], "value": values[order]}
    ).reset_index(drop=True)
