"""Exact aggregation of per-pixel values inside circles (spots), in O(radius) per circle.

Conventions (read these before passing coordinates):

- **Pixel geometry.** ``values[i, j]`` is the value of the unit square
  ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``: pixel *centres* sit at integer coordinates,
  as in napari, scikit-image and ``adata.obsm["spatial"]``. A circle is ``(cx, cy, r)`` in
  the pixel units of the grid being aggregated, ``cx`` along columns, ``cy`` along rows.
  To go from full-resolution pixels ``p`` to a grid whose pixels are ``s`` full-res pixels
  wide (same origin corner), use ``q = (p + 0.5) / s - 0.5`` and ``r_q = r_p / s``
  (:func:`fullres_to_grid`).
- **Exact partial pixels.** Each pixel contributes with weight ``area(square ∩ disk)``,
  computed analytically (no sampling): ``sum = Σ w·v``. Radii far below one pixel work
  (a 2 µm Visium HD bin on a 4 µm/px map is the value of the one or few pixels it
  overlaps, weighted by overlap).
- **Map borders.** Pixels outside the grid have no value and no weight. ``reduce="sum"``
  sums the part of the disk that lies inside the grid; ``reduce="mean"`` divides by the
  area of that part (``π r²`` when the disk is fully inside), i.e. it is the mean over the
  *observed* part of the spot, the natural estimate of an intensive quantity when tissue
  (or the map) ends inside a spot. A disk entirely outside the grid gives ``NaN`` for
  ``"mean"`` and ``0`` for ``"sum"``; :meth:`CircleAggregator.aggregate_many` can also
  return the covered area so callers can flag or drop such spots.
- **Missing pixels.** A pixel whose value is not finite in any channel (NaN: a dense map's
  never-predicted background, see :mod:`.map_store`) is treated like a pixel outside the
  grid: no value and no weight. ``"mean"`` is then the mean over the *predicted* part of the
  disk, ``"sum"`` the sum over it, and the area returned by
  :meth:`CircleAggregator.aggregate_many` is the predicted area only (a disk entirely on
  background gives ``NaN`` / ``0`` and area 0), so the head's bias is never counted as
  expression and callers can report the covered share of each spot.
- **Algorithm.** With row-wise prefix sums over x (``P[i, k] = Σ_{j<k} v[i, j]``, float64 so
  long rows do not lose precision), every row of a disk is a run of fully covered pixels
  (weight 1) with a few boundary pixels at each end whose exact coverage is analytic. By
  summation by parts, ``Σ_k w_k v[i, k] = Σ_k (w_{k-1} − w_k) · P[i, k]``, and the
  coefficients vanish inside the run: a row costs one prefix lookup per boundary pixel plus
  two, whatever its length (:func:`prefix_knots`; the boundary weights are differences of
  the analytic area of the disk in the row's band left of each column edge, one ``sqrt`` and
  one ``arctan2`` per edge). That is O(r) per circle (about ``12 r`` lookups of ``C``
  channels: ``8 r`` boundary pixels, two per row) instead of O(r²), and many circles of any
  sizes are one sparse matrix (circles × prefix entries) times the prefix sums — no loop
  over circles. The same knots work on prefix sums that restart at every tile (``tile_w``),
  which is how :mod:`napari_histoexpress.inference.prefix_cache` streams a stored map chunk
  by chunk. (Reading the run ends from the prefix sums and the boundary pixels from the values
  reads as many ``C``-vectors; knots need only the prefix sums, in one product.)
- **Memory.** The prefix sums hold ``8 · H · (W + 1) · C`` bytes. Aggregate the
  factorised feature map (``C`` = decoder channels, then apply the linear head) rather than a
  map of all genes when ``C`` < number of genes: for a linear head both give the same result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse as sp

__all__ = [
    "LATTICE_CHUNK_NODES",
    "CircleAggregator",
    "LatticeGrid",
    "PrefixKnots",
    "brute_force_circle_sum",
    "circle_pixel_weights",
    "disk_rect_area",
    "fullres_to_grid",
    "knots_matrix",
    "lattice_grid",
    "prefix_knots",
]

Reduce = Literal["mean", "sum"]

# bound on (row runs + boundary pixels) handled per sparse product
_CHUNK_NNZ = 2_000_000


# --------------------------------------------------------------------------------------
# exact geometry
def _segment_area_above(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Area of the disk (centre 0, radius r) with ``Y >= y``."""
    y = np.clip(y, -r, r)
    return r * r * np.arccos(np.clip(y / np.where(r > 0, r, 1.0), -1.0, 1.0)) - y * np.sqrt(
        np.maximum(r * r - y * y, 0.0)
    )


def _prim(t: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Antiderivative of ``sqrt(r² - t²)`` for ``0 <= t <= r``."""
    rs = np.where(r > 0, r, 1.0)
    return 0.5 * (
        t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(np.clip(t / rs, -1.0, 1.0))
    )


def _corner_area(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Area of the disk with ``X >= x, Y >= y`` for ``x, y >= 0``."""
    inside = x * x + y * y < r * r
    xe = np.sqrt(np.maximum(r * r - y * y, 0.0))
    xs = np.minimum(x, xe)
    area = _prim(xe, r) - _prim(xs, r) - y * (xe - xs)
    return np.where(inside, np.maximum(area, 0.0), 0.0)


def _quadrant_area(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Area of the disk with ``X >= x, Y >= y`` for any signs (by reflection symmetry)."""
    ax, ay = np.abs(x), np.abs(y)
    q = _corner_area(ax, ay, r)
    hx = _segment_area_above(ax, r)
    hy = _segment_area_above(ay, r)
    full = np.pi * r * r
    return np.where(
        x >= 0,
        np.where(y >= 0, q, hx - q),
        np.where(y >= 0, hy - q, full - hx - hy + q),
    )


def disk_rect_area(
    x0: np.ndarray | float,
    x1: np.ndarray | float,
    y0: np.ndarray | float,
    y1: np.ndarray | float,
    r: np.ndarray | float,
) -> np.ndarray:
    """Exact area of ``[x0, x1] x [y0, y1]`` ∩ disk of radius ``r`` centred at the origin.

    Inclusion–exclusion of four "quadrant" areas ``area(disk ∩ {X >= x, Y >= y})``, each a
    closed form in ``arcsin``/``arccos``; vectorised, float64.
    """
    x0, x1, y0, y1, r = (np.asarray(a, dtype=np.float64) for a in (x0, x1, y0, y1, r))
    area = (
        _quadrant_area(x0, y0, r)
        - _quadrant_area(x1, y0, r)
        - _quadrant_area(x0, y1, r)
        + _quadrant_area(x1, y1, r)
    )
    return np.clip(area, 0.0, np.maximum((x1 - x0) * (y1 - y0), 0.0))


def fullres_to_grid(
    centres_xy: np.ndarray, radii: np.ndarray | float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Convert full-resolution pixel circles to a grid whose pixels are ``scale`` px wide.

    Both grids share the top-left corner of pixel (0, 0) and use centre-at-integer pixels.
    """
    centres = (np.asarray(centres_xy, dtype=np.float64) + 0.5) / scale - 0.5
    return centres, np.asarray(radii, dtype=np.float64) / scale


# --------------------------------------------------------------------------------------
# per-row decomposition of many circles
class _Runs:
    """Row decomposition of N circles on an (H, W) grid (internal).

    Per (circle, row) pair: ``f0:f1`` fully covered columns; ``[t0, f0)`` and ``[f1, t1)``
    boundary columns (partial coverage).
    """

    def __init__(self, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, shape: tuple[int, int]):
        h, w = shape
        self.n = len(cx)
        u = cx + 0.5  # edge coordinates: pixel j spans [j, j + 1]
        v = cy + 0.5
        i0 = np.clip(np.floor(v - r), 0, h).astype(np.int64)
        i1 = np.clip(np.ceil(v + r), 0, h).astype(np.int64)
        n_rows = np.maximum(i1 - i0, 0)
        self.pair_circle = np.repeat(np.arange(self.n), n_rows)
        starts = np.cumsum(n_rows) - n_rows
        row = i0[self.pair_circle] + (np.arange(len(self.pair_circle)) - starts[self.pair_circle])
        uc, vc, rc = u[self.pair_circle], v[self.pair_circle], r[self.pair_circle]
        rowf = row.astype(np.float64)
        d_near = np.clip(vc, rowf, rowf + 1.0) - vc
        d_far = np.maximum(np.abs(rowf - vc), np.abs(rowf + 1.0 - vc))
        r2 = rc * rc
        hw_out = np.sqrt(np.maximum(r2 - d_near * d_near, 0.0))
        has_inner = d_far * d_far < r2
        hw_in = np.sqrt(np.maximum(r2 - d_far * d_far, 0.0))
        t0 = np.clip(np.floor(uc - hw_out), 0, w).astype(np.int64)
        t1 = np.clip(np.ceil(uc + hw_out), 0, w).astype(np.int64)
        f0 = np.clip(np.ceil(uc - hw_in), t0, t1).astype(np.int64)
        f1 = np.clip(np.floor(uc + hw_in), t0, t1).astype(np.int64)
        empty = ~has_inner | (f1 <= f0)
        f0 = np.where(empty, t1, f0)
        f1 = np.where(empty, t1, f1)
        self.row, self.t0, self.t1, self.f0, self.f1 = row, t0, t1, f0, f1
        self.u, self.v, self.r = u, v, r

    def boundary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Boundary pixels: ``(circle, row, col, exact weight)``."""
        n_left = self.f0 - self.t0
        n_right = self.t1 - self.f1
        n_edge = n_left + n_right
        pair = np.repeat(np.arange(len(self.row)), n_edge)
        k = np.arange(len(pair)) - (np.cumsum(n_edge) - n_edge)[pair]
        nl = n_left[pair]
        col = np.where(k < nl, self.t0[pair] + k, self.f1[pair] + (k - nl))
        circ = self.pair_circle[pair]
        row = self.row[pair]
        x0 = col - self.u[circ]
        y0 = row - self.v[circ]
        wgt = disk_rect_area(x0, x0 + 1.0, y0, y0 + 1.0, self.r[circ])
        return circ, row, col, wgt


def _as_circles(
    centres: np.ndarray, radii: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(centres),)).copy()
    if not (np.all(np.isfinite(centres)) and np.all(np.isfinite(radii))):
        raise ValueError("circle centres and radii must be finite")
    if np.any(radii < 0):
        raise ValueError("circle radii must be >= 0")
    return centres[:, 0].copy(), centres[:, 1].copy(), radii


def circle_pixel_weights(
    cx: float, cy: float, r: float, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pixels of an ``(H, W)`` grid that a disk overlaps: ``(rows, cols, weights)``.

    ``weights`` is the exact overlap area in px² (1 for interior pixels); pixels outside the
    grid are left out, so ``weights.sum()`` is the area of the disk inside the grid.
    O(r²) output: for dense masks (training, references); aggregation uses
    :class:`CircleAggregator`.
    """
    xs, ys, rs = _as_circles(np.array([[cx, cy]]), r)
    runs = _Runs(xs, ys, rs, (int(shape[0]), int(shape[1])))
    _, b_row, b_col, b_w = runs.boundary()
    n_full = runs.f1 - runs.f0
    pair = np.repeat(np.arange(len(runs.row)), n_full)
    k = np.arange(len(pair)) - (np.cumsum(n_full) - n_full)[pair]
    rows = np.concatenate([runs.row[pair], b_row])
    cols = np.concatenate([runs.f0[pair] + k, b_col])
    weights = np.concatenate([np.ones(len(pair)), b_w])
    keep = weights > 0
    order = np.lexsort((cols[keep], rows[keep]))
    return rows[keep][order], cols[keep][order], weights[keep][order]


# --------------------------------------------------------------------------------------
# circle sums as sparse combinations of row-wise prefix sums
class PrefixKnots(NamedTuple):
    """Exact circle sums as sparse combinations of row-wise prefix sums.

    For values ``v`` with row-wise prefix sums ``P[i, k] = Σ_{j<k} v[i, j]`` (``P[i, 0] = 0``),
    the exact area-weighted sum of circle ``n`` is ``Σ coef · P[row, col]`` over the knots
    with ``circle == n`` (see :func:`prefix_knots`; with ``tile_w`` the prefix sums restart at
    every tile of ``tile_w`` columns and ``col`` indexes the tiled layout). Knots are ordered
    by circle, so ``circle`` is non-decreasing (a CSR matrix's rows).
    """

    circle: np.ndarray  # (K,) int64
    row: np.ndarray  # (K,) int64
    col: np.ndarray  # (K,) int64
    coef: np.ndarray  # (K,) float64


def _antiderivative(t: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``S(t) = ∫_0^t sqrt(r² − s²) ds`` for ``|t| <= r`` (odd in t; ``S(±r) = ±πr²/4``)."""
    s = np.sqrt(np.maximum((r - t) * (r + t), 0.0))
    return 0.5 * (t * s + r * r * np.arctan2(t, s))


def _band_side(y: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-row constants of one band edge ``Y = y`` for :func:`_below`."""
    a = np.abs(y)
    tau = np.sqrt(np.maximum((r - a) * (r + a), 0.0))  # |X| where the circle crosses Y = ±a
    return a, np.sign(y), tau, a * tau - _antiderivative(tau, r)


def _below(
    xc: np.ndarray, s_x: np.ndarray, a: np.ndarray, tau: np.ndarray, d: np.ndarray
) -> np.ndarray:
    """``∫_{-r}^{xc} min(a, sqrt(r² − t²)) dt − πr²/4`` for ``a >= 0``, ``|xc| <= r``.

    ``s_x = S(xc)`` and ``tau``, ``d`` come from :func:`_band_side`; the three pieces are the
    arc (``|t| > tau``), the flat top ``a`` (``|t| < tau``) and the arc again.
    """
    return np.where(xc <= -tau, s_x, np.where(xc < tau, a * xc + d, s_x + 2.0 * d))


def _knots(runs: _Runs, tile_w: int | None) -> PrefixKnots:
    """The knots of every circle of ``runs`` (see :func:`prefix_knots`)."""
    t0, f0, f1, t1, row = runs.t0, runs.f0, runs.f1, runs.t1, runs.row
    n_pairs = len(row)
    full = f1 > f0  # the row has fully covered pixels
    # groups of contiguous boundary pixels, in (circle, row) order: the left end of every
    # row (the whole row when it has no interior) and the right end of rows with one
    per_pair = 1 + full.astype(np.int64)
    g_pair = np.repeat(np.arange(n_pairs), per_pair)
    g_first = np.cumsum(per_pair) - per_pair
    right = np.zeros(len(g_pair), dtype=bool)
    right[g_first[full] + 1] = True
    g_full = full[g_pair]
    lo = np.where(right, f1[g_pair], t0[g_pair])
    hi = np.where(right, t1[g_pair], np.where(g_full, f0[g_pair], t1[g_pair]))
    w_before = right.astype(np.float64)  # weight of the pixel left of the group's first edge
    w_after = (g_full & ~right).astype(np.float64)  # ... right of its last edge
    n_e = hi - lo + 1  # edges lo..hi
    e_group = np.repeat(np.arange(len(lo)), n_e)
    e_first = np.cumsum(n_e) - n_e
    col = lo[e_group] + (np.arange(len(e_group)) - e_first[e_group])
    e_pair = g_pair[e_group]
    # G(x): area of the disk in the pair's row band left of column edge x, analytic
    pc = runs.pair_circle
    r_p = runs.r[pc]
    ya = row - runs.v[pc]
    aa, sa, ta, da = _band_side(ya, r_p)
    ab, sb, tb, db = _band_side(ya + 1.0, r_p)
    r_e = r_p[e_pair]
    xc = np.clip(col - runs.u[pc][e_pair], -r_e, r_e)
    s_x = _antiderivative(xc, r_e)
    # G = J(x, yb) − J(x, ya), J(x, y) = ∫_{-r}^{x} clip(y, −s(t), s(t)) dt = sign(y) ·
    # (_below + πr²/4), here up to a constant per row, which the differences below cancel
    below_b = _below(xc, s_x, ab[e_pair], tb[e_pair], db[e_pair])
    below_a = _below(xc, s_x, aa[e_pair], ta[e_pair], da[e_pair])
    g = sb[e_pair] * below_b - sa[e_pair] * below_a
    # pixel weights are differences of G; a knot's coefficient is (weight of the pixel on its
    # left) − (weight on its right): Σ_k w_k (P[k+1] − P[k]) summed by parts
    dg = np.diff(g)
    e_last = e_first + n_e - 1
    left = np.empty(len(g))
    left[1:] = dg
    left[e_first] = w_before
    right_w = np.empty(len(g))
    right_w[:-1] = dg
    right_w[e_last] = w_after
    coef = left - right_w
    circle = pc[e_pair]
    row_e = row[e_pair]
    if tile_w is None:
        return PrefixKnots(circle, row_e, col, coef)
    # prefix sums restart at every tile: a knot at a tile's first column reads 0 (dropped),
    # and the row's sum over each tile it leaves adds that tile's total (its last prefix
    # entry) times the weight of the tile's last pixel
    tw = int(tile_w)
    tile = col // tw
    local = col - tile * tw
    keep = local > 0
    n_off = t1 // tw - t0 // tw  # tile edges e with t0 < e <= t1
    o_pair = np.repeat(np.arange(n_pairs), n_off)
    k = np.arange(len(o_pair)) - (np.cumsum(n_off) - n_off)[o_pair]
    edge = (t0[o_pair] // tw + 1 + k) * tw
    pix = edge - 1
    inner = (pix >= f0[o_pair]) & (pix < f1[o_pair])
    grp = g_first[o_pair] + (full[o_pair] & (pix >= f1[o_pair]))
    at = np.where(inner, 0, e_first[grp] + pix - lo[grp])
    w_pix = np.where(inner, 1.0, dg[at] if len(dg) else 0.0)
    pair_all = np.concatenate([e_pair[keep], o_pair])
    order = np.argsort(pair_all, kind="stable")  # two sorted runs: a linear merge
    return PrefixKnots(
        np.concatenate([circle[keep], pc[o_pair]])[order],
        np.concatenate([row_e[keep], row[o_pair]])[order],
        np.concatenate([(tile * (tw + 1) + local)[keep], (edge // tw - 1) * (tw + 1) + tw])[order],
        np.concatenate([coef[keep], w_pix])[order],
    )


def prefix_knots(
    centres: np.ndarray,
    radii: np.ndarray | float,
    shape: Sequence[int],
    *,
    tile_w: int | None = None,
) -> PrefixKnots:
    """Exact sums over N disks on an ``(H, W)`` grid as knots on row-wise prefix sums.

    ``centres`` is ``(N, 2)`` as ``(x, y)`` (module conventions); pixels outside the grid
    have no weight. For each (circle, row) the exact weights are 1 on a run of fully covered
    pixels and fractional only on the few boundary pixels at its two ends, so by summation
    by parts the row's weighted sum is ``Σ (w_{k-1} − w_k) · P[row, k]`` over the boundary
    columns ``k`` only (plus one knot at each end of the run): O(1 + boundary pixels) per
    row, whatever the run's length. The boundary weights are differences of the analytic
    area of the disk in the row band left of each column edge (one ``sqrt`` and one
    ``arctan2`` per edge), so they equal :func:`disk_rect_area` per pixel to float64 rounding.

    ``tile_w``: the prefix sums restart every ``tile_w`` columns (``P`` of a tile has
    ``tile_w + 1`` entries, the first 0), as when each cached chunk of a map holds its own
    prefix sums; ``col`` is then ``tile · (tile_w + 1) + local`` with ``1 <= local <= tile_w``.
    """
    cx, cy, r = _as_circles(centres, radii)
    return _knots(_Runs(cx, cy, r, (int(shape[0]), int(shape[1]))), tile_w)


def knots_matrix(knots: PrefixKnots, n: int, index: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """``(n, n_cols)`` CSR matrix of the knots (rows = circles, columns = ``index``, the flat
    position of each knot's prefix entry in the caller's storage)."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(knots.circle, minlength=n), out=indptr[1:])
    return sp.csr_matrix((knots.coef, index, indptr), shape=(n, n_cols))


# --------------------------------------------------------------------------------------
class CircleAggregator:
    """Sum / mean of an ``(H, W, C)`` array over many circles, exact and O(r) per circle.

    Build once per map (``O(H·W·C)`` prefix sums), then query circles interactively.
    See the module docstring for pixel geometry and border conventions.
    """

    def __init__(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.ndim == 2:
            values = values[..., None]
        if values.ndim != 3:
            raise ValueError(f"values must be (H, W, C) or (H, W), got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        n_channels = values.shape[2]
        valid = np.isfinite(values).all(axis=2)
        self.has_missing = not bool(valid.all())
        if self.has_missing:
            # zero the missing pixels and carry their validity as one more channel, whose
            # aggregate is the predicted area of each disk
            values = np.concatenate(
                [np.where(valid[..., None], values, 0.0), valid[..., None]], axis=2
            )
        self.values = values
        self._n_channels = int(n_channels)
        self.shape = values.shape[:2]
        h, w, c = values.shape
        prefix = np.empty((h, w + 1, c), dtype=np.float64)
        prefix[:, 0] = 0.0
        prefix[:, 1:] = values
        # running sum one column at a time: the same additions as np.cumsum(axis=1), each
        # over a whole (H, C) column (np.cumsum along a middle axis is ~10x slower)
        for k in range(2, w + 1):
            np.add(prefix[:, k - 1], prefix[:, k], out=prefix[:, k])
        self._prefix = prefix.reshape(h * (w + 1), c)

    @property
    def n_channels(self) -> int:
        return self._n_channels

    def aggregate(self, cx: float, cy: float, r: float, *, reduce: Reduce = "mean") -> np.ndarray:
        """``(C,)`` sum or mean of the values over one disk (float64)."""
        return self.aggregate_many(np.array([[cx, cy]]), np.array([r]), reduce=reduce)[0]

    def aggregate_many(
        self,
        centres: np.ndarray,
        radii: np.ndarray | float,
        reduce: Reduce = "mean",
        *,
        return_area: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``(N, C)`` sums or means over N disks (``centres`` is ``(N, 2)`` as ``(x, y)``).

        With ``return_area=True`` also returns the ``(N,)`` area (px²) of each disk that
        lies inside the grid on non-missing pixels (the weight of the mean).
        """
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        cx, cy, r = _as_circles(centres, radii)
        n = len(cx)
        sums = np.zeros((n, self.n_channels), dtype=np.float64)
        area = np.zeros(n, dtype=np.float64)
        # chunk so that the knots per product stay bounded: ~ (2r + 2) rows with ~ 2 + 4
        # boundary pixels each
        cost = 10.0 * (r + 2.0)
        bounds = np.searchsorted(
            np.cumsum(cost), np.arange(1, 1 + cost.sum() // _CHUNK_NNZ) * _CHUNK_NNZ
        )
        edges = np.unique(np.concatenate([[0], bounds, [n]]))
        for a, b in itertools.pairwise(edges):
            if b > a:
                sums[a:b], area[a:b] = self._sums(cx[a:b], cy[a:b], r[a:b])
        if reduce == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(area[:, None] > 0, sums / area[:, None], np.nan)
        else:
            out = sums
        return (out, area) if return_area else out

    def _sums(self, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        n = len(cx)
        knots = _knots(_Runs(cx, cy, r, (h, w)), None)
        # one sparse product reads only the knots' prefix rows (never the whole map)
        mat = knots_matrix(knots, n, knots.row * (w + 1) + knots.col, h * (w + 1))
        sums = np.asarray(mat @ self._prefix)
        if self.has_missing:
            return sums[:, : self._n_channels], np.maximum(sums[:, self._n_channels], 0.0)
        # the area is the same sum over a map of ones, whose prefix sums are the columns
        area = np.bincount(knots.circle, weights=knots.coef * knots.col, minlength=n)
        return sums, np.maximum(area, 0.0)


# --------------------------------------------------------------------------------------
def brute_force_circle_sum(
    values: np.ndarray, cx: float, cy: float, r: float, supersample: int | None = None
) -> np.ndarray:
    """Reference ``(C,)`` weighted sum over a disk, O(r²): every pixel of the bounding box.

    ``supersample=None``: exact per-pixel overlap area (:func:`disk_rect_area` on every
    pixel of the box); ``supersample=s``: coverage estimated with an ``s x s`` grid of
    sample points per pixel (independent of the analytic formula; error ~ 1/s per boundary
    pixel). Same geometry and border conventions as :class:`CircleAggregator`.
    """
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[..., None]
    h, w = values.shape[:2]
    ra = int(np.floor(cy - r - 0.5)), int(np.ceil(cy + r + 0.5)) + 1
    ca = int(np.floor(cx - r - 0.5)), int(np.ceil(cx + r + 0.5)) + 1
    rows = np.arange(max(ra[0], 0), min(ra[1], h))
    cols = np.arange(max(ca[0], 0), min(ca[1], w))
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros(values.shape[2])
    if supersample is None:
        y0 = rows[:, None] - 0.5 - cy
        x0 = cols[None, :] - 0.5 - cx
        wgt = disk_rect_area(x0, x0 + 1.0, y0, y0 + 1.0, r)
    else:
        s = int(supersample)
        off = (np.arange(s) + 0.5) / s - 0.5
        ys = (rows[:, None] + off[None, :] - cy) ** 2  # (nr, s)
        xs = (cols[:, None] + off[None, :] - cx) ** 2  # (nc, s)
        inside = ys[:, None, :, None] + xs[None, :, None, :] <= r * r
        wgt = inside.mean(axis=(2, 3))
    block = values[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    return np.einsum("ij,ijc->c", wgt, block)


# ---------------------------------------------------------------------------- patch lattices

#: Lattice nodes per side of a lattice store chunk (the predictor's default; training of a
#: model with slide context decides tissue at the same thumbnail resolution).
LATTICE_CHUNK_NODES = 16


@dataclass(frozen=True)
class LatticeGrid:
    """Where a slide's lattice nodes are (:func:`lattice_grid`): ``pitch_px`` working px
    between nodes, ``factor`` level-0 px per working px, the slide's ``working_shape`` and
    the lattice's ``map_shape`` ``(rows, cols)``; node ``(r, c)`` is centred on level-0
    ``((c + 0.5)·pitch_px·factor, (r + 0.5)·pitch_px·factor)``."""

    pitch_px: int
    factor: float
    working_shape: tuple[int, int]
    map_shape: tuple[int, int]
    working_mpp: float

    @property
    def pitch_um(self) -> float:
        return self.pitch_px * self.working_mpp

    def centres_level0(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(N, 2)`` ``(x, y)`` level-0 px centres of nodes ``(rows, cols)``."""
        s = self.pitch_px * self.factor
        return np.stack([(np.asarray(cols) + 0.5) * s, (np.asarray(rows) + 0.5) * s], axis=1)

    def node_of(self, xy_level0: np.ndarray) -> np.ndarray:
        """``(N, 2)`` int64 ``(row, col)`` of the node whose cell holds each level-0 point
        (clipped to the lattice)."""
        xy = np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)
        s = self.pitch_px * self.factor
        rc = np.floor(xy[:, ::-1] / s).astype(np.int64)
        return np.clip(rc, 0, np.asarray(self.map_shape) - 1)


def lattice_grid(
    slide_shape: tuple[int, int], slide_mpp: float, working_mpp: float, pitch_um: float
) -> LatticeGrid:
    """The lattice of a slide of level-0 ``slide_shape`` at ``slide_mpp`` µm/px for a model
    working at ``working_mpp`` with nodes ``pitch_um`` apart (rounded to whole working px,
    at least one): what the lattice predictor lays (``inference.predict_lattice``), and
    training of models with slide context reproduces."""
    pitch_px = max(1, round(float(pitch_um) / float(working_mpp)))
    f = float(working_mpp) / float(slide_mpp)
    h0, w0 = slide_shape
    h_work, w_work = max(1, round(h0 / f)), max(1, round(w0 / f))
    map_shape = (math.ceil(h_work / pitch_px), math.ceil(w_work / pitch_px))
    return LatticeGrid(pitch_px, f, (h_work, w_work), map_shape, float(working_mpp))
