"""Expression of the spots on a stored dense map, fast enough to follow a mouse drag.

:func:`~.spots.predict_circles` answers "every gene in each circle of this table" once. The
Spots widget asks a different question dozens of times per second: *what is the expression
of these spots (one, ten dragged together, a selection of 10,000 Visium HD bins), now that
some of them moved by a few µm?* :class:`SpotExpression` answers it with the same geometry
and the same exact aggregation, but keeps what is slow out of the loop:

- the µm/px of the map and of the slide are read once (the store's typed
  :attr:`~.map_store.DenseMapStore.slide_mpp` / :attr:`~.map_store.DenseMapStore.map_mpp`);
  the head is the store's (:meth:`~.map_store.DenseMapStore.apply_head`, float64), so genes
  added to the map (:meth:`~.map_store.DenseMapStore.add_genes`) show at the next query;
- **feature chunks** (the zarr reads and decompression are the slow part: one 128 × 128 × 64
  float16 chunk is 2 MiB to decode) are kept, as their row-wise prefix sums, in an LRU cache
  bounded in bytes (:class:`~.prefix_cache.PrefixChunkCache`), so a spot dragged across a
  region reads each chunk once;
- **per-spot results** (pooled features and covered area) are memoised by the circle's
  ``(x_um, y_um, diameter_um)``, so when one spot of a selection moves only that spot is
  recomputed.

The circles to compute, however many, go through **one vectorised aggregation**
(:func:`~.prefix_cache.circle_sums`): each circle becomes a few sparse coefficients on the
cached prefix sums (:func:`~napari_histoexpress.geometry.prefix_knots`: O(1 + boundary
pixels) per row, exact area weights at partial pixels) and one sparse product sums them all;
there is no Python loop over circles or windows. It is also the engine of
:func:`~.spots.predict_circles`, so the values equal it (bit for bit when the chunks fit in
the cache, float64 rounding otherwise): ``NaN`` for a circle entirely outside the map, the
mean over the covered part at the map's border.

A map that is still being predicted (status ``partial``) keeps growing on disk; cached chunks
would then go stale, so build a new :class:`SpotExpression` (or call :meth:`clear_cache`)
when the store changes (the Spots widget does this on ``hub.map_changed``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd

from ..errors import InputFileError
from .map_store import DenseMapStore
from .prefix_cache import CacheStats, PrefixChunkCache, circle_sums, pooled_means
from .spots import circles_to_grid

__all__ = ["CacheStats", "SpotExpression", "rank_genes"]

_Key = tuple[float, float, float]


class SpotExpression:
    """Every gene's expression over circles of a :class:`DenseMapStore`, cached for live use.

    ``spots`` tables have the columns ``x_um, y_um, diameter_um`` (µm as napari shows a slide
    layer with ``scale = (mpp, mpp)``; see :mod:`.spots`). Thread-safe: a GUI may compute a
    large selection in a worker thread while it queries small ones (chunks in use are pinned,
    reads happen outside the locks).

    Args:
        store: the map store (or its path).
        cache_mb: budget of the chunk cache (MiB of prefix sums: 8.6 MB per 128 × 128 chunk
            of 64 channels).
        memo_size: how many per-circle results to remember.
        block_px: map block by which many circles are ordered and batched
            (:func:`~.prefix_cache.circle_sums`); it does not change the values.
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
        self._cache = PrefixChunkCache(store, budget_bytes=int(cache_mb * 2**20))
        # memo: circle → row of one block of (pooled features, area), LRU order; the block
        # is allocated lazily (untouched pages cost nothing) and rows are gathered at once
        self._memo: OrderedDict[_Key, int] = OrderedDict()
        self._memo_size = max(1, int(memo_size))
        self._memo_rows = np.zeros((self._memo_size, self.feature_dim + 1))
        self.block_px = int(block_px)
        self._lock = threading.RLock()

    @property
    def genes(self) -> list[str]:
        """The map's genes, in the order of :meth:`values` (the store's, read each time)."""
        return self.store.genes

    @property
    def stats(self) -> CacheStats:
        """The chunk cache's counters (hits, misses, bytes and chunks held)."""
        return self._cache.stats

    # ------------------------------------------------------------------ caches
    def clear_cache(self) -> None:
        """Forget cached chunks and per-circle results (e.g. after the store changed)."""
        with self._lock:
            self._cache.clear()
            self._memo.clear()

    def window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Features ``[y0:y1, x0:x1]`` (float64) of the map, read from the store (NaN where
        never predicted)."""
        return self.store.read_features(slice(y0, y1), slice(x0, x1)).astype(np.float64)

    @staticmethod
    def _keys(circles: np.ndarray) -> list[_Key]:
        r = np.round(circles, 9)
        return list(zip(r[:, 0].tolist(), r[:, 1].tolist(), r[:, 2].tolist(), strict=True))

    def pending(self, spots: pd.DataFrame) -> int:
        """How many of ``spots`` are not memoised yet (what a query would compute)."""
        circles = _circles(spots)
        with self._lock:
            memo = self._memo
            return sum(k not in memo for k in self._keys(circles))

    # ------------------------------------------------------------------ queries
    def features(self, spots: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Pooled features ``(n, C)`` (mean over each circle) and covered area ``(n,)``
        (map px²; 0 → the row is ``NaN``)."""
        circles = _circles(spots)
        n = len(circles)
        c = self.feature_dim
        out = np.empty((n, c + 1))
        keys = self._keys(circles)
        with self._lock:
            memo = self._memo
            rows = [memo.get(k) for k in keys]
            todo = [i for i, r in enumerate(rows) if r is None]
            if len(todo) < n:
                hit = [i for i, r in enumerate(rows) if r is not None]
                for i in hit:
                    memo.move_to_end(keys[i])
                out[hit] = self._memo_rows[[r for r in rows if r is not None]]
        if todo:
            idx = np.asarray(todo)
            p, a = self._compute(circles[idx])
            out[idx, :c], out[idx, c] = p, a
            with self._lock:
                self._remember([keys[i] for i in todo], out[idx])
        return out[:, :c], out[:, c]

    def _remember(self, keys: list[_Key], values: np.ndarray) -> None:
        """Memoise rows ``values`` (pooled features + area) of ``keys`` (lock held)."""
        memo = self._memo
        rows = np.empty(len(keys), dtype=np.int64)
        for j, k in enumerate(keys):
            r = memo.get(k)
            if r is None:
                if len(memo) < self._memo_size:
                    r = len(memo)
                else:  # reuse the least recently used circle's row
                    _, r = memo.popitem(last=False)
                memo[k] = r
            else:
                memo.move_to_end(k)
            rows[j] = r
        # a key evicted and re-added within ``keys`` keeps the latest row: write in order
        self._memo_rows[rows] = values

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

    def _compute(self, circles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centres, radii = circles_to_grid(
            circles[:, 0],
            circles[:, 1],
            circles[:, 2],
            map_mpp=self.map_mpp,
            slide_mpp=self.slide_mpp,
        )
        sums, area = circle_sums(self._cache, centres, radii, block_px=self.block_px)
        return pooled_means(sums, area), area


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
