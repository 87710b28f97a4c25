"""Rank genes of a group of spots against the whole slide or against another group (Qt-free).

The Spots widget's table answers "what is special about these spots?", not "what is high
here?": a raw mean always puts the housekeeping genes (MALAT1, ACTB, B2M, …) first. Every
value is on the model's scale (for PixNet runs the natural log of 1 + counts per 10k,
:mod:`.expression_units`), and the scores are:

- **Δ (log fold change)**: ``mean(A) − mean(reference)``, a difference of means of
  log1p-normalised values, i.e. a natural-log fold change of ``1 + counts`` (what scanpy's
  ``rank_genes_groups`` reports as ``logfoldchanges``, in base e instead of 2).
- **z (slide SD)**: that difference divided by the gene's standard deviation across the
  slide's tissue (:class:`SlideStats`), so genes with a wide and a narrow range compare on
  one scale. The slide spread is used whatever the reference, because a group of one or two
  drawn spots has no spread of its own.

The **reference** is the slide's tissue (its mean over every predicted pixel) or a second
group of spots (another drawn-spots layer, or a stored selection).

Slide statistics (:func:`slide_stats`) are read from one pyramid level of the dense-map
store, through its public API only (:meth:`DenseMapStore.features_level` and the linear
head): pixels that are not finite (background and pending tiles read as NaN) are ignored.
Because the head is affine, each gene's mean and variance over pixels follow exactly from
the mean ``μ`` and covariance ``Σ`` of the feature channels: ``mean_g = μ·w_g + b_g``,
``var_g = w_gᵀ Σ w_g``, so every gene of the head costs one pass over ``C`` channels.
The level is the finest whose pixel is at least :data:`STATS_PIXEL_UM` (a Visium spot's
size; a z-score then compares the selection to spot-sized pieces of tissue rather than to
single cells), coarser only when it would hold more than :data:`STATS_MAX_PIXELS` pixels,
finer when it holds fewer than :data:`STATS_MIN_PIXELS` tissue pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .map_store import DenseMapStore

__all__ = [
    "RANKINGS",
    "STATS_MAX_PIXELS",
    "STATS_MIN_PIXELS",
    "STATS_PIXEL_UM",
    "SlideStats",
    "compare_groups",
    "rank",
    "slide_stats",
    "stats_level",
]

#: Target pixel size (µm) of the pyramid level the slide statistics are read from.
STATS_PIXEL_UM = 50.0
#: Read a coarser level when the chosen one has more pixels than this.
STATS_MAX_PIXELS = 1 << 20
#: Read a finer level when the chosen one has fewer tissue pixels than this.
STATS_MIN_PIXELS = 256
#: Ranking keys → the comparison table's column they sort by.
RANKINGS = {"delta": "delta", "z": "z", "mean": "mean"}
#: Rows of the band read at once when computing slide statistics.
_BAND_PIXELS = 1 << 16


@dataclass(frozen=True)
class SlideStats:
    """Each gene's mean and standard deviation over the tissue pixels of a slide's map."""

    genes: list[str]
    mean: np.ndarray  # (G,) float64
    sd: np.ndarray  # (G,) float64
    n_pixels: int  # finite pixels used
    level: int  # pyramid level read
    pixel_um: float | None  # its pixel size (None when the map has no µm/px)


def stats_level(
    store: DenseMapStore,
    *,
    pixel_um: float = STATS_PIXEL_UM,
    max_pixels: int = STATS_MAX_PIXELS,
) -> int:
    """The pyramid level :func:`slide_stats` starts from (see the module docstring)."""
    h, w = store.map_shape
    mpp = store.map_mpp
    n = store.n_levels
    level = 0
    if mpp:
        while level + 1 < n and mpp * 2**level < pixel_um:
            level += 1
    while level + 1 < n and math.ceil(h / 2**level) * math.ceil(w / 2**level) > max_pixels:
        level += 1
    return level


def _feature_moments(store: DenseMapStore, level: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean ``(C,)``, covariance ``(C, C)`` and count of the finite pixels of a level."""
    feats = store.features_level(level)
    h, w, c = (int(v) for v in feats.shape)
    band = max(1, _BAND_PIXELS // max(w, 1))
    total = 0
    s1 = np.zeros(c)
    s2 = np.zeros((c, c))
    shift: np.ndarray | None = None  # first pixels' mean: keeps the sums well conditioned
    for y0 in range(0, h, band):
        block = np.asarray(feats[y0 : y0 + band].compute(), dtype=np.float64).reshape(-1, c)
        block = block[np.isfinite(block).all(axis=1)]
        if not len(block):
            continue
        if shift is None:
            shift = block.mean(axis=0)
        d = block - shift
        s1 += d.sum(axis=0)
        s2 += d.T @ d
        total += len(block)
    if total == 0 or shift is None:
        return np.full(c, np.nan), np.full((c, c), np.nan), 0
    m = s1 / total
    cov = s2 / total - np.outer(m, m)
    return shift + m, cov, total


def slide_stats(
    store: DenseMapStore,
    *,
    pixel_um: float = STATS_PIXEL_UM,
    max_pixels: int = STATS_MAX_PIXELS,
    min_pixels: int = STATS_MIN_PIXELS,
) -> SlideStats:
    """Every gene's mean and SD over the map's tissue pixels (see the module docstring).

    ``NaN`` statistics when the map has no predicted pixel at all.
    """
    level = stats_level(store, pixel_um=pixel_um, max_pixels=max_pixels)
    mu, cov, n = _feature_moments(store, level)
    while n < min_pixels and level > 0:
        h, w = store.map_shape
        finer = level - 1
        if math.ceil(h / 2**finer) * math.ceil(w / 2**finer) > 4 * max_pixels:
            break
        level = finer
        mu, cov, n = _feature_moments(store, level)
    W, b = store.head
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    mean = mu @ W64 + b64
    var = np.einsum("cg,cd,dg->g", W64, cov, W64)
    sd = np.sqrt(np.clip(var, 0.0, None))
    mpp = store.map_mpp
    return SlideStats(
        genes=store.genes,
        mean=np.asarray(mean, dtype=np.float64),
        sd=np.asarray(sd, dtype=np.float64),
        n_pixels=int(n),
        level=level,
        pixel_um=None if not mpp else float(mpp) * 2**level,
    )


def compare_groups(
    genes: list[str],
    mean_a: np.ndarray,
    mean_ref: np.ndarray,
    sd: np.ndarray | None,
) -> pd.DataFrame:
    """The comparison table: ``gene, mean, ref_mean, delta, z`` (one row per gene, in the
    order of ``genes``). ``z`` is ``NaN`` without ``sd`` or where the slide SD is 0."""
    a = np.asarray(mean_a, dtype=np.float64).reshape(-1)
    r = np.asarray(mean_ref, dtype=np.float64).reshape(-1)
    if not len(a) == len(r) == len(genes):
        raise ValueError(f"{len(genes)} genes but {len(a)} and {len(r)} values")
    delta = a - r
    if sd is None:
        z = np.full(len(a), np.nan)
    else:
        s = np.asarray(sd, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(s > 0, delta / np.where(s > 0, s, 1.0), np.nan)
    return pd.DataFrame(
        {
            "gene": np.asarray(genes, dtype=object),
            "mean": a,
            "ref_mean": r,
            "delta": delta,
            "z": z,
        }
    )


def rank(table: pd.DataFrame, by: str = "delta", *, descending: bool = True) -> pd.DataFrame:
    """``table`` sorted by a ranking (:data:`RANKINGS`), ``NaN`` last, ties in gene order."""
    if by not in RANKINGS:
        raise ValueError(f"ranking must be one of {list(RANKINGS)}, got {by!r}")
    v = table[RANKINGS[by]].to_numpy(dtype=np.float64)
    key = -v if descending else v
    order = np.argsort(np.where(np.isnan(v), np.inf, key), kind="stable")
    return table.iloc[order].reset_index(drop=True)
