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

Slide statistics (:func:`slide_stats`) are the store's
(:meth:`DenseMapStore.gene_stats`, the same moments as :meth:`DenseMapStore.gene_means`)
at one pyramid level: pixels never predicted (background and pending tiles) are ignored and
each pixel counts by its predicted share. Because the head is affine, each gene's mean and
variance over pixels follow exactly from the mean ``μ`` and covariance ``Σ`` of the feature
channels: ``mean_g = μ·w_g + b_g``, ``var_g = w_gᵀ Σ w_g``, so every gene of the head costs
one pass over ``C`` channels.
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


@dataclass(frozen=True)
class SlideStats:
    """Each gene's mean and standard deviation over the tissue pixels of a slide's map."""

    genes: list[str]
    mean: np.ndarray  # (G,) float64
    sd: np.ndarray  # (G,) float64
    n_pixels: int  # pixels with a value (predicted share > 0) used
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


def slide_stats(
    store: DenseMapStore,
    *,
    pixel_um: float = STATS_PIXEL_UM,
    max_pixels: int = STATS_MAX_PIXELS,
    min_pixels: int = STATS_MIN_PIXELS,
) -> SlideStats:
    """Every gene's mean and SD over the map's tissue pixels (see the module docstring):
    :meth:`DenseMapStore.gene_stats` at :func:`stats_level` (finer while it has fewer than
    ``min_pixels`` predicted pixels), each pixel weighted by its predicted share, so the mean
    is :meth:`DenseMapStore.gene_means` at that level.

    ``NaN`` statistics when the map has no predicted pixel at all.
    """
    level = stats_level(store, pixel_um=pixel_um, max_pixels=max_pixels)
    stats = store.gene_stats(level=level)
    while stats.n_pixels < min_pixels and level > 0:
        h, w = store.map_shape
        finer = level - 1
        if math.ceil(h / 2**finer) * math.ceil(w / 2**finer) > 4 * max_pixels:
            break
        level = finer
        stats = store.gene_stats(level=level)
    mpp = store.map_mpp
    return SlideStats(
        genes=stats.genes,
        mean=stats.mean,
        sd=stats.sd,
        n_pixels=stats.n_pixels,
        level=level,
        pixel_um=None if not mpp else mpp * 2**level,
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
