"""HAGE's training task: frozen features once, then 15 epochs of alignment + PCC on them.

The paper's training (HAGE §3.2; design *spot-models* §1): Adam, lr 1e-4, weight decay
1e-5, StepLR(10, 0.5), 15 epochs (her2st), and the loss (Eq. 3)

``L = λ_Cy · L_CyCLIP + λ_local · L_CLIP(z^i, z^e) + λ_global · L_CLIP(c^i, c^e) + λ_PCC ·
L_PCC``, with λ = 10, 1, 1, 10 and τ = 0.07 (no MSE term).

Those settings are this task's :attr:`HageTask.train_defaults` (epochs, lr, weight decay,
the step schedule, batch 256), applied by :meth:`TrainConfig.for_model
<napari_histoexpress.training.config.TrainConfig.for_model>` (the CLI) to what a run does
not set; the loss weights, τ and the cluster counts are the model's settings
(:class:`~napari_histoexpress.models.hage.HageConfig`), so a run records them and the
paper's ablations are model options (``use_ge=false``; ``lambda_global=0``).

How a run goes (the choices the paper leaves open are the spec's recommendations):

* :meth:`HageTask.build` embeds the run's genes (the model's ``gene_encoder``, default the
  MiniLM embeddings of the bundled descriptions; missing genes follow ``gene_missing``,
  reported in the log and the checkpoint's ``extra``), encodes every training spot's patch
  **once** with the frozen encoder — through the on-disk feature cache
  (:mod:`napari_histoexpress.models.feature_cache`; ``config.feature_cache``: ``"auto"``
  the user cache folder, ``"none"`` in memory only, or a folder), so folds and reruns
  reuse them — and assigns the hierarchical clusters once
  (:mod:`..hierarchical_clusters`: k₁ = 30 on the normalised expression, k₂ = 2 on the
  image features inside each).
* Targets: :func:`napari_histoexpress.expression.expression_matrix` (log1p of counts per
  ``target_sum``), the package's one normalisation, instead of HAGE's log₁₀ (a monotone
  rescaling that leaves Pearson correlations of a linear head unchanged up to the fit).
* An epoch is every training spot once, shuffled by ``numpy.random.default_rng((seed,
  epoch))``, in batches of ``batch_size`` (256); the last partial batch is dropped when at
  least one full batch exists (batch correlations and the centroid term need many spots).
* Embeddings are L2-normalised before CyCLIP and CLIP (centroids re-normalised after the
  scatter mean); ``f_Pred`` reads the unnormalised ``z^i``. Sub-clusters with fewer than 4
  members in the batch are left out; with fewer than 8 left the global term is 0 for that
  batch.
* No validation split (random spot splits leak neighbours): a fixed number of epochs.
* Stain: ``normalize`` works as for the ridge baseline (the reference fitted on the
  training sections, every patch normalised before the encoder; it is part of the cache
  key); HED augmentation is ignored (logged): frozen features are encoded once.
* The frozen encoder stays in eval mode and out of the optimiser; the forward pass runs
  under the loop's autocast, the losses in float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..contrastive_losses import clip_loss, cyclip_loss
from ..frozen_features import FrozenPatchTask, embed_genes, frozen_stain, section_features
from ..hierarchical_clusters import hierarchical_kmeans, subcluster_means
from ..losses import pcc_loss
from ..sections import Section

if TYPE_CHECKING:
    from ...models.hage import HAGE

__all__ = ["TASK", "HageTask"]


class HageTask(FrozenPatchTask):
    """Train HAGE on cached frozen features (see the module docstring)."""

    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 15,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "batch_size": 256,
        "lr_schedule": "step",
        "lr_step_epochs": 10,
        "lr_gamma": 0.5,
    }

    model: HAGE

    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> HAGE:
        from ...expression import expression_matrix
        from ...models.registry import build_model

        config = self.config
        self.model = model = cast("HAGE", build_model(config.model, self.model_settings(genes)))
        model.to(self.device, config.precision)
        pairs = [s.pair() for s in sections]
        cfg = model.config
        # the data preparation (a text encoder loaded or not, features cached or not) must
        # not move the random state that training (dropout) draws from
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.gene_record = embed_genes(model, genes, self.log, who=config.model)
            self.stain, normalizers = frozen_stain(
                self.config.stain_config(),
                model.config,
                pairs,
                sections,
                self.log,
                who=config.model,
            )
            feats = section_features(
                pairs,
                model.loaded_encoder(),
                feature_cache=config.feature_cache,
                normalizers=normalizers,
                batch_size=32,
            )
        X = np.concatenate(feats).astype(np.float32)
        Y = np.concatenate(
            [expression_matrix(a, genes, config.target_sum) for a, _ in pairs]
        ).astype(np.float32)
        model.set_feature_statistics(X.mean(axis=0), X.std(axis=0))
        clusters = hierarchical_kmeans(Y, X, cfg.k_expression, cfg.k_image, seed=config.seed)
        self.n_subclusters = clusters.n_subclusters
        self.cluster_record = {
            "k1": clusters.k1,
            "k2": clusters.k2,
            "subclusters_used": len(np.unique(clusters.labels)),
        }
        self.X = torch.from_numpy(X).to(self.device)
        self.Y = torch.from_numpy(Y).to(self.device)
        self.labels = torch.from_numpy(clusters.labels).to(self.device)
        with torch.no_grad():  # the head starts at the training mean of each gene
            model.head.bias.copy_(self.Y.mean(dim=0))
        self.log(
            f"hage: {len(X)} training spots, {X.shape[1]}-d frozen features, "
            f"{clusters.k1}×{clusters.k2} sub-clusters"
        )
        return model

    def steps_per_epoch(self) -> int:
        return max(1, len(self.X) // max(1, self.config.batch_size))

    def batches(self, epoch: int) -> Iterable[torch.Tensor]:
        n, bs = len(self.X), max(1, self.config.batch_size)
        order = np.random.default_rng((self.config.seed, epoch)).permutation(n)
        if n < bs:
            yield torch.from_numpy(order).to(self.device)
            return
        for i in range(self.steps_per_epoch()):
            yield torch.from_numpy(order[i * bs : (i + 1) * bs]).to(self.device)

    def step(self, model: HAGE, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = model.config
        x, y = self.X[batch], self.Y[batch]
        with self.autocast():
            zi = model.image_embedding(x)
            ze = model.expression_embedding(y)
            pred = model.head(model.features_from_embedding(zi))
        zi, ze, pred = zi.float(), ze.float(), pred.float()
        ni, ne = F.normalize(zi, dim=1), F.normalize(ze, dim=1)
        l_cy = cyclip_loss(ni, ne)
        l_local = clip_loss(ni, ne, cfg.temperature)
        l_global = torch.zeros((), device=zi.device)
        if cfg.lambda_global:
            labels = self.labels[batch]
            kw = {"min_members": cfg.min_cluster_members, "min_clusters": cfg.min_clusters}
            ci = subcluster_means(ni, labels, self.n_subclusters, **kw)
            ce = subcluster_means(ne, labels, self.n_subclusters, **kw)
            if ci is not None and ce is not None:
                l_global = clip_loss(
                    F.normalize(ci[0], dim=1), F.normalize(ce[0], dim=1), cfg.temperature
                )
        l_pcc = pcc_loss(pred, y)
        loss = (
            cfg.lambda_cyclip * l_cy
            + cfg.lambda_local * l_local
            + cfg.lambda_global * l_global
            + cfg.lambda_pcc * l_pcc
        )
        return {
            "loss": loss,
            "cyclip": l_cy,
            "clip_local": l_local,
            "clip_global": l_global,
            "pcc": l_pcc,
        }

    def extra(self) -> dict[str, Any]:
        """The gene vectors' source (encoder, weights hash, policy, missing genes), the
        clusters, and the number of training spots."""
        return {
            "gene_embeddings": self.gene_record,
            "clusters": self.cluster_record,
            "training_spots": len(self.X),
        }


TASK = HageTask
