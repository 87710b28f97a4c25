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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..loop import TrainingTask
from ..sections import Section

if TYPE_CHECKING:
    from ...models.ridge import RidgeBaseline

__all__ = ["TASK", "RidgeTask"]


class RidgeTask(TrainingTask):
    """Fit the ridge baseline in closed form (see the module docstring)."""

    closed_form = True

    pairs: list[tuple[Any, Any]]
    genes: list[str]
    model: RidgeBaseline

    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> RidgeBaseline:
        """The unfitted baseline (ridge settings of ``model_config``), encoder on the device."""
        from ...models.registry import build_model
        from ...models.ridge import RidgeConfig

        config = self.config
        names = {f.name for f in dataclasses.fields(RidgeConfig)}
        settings = {k: v for k, v in config.model_config.items() if k in names}
        settings.update(target_sum=config.target_sum, seed=config.seed)
        self.model = cast("RidgeBaseline", build_model(config.model, settings))
        self.model.to(self.device, config.precision)
        self.pairs = [s.pair() for s in sections]
        self.genes = list(genes)
        return self.model

    def fit(self, model: RidgeBaseline) -> None:
        """Encode every spot, choose alpha by grouped CV and fit on all sections."""
        model.fit(self.pairs, self.genes)
        self.log(f"{self.config.model}: alpha {model.alpha:g} ({model.cv_scheme})")

    def extra(self) -> dict[str, Any]:
        """The fit's choices: ``alpha``, ``cv_scores``, ``cv_scheme``."""
        return self.model.fit_record()


TASK = RidgeTask
