"""The unit words of expression values."""

from __future__ import annotations

import pytest

from napari_histoexpress.inference.expression_units import expression_unit, per_total


@pytest.mark.parametrize(
    ("total", "words"), [(1e4, "10k"), (1e6, "1M"), (2500, "2500"), (1000, "1k"), (1.5e4, "15k")]
)
def test_per_total(total: float, words: str) -> None:
    assert per_total(total) == words


def test_expression_unit_default() -> None:
    assert expression_unit() == "log1p counts per 10k"
