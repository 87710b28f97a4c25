"""The rows the Spots widget's table shows (Qt-free): a group of spots against a reference.

:func:`comparison_table` picks the reference values: the slide's tissue statistics
(:class:`~.spot_compare.SlideStats`, ``NaN`` while they are not computed or belong to
another gene list) or a second group's means; z-scores always use the slide SDs (a group
of one or two spots has no spread). :func:`plain_table` is the table without a reference
(means only). :func:`ranking_ready` says whether the table can be sorted by the chosen
ranking yet (the widget ranks by the plain mean until it can). :func:`selection_table` is
the whole live table of a selection in one call: its mean (one vectorised aggregation of all
its spots, :class:`~.live_spots.SpotExpression`), the reference's, Δ and z.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .live_spots import SpotExpression
from .spot_compare import SlideStats, compare_groups

__all__ = ["comparison_table", "plain_table", "ranking_ready", "selection_table"]


def _matching(stats: SlideStats | None, genes: list[str]) -> SlideStats | None:
    return stats if stats is not None and stats.genes == list(genes) else None


def comparison_table(
    genes: list[str],
    mean: np.ndarray,
    stats: SlideStats | None,
    ref_mean: np.ndarray | None = None,
) -> pd.DataFrame:
    """``gene, mean, ref_mean, delta, z`` of a group with means ``mean``: against the
    second group ``ref_mean`` when given, else against the slide (``stats``' means)."""
    slide = _matching(stats, genes)
    sd = slide.sd if slide is not None else None
    if ref_mean is not None:
        reference = np.asarray(ref_mean)
    elif slide is not None:
        reference = slide.mean
    else:
        reference = np.full(len(genes), np.nan)
    return compare_groups(list(genes), mean, reference, sd)


def selection_table(
    expr: SpotExpression,
    spots: pd.DataFrame,
    stats: SlideStats | None,
    ref_spots: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The comparison table of a selection of spots: :func:`comparison_table` of the mean
    over ``spots`` (:meth:`~.live_spots.SpotExpression.aggregate`) against the mean over
    ``ref_spots`` when given, else against the slide (``stats``)."""
    mean = expr.aggregate(spots)
    ref = expr.aggregate(ref_spots) if ref_spots is not None else None
    return comparison_table(expr.genes, mean, stats, ref)


def plain_table(genes: list[str], values: np.ndarray) -> pd.DataFrame:
    """The table of plain means (no reference: ``ref_mean``, ``delta``, ``z`` are NaN)."""
    if not len(genes):
        return compare_groups([], np.zeros(0), np.zeros(0), None)
    return compare_groups(list(genes), values, np.full(len(genes), np.nan), None)


def ranking_ready(table: pd.DataFrame, by: str) -> bool:
    """Whether column ``by`` of ``table`` has a finite value (an empty table is ready)."""
    return bool(np.isfinite(table[by].to_numpy(float)).any()) if len(table) else True
