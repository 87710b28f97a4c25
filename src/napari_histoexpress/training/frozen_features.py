"""Frozen-encoder features of the training spots, for the tasks of spot models (ridge, HAGE,
DKAN), and the other preparation those tasks share.

:func:`section_features` encodes every spot's patch of each section once, through the
on-disk feature cache (:mod:`napari_histoexpress.models.feature_cache`) as the run's
``feature_cache`` setting says: ``"auto"`` the user cache folder, ``"none"`` no disk cache,
anything else a folder. Cached and uncached features are the same numbers.
:func:`embed_genes` gives a model its genes' description vectors, :func:`frozen_stain`
fits the run's stain normalisation for patches encoded once; :func:`spot_nodes` makes a
section's spots the nodes of a slide graph (ALIGN-ST).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .loop import GradientTask

if TYPE_CHECKING:
    from ..models.base import LatticeNodes
    from ..stain import StainConfig, StainNormalizer

__all__ = [
    "FrozenPatchTask",
    "embed_genes",
    "frozen_stain",
    "section_features",
    "spot_nodes",
]


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


def spot_nodes(pair: tuple[Any, Any], features: np.ndarray, pitch_um: float) -> LatticeNodes:
    """A section's measured spots as the nodes of its slide (models whose slide graph is
    over the spots, ``InputSpec.context == "spots"``: ALIGN-ST): the spots' frozen
    ``features``, their centres in µm of the slide (napari's convention: pixel ``p`` at
    ``p · mpp``), lattice cells ``round(centre / pitch_um)``, all on tissue."""
    from ..io.spatial import spot_centres_px
    from ..models.base import LatticeNodes

    adata, slide = pair
    if slide.mpp is None:
        from ..errors import MissingResolutionError

        raise MissingResolutionError(slide.path, "µm per pixel unknown; give it")
    xy_um = np.asarray(spot_centres_px(adata), dtype=np.float64) * float(slide.mpp)
    rc = np.round(xy_um[:, ::-1] / float(pitch_um)).astype(np.int64)
    rc -= rc.min(axis=0, initial=0) if len(rc) else 0
    shape = (int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1) if len(rc) else (0, 0)
    return LatticeNodes(
        features=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        positions_um=torch.from_numpy(xy_um),
        grid_rc=torch.from_numpy(rc),
        lattice_shape=shape,
        pitch_um=float(pitch_um),
    )


def embed_genes(
    model: Any, genes: Sequence[str], log: Callable[[str], None], *, who: str
) -> dict[str, Any]:
    """Embed ``genes`` with the model's ``config.gene_encoder`` (missing genes follow its
    ``gene_missing``) into ``model.set_gene_vectors``; returns the record a run keeps
    (encoder, weights hash, policy, missing genes)."""
    from ..models.gene_knowledge.gene_embeddings import create_gene_encoder

    cfg = model.config
    emb = create_gene_encoder(cfg.gene_encoder).embed(genes, missing=cfg.gene_missing)
    if emb.dim != cfg.gene_dim:
        raise ValueError(
            f"gene encoder {cfg.gene_encoder!r} gives {emb.dim}-d vectors, "
            f"the model expects {cfg.gene_dim}"
        )
    model.set_gene_vectors(emb.vectors, emb.learned)
    if emb.missing:
        log(
            f"{who}: {len(emb.missing)} genes without a vector ({cfg.gene_missing}): "
            + ", ".join(list(emb.missing)[:10])
        )
    return {
        "encoder": emb.encoder,
        "weights_hash": emb.weights_hash,
        "policy": emb.policy,
        "missing": dict(emb.missing),
    }


def frozen_stain(
    stain: StainConfig,
    model_config: Any,
    pairs: Sequence[tuple[Any, Any]],
    sections: Sequence[Any],
    log: Callable[[str], None],
    *,
    who: str,
) -> tuple[StainConfig, list[StainNormalizer] | None]:
    """The run's stain settings for a model whose patches are encoded once (HED augmentation
    ignored, logged) and one normaliser per section (``None`` without normalisation); the
    reference is fitted on the training sections at the model's ``input_mpp``/``input_px``."""
    if stain.augments:
        log(f"{who}: HED stain augmentation ignored (frozen features are encoded once)")
    if stain.normalize == "none":
        return stain, None
    from .stain_fit import fit_run_stain

    stain, normalizers = fit_run_stain(
        stain,
        list(pairs),
        [s.name for s in sections],
        mpp=model_config.input_mpp,
        size_px=int(model_config.input_px),
        log=log,
    )
    return stain, list(normalizers)


class FrozenPatchTask(GradientTask):
    """What the tasks of the gene-aware models on a frozen encoder (HAGE, DKAN) share: the
    model's settings from ``model_config`` (the fields of its ``config_class``, other keys
    ignored) sized for the genes with the run's ``target_sum``, Adam over everything but the
    frozen encoder, and the stain settings :func:`frozen_stain` fitted (``self.stain``)."""

    stain: StainConfig

    def model_settings(self, genes: Sequence[str]) -> dict[str, Any]:
        import dataclasses

        from ..models.registry import get_model_class

        model_class: Any = get_model_class(self.config.model)
        names = {f.name for f in dataclasses.fields(model_class.config_class)}
        settings = {k: v for k, v in self.config.model_config.items() if k in names}
        settings.update(n_genes=len(genes), target_sum=self.config.target_sum)
        return settings

    def fitted_stain(self) -> StainConfig | None:
        from ..stain import StainConfig

        return None if self.stain == StainConfig() else self.stain

    def optimizer(self, model: Any) -> torch.optim.Optimizer:
        """Adam over everything but the frozen encoder."""
        import torch

        return torch.optim.Adam(
            model.trainable_parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
