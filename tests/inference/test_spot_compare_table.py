"""The Spots table's rows: the reference chosen, plain means, when a ranking is ready."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histoexpress.inference.spot_compare import SlideStats
from napari_histoexpress.inference.spot_compare_table import (
    comparison_table,
    plain_table,
    ranking_ready,
)

GENES = ["A", "B", "C"]
MEAN = np.array([2.0, 1.0, 0.5])


def _stats(genes: list[str] = GENES) -> SlideStats:
    return SlideStats(
        genes=list(genes),
        mean=np.array([1.0, 1.0, 1.0]),
        sd=np.array([0.5, 0.0, 2.0]),
        n_pixels=10,
        level=0,
        pixel_um=50.0,
    )


def test_against_the_slide() -> None:
    table = comparison_table(GENES, MEAN, _stats())
    assert table["gene"].tolist() == GENES
    np.testing.assert_allclose(table["ref_mean"], 1.0)
    np.testing.assert_allclose(table["delta"], MEAN - 1.0)
    np.testing.assert_allclose(table["z"], [2.0, np.nan, -0.25])  # SD 0: no z


def test_against_a_group_keeps_the_slide_sd() -> None:
    table = comparison_table(GENES, MEAN, _stats(), ref_mean=np.array([0.0, 1.0, 1.5]))
    np.testing.assert_allclose(table["delta"], [2.0, 0.0, -1.0])
    np.testing.assert_allclose(table["z"], [4.0, np.nan, -0.5])


@pytest.mark.parametrize("stats", [None, _stats(["X", "Y", "Z"])])
def test_without_matching_stats_the_slide_reference_is_nan(stats: SlideStats | None) -> None:
    table = comparison_table(GENES, MEAN, stats)
    assert table["ref_mean"].isna().all() and table["z"].isna().all()
    np.testing.assert_allclose(table["mean"], MEAN)
    group = comparison_table(GENES, MEAN, stats, ref_mean=np.zeros(3))
    np.testing.assert_allclose(group["delta"], MEAN)
    assert group["z"].isna().all()


def test_plain_table_and_readiness() -> None:
    plain = plain_table(GENES, MEAN)
    np.testing.assert_allclose(plain["mean"], MEAN)
    assert plain[["ref_mean", "delta", "z"]].isna().all().all()
    assert ranking_ready(plain, "mean") and not ranking_ready(plain, "delta")
    empty = plain_table([], np.zeros(0))
    assert len(empty) == 0 and list(empty.columns) == ["gene", "mean", "ref_mean", "delta", "z"]
    assert ranking_ready(empty, "delta")
    assert ranking_ready(comparison_table(GENES, MEAN, _stats()), "z")


def test_selection_table_against_the_slide_and_a_group() -> None:
    """The live table of a selection: its mean through SpotExpression.aggregate, against
    the slide's means (stats) or a second group's mean."""
    from napari_histoexpress.inference.spot_compare_table import selection_table

    class _Expr:
        genes = GENES

        def aggregate(self, spots: object) -> np.ndarray:
            return MEAN if spots == "sel" else np.array([0.0, 2.0, 0.5])

    slide = selection_table(_Expr(), "sel", _stats())  # type: ignore[arg-type]
    np.testing.assert_allclose(slide["delta"], MEAN - 1.0)
    np.testing.assert_allclose(slide["z"], [2.0, np.nan, -0.25])
    group = selection_table(_Expr(), "sel", _stats(), "ref")  # type: ignore[arg-type]
    np.testing.assert_allclose(group["ref_mean"], [0.0, 2.0, 0.5])
    np.testing.assert_allclose(group["delta"], [2.0, -1.0, 0.0])
