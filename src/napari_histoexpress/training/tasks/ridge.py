"""The ridge baseline's training task: a closed-form fit (no epochs, no gradient steps).

Frozen backbone features of spot-centred patches → StandardScaler → PCA → ridge, ``alpha``
chosen by section-grouped cross-validation (:meth:`RidgeBaseline.fit
<napari_histoexpress.models.ridge.RidgeBaseline.fit>`). The loop (:mod:`..loop`) seeds, builds
the model through this task, calls :meth:`RidgeTask.fit` once and writes the checkpoint with
the fit's choices (alpha, CV scores, CV scheme) as ``extra``.

Choices: the run's ``model_config`` keys that are not ridge settings (e.g. PixNet's
``decoder_dim`` given to a shared CLI) are ignored rather than refused, and ``target_sum``
and ``seed`` come from the run's config. The frozen encoder runs on the run's device in its
precision; PCA and ridge stay float64 NumPy.

Stain (``config.stain``): with ``normalize`` set, the reference is fitted on the training
sections (:func:`~..stain_fit.fit_run_stain`: 16 spot-centred patches of the model's
``input_px`` at its working µm/px per section, each section with its own source stains) and
every spot's uint8 patch is normalised before the frozen encoder sees it; the fitted
settings are recorded by the loop (:meth:`RidgeTask.fitted_stain`). HED augmentation is
ignored (logged): a closed-form fit on frozen features of each spot's one patch has no
epochs over which random stain variations could average. ``encoder_lr_scale`` is ignored
too (the encoder is frozen). The spot features go through the feature cache
(``config.feature_cache``, default the user cache folder; :mod:`..frozen_features`), so
cross-validation folds and reruns encode each section once; with the defaults the numbers
are those of :meth:`RidgeBaseline.fit <napari_histoexpress.models.ridge.RidgeBaseline.fit>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..loop import ClosedFormTask
from ..sections import Section

if TYPE_CHECKING:
    from ...models.ridge import RidgeBaseline
    from ...stain import StainConfig, StainNormalizer

__all__ = ["TASK", "RidgeTask"]


class RidgeTask(ClosedFormTask):
    """Fit the ridge baseline in closed form (see the module docstring)."""

    pairs: list[tuple[Any, Any]]
    genes: list[str]
    model: RidgeBaseline
    stain: StainConfig
    normalizers: list[StainNormalizer] | None = None

    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> RidgeBaseline:
        """The unfitted baseline (ridge settings of ``model_config``), encoder on the device."""
        from ...models.registry import build_model

        config = self.config
        settings = self.model_settings(genes)
        self.model = cast("RidgeBaseline", build_model(config.model, settings))
        self.model.to(self.device, config.precision)
        self.pairs = [s.pair() for s in sections]
        self.genes = list(genes)
        if config.encoder_lr_scale != 1.0:
            self.log(f"{config.model}: encoder_lr_scale ignored (the encoder is frozen)")
        self.stain = config.stain_config()
        if self.stain.augments:
            self.log(
                f"{config.model}: HED stain augmentation ignored (a closed-form fit on frozen "
                "features sees each spot once)"
            )
        if self.stain.normalize != "none":
            from ..stain_fit import fit_run_stain

            self.stain, self.normalizers = fit_run_stain(
                self.stain,
                self.pairs,
                [s.name for s in sections],
                mpp=self.model.config.input_mpp,
                size_px=int(self.model.config.input_px),
                log=self.log,
            )
        return self.model

    def model_settings(self, genes: Sequence[str]) -> dict[str, Any]:
        """The ridge settings of ``model_config`` (other keys ignored), with the run's
        ``target_sum`` and ``seed``."""
        from ...models.ridge import RidgeConfig

        config = self.config
        names = {f.name for f in dataclasses.fields(RidgeConfig)}
        settings = {k: v for k, v in config.model_config.items() if k in names}
        settings.update(target_sum=config.target_sum, seed=config.seed)
        return settings

    def fit(self, model: RidgeBaseline) -> None:
        """Encode every spot once (stain-normalised patches when asked; through the feature
        cache of ``config.feature_cache``), choose alpha by grouped CV and fit on all
        sections."""
        from ...expression import expression_matrix
        from ..frozen_features import section_features

        feats = section_features(
            self.pairs,
            model.loaded_encoder(),
            feature_cache=self.config.feature_cache,
            normalizers=self.normalizers,
            batch_size=model.config.batch_size,
        )
        target_sum = model.config.target_sum
        targets = [expression_matrix(a, self.genes, target_sum) for a, _ in self.pairs]
        model.fit_features(feats, targets, self.genes)
        self.log(f"{self.config.model}: alpha {model.alpha:g} ({model.cv_scheme})")

    def fitted_stain(self) -> StainConfig | None:
        """The stain settings with the fitted reference (augmentation strengths kept as
        given, though unused); ``None`` when they are the defaults."""
        from ...stain import StainConfig

        return None if self.stain == StainConfig() else self.stain

    def extra(self) -> dict[str, Any]:
        """The fit's choices: ``alpha``, ``cv_scores``, ``cv_scheme``."""
        return self.model.fit_record()


TASK = RidgeTask
