"""Frozen-encoder features of the training spots, for the tasks of spot models (ridge, HAGE).

:func:`section_features` encodes every spot's patch of each section once, through the
on-disk feature cache (:mod:`napari_histoexpress.models.feature_cache`) as the run's
``feature_cache`` setting says: ``"auto"`` the user cache folder, ``"none"`` no disk cache,
anything else a folder. Cached and uncached features are the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..stain import StainNormalizer

__all__ = ["section_features"]


def section_features(
    pairs: Sequence[tuple[Any, Any]],
    encoder: Any,
    *,
    feature_cache: str,
    normalizers: Sequence[StainNormalizer | None] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[np.ndarray]:
    """Frozen-encoder features of every spot of each ``(adata, slide)`` pair, through the
    feature cache unless ``feature_cache == "none"`` (``"auto"``: the default folder)."""
    from ..models import feature_cache as fc

    out = []
    norms = list(normalizers) if normalizers is not None else [None] * len(pairs)
    for pair, norm in zip(pairs, norms, strict=True):
        kw: dict[str, Any] = {"normalizer": norm, "batch_size": batch_size, "progress": progress}
        if feature_cache == "none":
            out.append(fc.spot_features(pair, encoder, **kw))
        else:
            cache_dir = None if feature_cache == "auto" else feature_cache
            out.append(fc.cached_spot_features(pair, encoder, cache_dir=cache_dir, **kw))
    return out
