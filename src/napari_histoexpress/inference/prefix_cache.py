"""Exact circle sums on a stored dense map, streamed through cached per-chunk prefix sums.

One engine serves :func:`~.spots.predict_circles` (a table of up to a whole Visium HD capture
area, ~660,000 bins) and :class:`~.live_spots.SpotExpression` (the Spots widget's live table):

- **Per-chunk row-wise prefix sums.** Each feature chunk of the store (``ch × cw`` pixels,
  ``C`` channels) is read once (:meth:`~.map_store.DenseMapStore.read_features`: never
  predicted pixels are NaN) and turned into float64 prefix sums along x,
  ``P[i, k] = Σ_{j<k} v[i, j]`` for ``k = 0..cw``, plus one more channel, the prefix sum of
  the pixel's validity (1 predicted, 0 background or pending; such pixels' values count as
  0). The slot of a chunk is ``(cw + 1) · ch · (C + 1)`` float64 (8.6 MB for 128 × 128 × 64).
- **Knots.** :func:`~napari_histoexpress.geometry.prefix_knots` turns N circles into sparse
  coefficients on those prefix sums (O(1 + boundary pixels) per row of each circle, exact at
  partial pixels), and one sparse matrix product over the slots gives every circle's sums and
  its predicted area at once: no Python loop over circles, no window copies.
- **Bounded memory.** Slots live in one pool sized by a byte budget (allocated lazily: pages
  never used cost nothing) and are evicted least-recently-used. Circles are processed in
  batches of bounded knot count, in spatial order (by map block), and a batch whose chunks do
  not fit in the pool is summed in groups of chunks (the product is linear), so memory is
  the budget plus one batch whatever the number of circles or the map's size.
- **Threads.** Chunks in use are pinned; reads and prefix sums happen outside the lock, so a
  worker thread aggregating a large selection does not stall small interactive queries.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..geometry import PrefixKnots, knots_matrix, prefix_knots
from .map_store import DenseMapStore

__all__ = ["CacheStats", "PrefixChunkCache", "circle_sums", "iter_circle_sums", "pooled_means"]

#: Concurrent store reads when a query needs chunks of several runs.
_READERS = 4
#: Knots per batch of :func:`circle_sums` (bounds its temporary arrays to ~50 MB).
BATCH_KNOTS = 1 << 19


@dataclass
class CacheStats:
    """Counters of the chunk cache (for benchmarks and tests): chunks served from the cache
    (``hits``), read from the store (``misses``), and the bytes and chunks held now."""

    hits: int = 0
    misses: int = 0
    bytes: int = 0
    chunks: int = 0


class PrefixChunkCache:
    """LRU pool of the row-wise prefix sums of a store's feature chunks (module docstring).

    Args:
        store: the map store.
        budget_bytes: most bytes of prefix sums held (at least one chunk's).
    """

    def __init__(self, store: DenseMapStore, *, budget_bytes: int) -> None:
        self.store = store
        self.map_shape = store.map_shape
        self.chunk = store.chunk
        self.feature_dim = store.feature_dim
        ch, cw = self.chunk
        self._c1 = self.feature_dim + 1
        self._slot_rows = ch * (cw + 1)
        self.slot_bytes = self._slot_rows * self._c1 * 8
        self.capacity = max(1, int(budget_bytes) // self.slot_bytes)
        self._n_cj = -(-self.map_shape[1] // cw)
        # np.zeros maps zero pages lazily: only slots ever filled take memory
        self._pool = np.zeros((self.capacity * self._slot_rows, self._c1))
        self._slots: OrderedDict[int, int] = OrderedDict()  # chunk key → slot, LRU first
        self._free = list(range(self.capacity - 1, -1, -1))
        self._pins = np.zeros(self.capacity, dtype=np.int64)
        self._ready = np.zeros(self.capacity, dtype=bool)
        self._cond = threading.Condition(threading.RLock())
        self.stats = CacheStats()

    # ------------------------------------------------------------------ bookkeeping
    def clear(self) -> None:
        """Forget every cached chunk (chunks in use by another thread stay until released)."""
        with self._cond:
            for key, slot in list(self._slots.items()):
                if self._pins[slot] == 0:
                    del self._slots[key]
                    self._free.append(slot)
            self.stats = CacheStats(bytes=len(self._slots) * self.slot_bytes)
            self.stats.chunks = len(self._slots)

    def _acquire(self, keys: np.ndarray) -> np.ndarray:
        """Slots holding chunks ``keys`` (unique), loaded and pinned."""
        key_list = [int(k) for k in keys]
        with self._cond:
            while True:
                missing = [k for k in key_list if k not in self._slots]
                wanted = set(key_list)
                evictable = len(self._free) + sum(
                    1 for k, s in self._slots.items() if self._pins[s] == 0 and k not in wanted
                )
                if len(missing) <= evictable:
                    break
                self._cond.wait()  # other threads hold the slots; they release them soon
            slots = np.empty(len(key_list), dtype=np.int64)
            for i, k in enumerate(key_list):  # pin the hits first: never evict them below
                s = self._slots.get(k)
                if s is not None:
                    self._slots.move_to_end(k)
                    self._pins[s] += 1
                    slots[i] = s
                    self.stats.hits += 1
            to_load: list[tuple[int, int]] = []
            for i, k in enumerate(key_list):
                if k in self._slots:
                    continue
                s = self._free.pop() if self._free else self._evict()
                self._slots[k] = s
                self._ready[s] = False
                self._pins[s] += 1
                slots[i] = s
                to_load.append((k, s))
                self.stats.misses += 1
            self.stats.chunks = len(self._slots)
            self.stats.bytes = len(self._slots) * self.slot_bytes
        try:
            self._load(to_load)
        except BaseException:
            with self._cond:
                for k, s in to_load:
                    self._slots.pop(k, None)
                    self._free.append(s)
                self._pins[slots] -= 1
                self.stats.chunks = len(self._slots)
                self.stats.bytes = len(self._slots) * self.slot_bytes
                self._cond.notify_all()
            raise
        with self._cond:
            for _, s in to_load:
                self._ready[s] = True
            if to_load:
                self._cond.notify_all()
            while not self._ready[slots].all():  # chunks another thread is loading
                if any(self._slots.get(k) != s for k, s in zip(key_list, slots, strict=True)):
                    # that thread's read failed (its slots were freed): load them here
                    self._pins[slots] -= 1
                    self._cond.notify_all()
                    return self._acquire(keys)
                self._cond.wait()
        return slots

    def _release(self, slots: np.ndarray) -> None:
        with self._cond:
            np.subtract.at(self._pins, slots, 1)
            self._cond.notify_all()

    def _evict(self) -> int:
        for k, s in self._slots.items():  # least recently used first
            if self._pins[s] == 0:
                del self._slots[k]
                return s
        raise RuntimeError("no chunk slot to evict")  # _acquire waits until there is one

    # ------------------------------------------------------------------ loading
    def _load(self, items: list[tuple[int, int]]) -> None:
        """Read chunks into their slots: one store read per horizontal run of chunks, the
        runs read and summed concurrently (zarr's decoding and numpy's large array
        operations run outside the GIL)."""
        if not items:
            return
        ch, cw = self.chunk
        h, w = self.map_shape
        order = sorted(items)
        runs: list[list[tuple[int, int]]] = [[order[0]]]
        for k, s in order[1:]:
            last = runs[-1]
            if k == last[-1][0] + 1 and k // self._n_cj == last[0][0] // self._n_cj:
                last.append((k, s))
            else:
                runs.append([(k, s)])

        def load(part: list[tuple[int, int]]) -> None:
            ci, cj0 = divmod(part[0][0], self._n_cj)
            cj1 = part[-1][0] % self._n_cj + 1
            rows = slice(ci * ch, min(h, (ci + 1) * ch))
            x0 = cj0 * cw
            block = self.store.read_features(rows, slice(x0, min(w, cj1 * cw)))
            for k, s in part:  # each run fills its own slots: no lock needed
                a = (k % self._n_cj) * cw - x0
                self._fill(s, block[:, a : a + cw])

        if len(runs) == 1:
            load(runs[0])
            return
        with ThreadPoolExecutor(min(_READERS, len(runs))) as pool:
            list(pool.map(load, runs))  # re-raises a failed read here

    def _fill(self, slot: int, block: np.ndarray) -> None:
        """Prefix sums of one chunk's ``(h, w, C)`` features into ``slot``.

        The slot is stored column-major, ``(cw + 1, ch, C + 1)``, so the running sum adds
        one contiguous ``(ch, C + 1)`` column at a time (``np.cumsum`` along a non-last axis
        is several times slower); a knot still reads one contiguous ``C + 1`` vector.
        """
        ch, cw = self.chunk
        c = self.feature_dim
        h, w = block.shape[:2]
        view = self._pool[slot * self._slot_rows : (slot + 1) * self._slot_rows]
        p = view.reshape(cw + 1, ch, self._c1)[: w + 1, :h]
        p[0] = 0.0
        p[1:, :, :c] = block.transpose(1, 0, 2)
        p[1:, :, c] = 1.0
        _cumsum_cols(p)
        if np.isfinite(p[w, :, :c]).all():  # a NaN anywhere would reach its row's total
            return
        # missing pixels (background, pending): no value, no weight
        valid = np.isfinite(block).all(axis=2)
        if not valid.any():
            p[...] = 0.0
            return
        p[1:, :, :c] = np.where(valid[..., None], block, 0.0).transpose(1, 0, 2)
        p[1:, :, c] = valid.T
        _cumsum_cols(p)

    # ------------------------------------------------------------------ sums
    def sums(self, knots: PrefixKnots, n: int) -> np.ndarray:
        """``(n, C + 1)`` float64: ``Σ coef · P`` per circle (the last column is the
        predicted area) for knots made with ``tile_w`` = the chunk width."""
        ch, cw = self.chunk
        out = np.zeros((n, self._c1))
        if len(knots.coef) == 0:
            return out
        ci = knots.row // ch
        cj = knots.col // (cw + 1)
        local = (knots.col - cj * (cw + 1)) * ch + (knots.row - ci * ch)  # column-major
        keys, inv = np.unique(ci * self._n_cj + cj, return_inverse=True)
        group = max(1, self.capacity // 2)  # two threads can always work at once
        for g0 in range(0, len(keys), group):
            g1 = min(len(keys), g0 + group)
            slots = self._acquire(keys[g0:g1])
            try:
                if g1 - g0 == len(keys):  # the usual case: every chunk at once
                    part, idx = knots, slots[inv] * self._slot_rows + local
                else:
                    mask = (inv >= g0) & (inv < g1)
                    part = PrefixKnots(*(a[mask] for a in knots))
                    idx = slots[inv[mask] - g0] * self._slot_rows + local[mask]
                out += knots_matrix(part, n, idx, self._pool.shape[0]) @ self._pool
            finally:
                self._release(slots)
        return out


def _cumsum_cols(p: np.ndarray) -> None:
    """In-place cumulative sum along axis 0 of ``(w + 1, h, c)``, one contiguous column at
    a time."""
    for k in range(2, p.shape[0]):
        np.add(p[k - 1], p[k], out=p[k])


def _plan(
    cache: PrefixChunkCache, centres: np.ndarray, radii: np.ndarray, block_px: int
) -> list[np.ndarray]:
    """The batches of :func:`iter_circle_sums`: circle indices in spatial order."""
    n = len(radii)
    if n == 0:
        return []
    h, w = cache.map_shape
    block = max(1, int(block_px))
    by = np.clip(np.floor(centres[:, 1] / block), -1, h // block + 1).astype(np.int64)
    bx = np.clip(np.floor(centres[:, 0] / block), -1, w // block + 1).astype(np.int64)
    order = np.argsort(by * (w // block + 3) + bx, kind="stable")
    # about 2r + 2 rows of 2 + ~4 boundary pixels each, plus one knot per chunk edge crossed
    r = radii[order]
    total = np.cumsum(np.minimum(2.0 * r + 2.0, h + 1) * (6.0 + 4.0 * r / cache.chunk[1]))
    bounds = np.searchsorted(total, np.arange(1, 1 + total[-1] // BATCH_KNOTS) * BATCH_KNOTS)
    edges = np.unique(np.concatenate([[0], bounds, [n]]))
    return [order[a:b] for a, b in itertools.pairwise(edges)]


def iter_circle_sums(
    cache: PrefixChunkCache,
    centres: np.ndarray,
    radii: np.ndarray,
    *,
    block_px: int = 1024,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact sums of the features over circles (map-grid pixels, see
    :mod:`napari_histoexpress.geometry`), batch by batch: ``(index (b,), sums (b, C),
    predicted area (b,) in map px²)``.

    Circles are taken in spatial order (by ``block_px`` map block of their centre, so each
    chunk is read about once) in batches of about :data:`BATCH_KNOTS` knots, so a caller
    that consumes each batch (applies the head, writes its rows) holds one batch at a time
    whatever the number of circles. The values do not depend on the order or the batches
    (each circle's sum is its own row of the sparse product).
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    c = cache.feature_dim
    for idx in _plan(cache, centres, radii, block_px):
        knots = prefix_knots(centres[idx], radii[idx], cache.map_shape, tile_w=cache.chunk[1])
        s = cache.sums(knots, len(idx))
        yield idx, s[:, :c], np.maximum(s[:, c], 0.0)


def circle_sums(
    cache: PrefixChunkCache,
    centres: np.ndarray,
    radii: np.ndarray,
    *,
    block_px: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All of :func:`iter_circle_sums` at once: sums ``(N, C)`` and predicted areas
    ``(N,)``; ``progress(done, total)`` is called after each batch."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    n = len(radii)
    sums = np.zeros((n, cache.feature_dim))
    area = np.zeros(n)
    n_batches = len(_plan(cache, centres, radii, block_px))
    batches = iter_circle_sums(cache, centres, radii, block_px=block_px)
    for done, (idx, s, a) in enumerate(batches, start=1):
        sums[idx], area[idx] = s, a
        if progress is not None:
            progress(done, n_batches)
    return sums, area


def pooled_means(sums: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Means from :func:`circle_sums` (``NaN`` rows where nothing was predicted)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area[:, None] > 0, sums / area[:, None], np.nan)
