"""A run's stain normalisation: its reference fitted on the training sections, and each
section's own stains (:mod:`napari_histoexpress.stain` does the colour science).

Training (:func:`fit_run_stain`, called by the tasks' ``build``, so every cross-validation
fold fits its own reference from its own training sections) and evaluation
(:func:`section_normalizer` on the held-out section) follow the same rules:

* **Candidate crops** (:func:`stain_crops`): :data:`STAIN_CROPS_PER_SECTION` (16) square
  crops per section, centred on spots chosen deterministically — evenly spaced through the
  AnnData's spot order (``round(linspace(0, n − 1, 16))``, all spots when fewer) — read at
  the model's working µm/px with the side of the model's input (a PixNet training crop, a
  ridge patch), so the stains are measured on the pixels the model sees. No jitter, no
  augmentation, no randomness.
* **Reference**: :func:`~napari_histoexpress.stain.reference_patch` among the candidate crops
  of **all** training sections (the crop of the most typical stain), then
  :meth:`~napari_histoexpress.stain.StainConfig.with_reference`. A reference already present
  in the settings is used as given (not refitted). Sections held out are never looked at.
* **Per-section source stains** (stain.py's recommendation for training crops: "one
  estimate per section"): :meth:`~napari_histoexpress.stain.StainNormalizer.with_source` on
  the section's candidate crops side by side, so the normalisation of a section is a fixed
  function of each pixel's colour — a crop of mostly stroma keeps its balance, and a crop
  is normalised as the whole slide would be at prediction. A section whose crops hold too
  little tissue for an estimate falls back to per-crop estimates (logged).
* The fitted reference is recorded (no image) in the run's ``config.json`` — ``config.stain``
  and ``input.stain`` — through :meth:`~.loop.TrainingTask.fitted_stain`; the per-section
  source estimates are not (they belong to the training slides, and prediction estimates
  each slide's own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..stain import StainConfig, StainNormalizer, reference_patch

__all__ = ["STAIN_CROPS_PER_SECTION", "fit_run_stain", "section_normalizer", "stain_crops"]

#: candidate crops per section for the stain reference and the section's source stains
STAIN_CROPS_PER_SECTION = 16


def stain_crops(
    pair: tuple[Any, Any], mpp: float, size_px: int, n: int = STAIN_CROPS_PER_SECTION
) -> list[np.ndarray]:
    """``n`` uint8 ``(size_px, size_px, 3)`` crops of a section ``(adata, slide)`` at ``mpp``
    µm/px, centred on evenly spaced spots (see the module docstring)."""
    from ..io.slides import read_region_at_mpp
    from ..io.spatial import spot_centres_px

    adata, slide = pair
    xy = spot_centres_px(adata)
    if len(xy) == 0:
        return []
    chosen = np.unique(np.round(np.linspace(0, len(xy) - 1, min(n, len(xy)))).astype(np.int64))
    size = (int(size_px), int(size_px))
    return [
        np.asarray(read_region_at_mpp(slide, (float(xy[i, 0]), float(xy[i, 1])), size, mpp))
        for i in chosen
    ]


def section_normalizer(
    base: StainNormalizer,
    crops: Sequence[np.ndarray],
    *,
    name: str = "the section",
    log: Callable[[str], None] = print,
) -> StainNormalizer:
    """``base`` with the section's stains fixed from its ``crops`` side by side; ``base``
    itself (per-crop estimates, logged) when they hold too little tissue; ``base`` for
    ``method = "none"``."""
    from ..errors import SettingError

    if base.method == "none":
        return base
    if not crops:
        log(f"stain: {name} has no crops for a stain estimate; each crop is estimated alone")
        return base
    try:
        return base.with_source(np.concatenate(list(crops), axis=1))
    except SettingError:
        log(
            f"stain: too little tissue in {name}'s crops for one stain estimate; each crop "
            "is estimated alone"
        )
        return base


def fit_run_stain(
    stain: StainConfig,
    pairs: Sequence[tuple[Any, Any]],
    names: Sequence[str],
    *,
    mpp: float,
    size_px: int,
    log: Callable[[str], None] = print,
) -> tuple[StainConfig, list[StainNormalizer]]:
    """``(stain with its reference fitted, one normaliser per section with its source
    stains)`` for the training sections ``pairs`` (see the module docstring); ``(stain,
    identity normalisers)`` when ``stain.normalize == "none"``. Raises
    :class:`~napari_histoexpress.errors.SettingError` (``stain_normalize``) when no
    candidate crop holds enough tissue to serve as the reference."""
    if stain.normalize == "none":
        return stain, [StainNormalizer() for _ in pairs]
    from ..errors import SettingError

    crops = [stain_crops(pair, mpp, size_px) for pair in pairs]
    if stain.needs_reference:
        candidates = [c for cs in crops for c in cs]
        try:
            reference = reference_patch(candidates)
        except SettingError:
            raise SettingError(
                "stain_normalize",
                f"none of the {len(candidates)} spot-centred crops of the training sections "
                f"({size_px} px at {mpp:g} µm/px) is half stained tissue, as a stain "
                "reference must be; train with larger crops, or on sections with more tissue",
            ) from None
        stain = stain.with_reference(reference)
        log(f"stain: {stain.normalize} reference fitted on {len(pairs)} training section(s)")
    base = stain.normalizer()
    normalizers = [
        section_normalizer(base, cs, name=name, log=log)
        for cs, name in zip(crops, names, strict=True)
    ]
    return stain, normalizers
