"""DKAN's training task: each section's lattice encoded once, then supervised + distillation
and dual-path contrastive losses with adaptive weights.

The paper's training (DKAN; design *spot-models* §2): Adam, lr 1e-4, StepLR(50, 0.9), batch
128, MSE losses

* ``L_sup = Σ_d [λ‖Ŷ_d − Ŷ‖² + (1 − λ)‖Ŷ_d − Y‖²] + ‖Ŷ − Y‖²`` over the side heads ``d`` ∈
  {img, patch, slide, region}, λ = 0.3, ``Ŷ`` not detached (Eqs. 2–3,
  :func:`~..losses.distillation_loss`);
* ``L_cont``: InfoNCE between the image path's ``e^ti`` and the expression path's ``e^te``
  on cosine similarity / τ, τ = 0.1 (Eq. 1, :func:`~..contrastive_losses.info_nce`, blocked
  so its memory stays bounded);
* ``L = w_sup·L_sup + w_cont·L_cont`` with the normalised reciprocal weights ``w ∝ (1 /
  L_sup, 3 / L_cont)`` of the current values, no gradient through them (Eq. 4,
  :func:`~..contrastive_losses.reciprocal_weights`; ``contrastive_ratio`` = 3).

Those settings are the model's (:class:`~napari_histoexpress.models.dkan.DkanConfig`: λ,
τ, the mode, the ratio, ``adaptive_weights``, ``use_contrastive``, ``smooth_targets``) and
this task's :attr:`DkanTask.train_defaults`: Adam with the step schedule 50/0.9, and
CPU-sized 30 epochs at batch 64 and lr 5e-4 instead of the code's 200 epochs at batch 128
and lr 1e-4 (her2st's four training sections hold ~730 spots: 150 steps at the paper's
batch and rate underfit — fold C2 0.146 at batch 32/lr 1e-4, 0.161 at batch 64/lr 5e-4,
0.160 at lr 1e-3; README *Results*). ``--batch-size 128 --lr 1e-4 --epochs 200`` is the
paper's. The ablations are model options:
``use_text=false`` (no text), ``use_contrastive=false`` (no contrastive loss),
``adaptive_weights=false`` (fixed weights: the same ratio, 1 : 3 normalised, without the
adaptation).

How a run goes:

* :meth:`DkanTask.build` embeds the genes' descriptions (as HAGE), builds every training
  section's lattice (:func:`~..section_lattice.section_lattice`: tissue nodes + spot cells,
  node and spot patches through the frozen encoder and the feature cache) and standardises
  with the training statistics.
* Targets: the package's normalisation (:func:`napari_histoexpress.expression.
  expression_matrix`). ``smooth_targets`` (the released code's, off by default) averages
  each training spot with its neighbours within 1.5 spot pitches; evaluation never smooths.
* **Batches come from one section at a time** (the slide level needs the section): an
  epoch is every training spot once, each section's spots shuffled by
  ``numpy.random.default_rng((seed, epoch))`` and cut into batches of ``batch_size``, the
  batches of all sections shuffled together; each step runs the global encoder over that
  section's nodes.
* No validation split and no early stopping: the released code selects its checkpoint on
  the test fold, which this task never sees; a fixed number of epochs.
* Stain as for HAGE (reference fitted on the training sections; HED augmentation ignored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch

from ..contrastive_losses import info_nce, reciprocal_weights
from ..frozen_features import FrozenPatchTask, embed_genes, frozen_stain
from ..losses import distillation_loss
from ..section_lattice import SectionLattice, section_lattice
from ..sections import Section

if TYPE_CHECKING:
    from ...models.base import LatticeNodes
    from ...models.dkan import DKAN

__all__ = ["TASK", "DkanTask", "smooth_over_neighbours"]


def smooth_over_neighbours(y: np.ndarray, xy: np.ndarray, factor: float = 1.5) -> np.ndarray:
    """Each row of ``y`` averaged with the rows of the spots within ``factor`` × the median
    nearest-neighbour distance of ``xy`` (the spot pitch): the array's 8 neighbours on a
    square ST grid, 6 on Visium's."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return y.copy()
    tree = cKDTree(xy)
    pitch = float(np.median(tree.query(xy, k=2)[0][:, 1]))
    out = np.empty_like(y)
    for i, nb in enumerate(tree.query_ball_point(xy, r=factor * pitch)):
        out[i] = y[nb].mean(axis=0)
    return out


@dataclasses.dataclass
class _Section:
    lattice: SectionLattice
    nodes: LatticeNodes
    x: torch.Tensor  # spot raw features
    rc: torch.Tensor
    y: torch.Tensor


class DkanTask(FrozenPatchTask):
    """Train DKAN on each section's cached lattice (see the module docstring)."""

    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 30,
        "lr": 5e-4,
        "weight_decay": 0.0,
        "batch_size": 64,
        "lr_schedule": "step",
        "lr_step_epochs": 50,
        "lr_gamma": 0.9,
    }

    model: DKAN

    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> DKAN:
        from ...expression import expression_matrix
        from ...io.spatial import spot_centres_px
        from ...models.registry import build_model

        config = self.config
        self.model = model = cast("DKAN", build_model(config.model, self.model_settings(genes)))
        model.to(self.device, config.precision)
        cfg = model.config
        pairs = [s.pair() for s in sections]
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.gene_record = embed_genes(model, genes, self.log, who=config.model)
            self.stain, normalizers = frozen_stain(
                config.stain_config(), cfg, pairs, sections, self.log, who=config.model
            )
            encoder = model.loaded_encoder()
            lattices = [
                section_lattice(
                    pair,
                    encoder,
                    pitch_um=model.lattice_pitch_um,
                    feature_cache=config.feature_cache,
                    normalizer=None if normalizers is None else normalizers[i],
                )
                for i, pair in enumerate(pairs)
            ]
        model.set_feature_statistics(np.concatenate([s.features for s in lattices]))
        self.sections: list[_Section] = []
        for (adata, _), lat in zip(pairs, lattices, strict=True):
            y = expression_matrix(adata, genes, config.target_sum).astype(np.float32)
            if cfg.smooth_targets:
                y = smooth_over_neighbours(y, spot_centres_px(adata))
            self.sections.append(
                _Section(
                    lattice=lat,
                    nodes=lat.nodes(self.device),
                    x=torch.from_numpy(lat.spot_features).to(self.device),
                    rc=torch.from_numpy(lat.spot_rc).to(self.device),
                    y=torch.from_numpy(y).to(self.device),
                )
            )
        mean = torch.cat([s.y for s in self.sections]).mean(dim=0)
        with torch.no_grad():  # every head starts at the training mean of each gene
            model.gene_bias.copy_(mean)
            for head in (model.head_img, model.head_patch, model.head_region, model.head_global):
                head.bias.copy_(mean)
        n_spots = sum(len(s.y) for s in self.sections)
        n_nodes = sum(len(s.nodes) for s in self.sections)
        self.log(
            f"{config.model}: {n_spots} training spots, {n_nodes} lattice nodes "
            f"({cfg.pitch_um:g} µm pitch) in {len(self.sections)} sections"
        )
        return model

    def _plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng((self.config.seed, epoch))
        bs = max(1, self.config.batch_size)
        plan: list[tuple[int, np.ndarray]] = []
        for k, sec in enumerate(self.sections):
            order = rng.permutation(len(sec.y))
            n_full = len(order) // bs
            if n_full == 0:
                plan.append((k, order))
                continue
            plan.extend((k, order[i * bs : (i + 1) * bs]) for i in range(n_full))
        return [plan[i] for i in rng.permutation(len(plan))]

    def steps_per_epoch(self) -> int:
        bs = max(1, self.config.batch_size)
        return sum(max(1, len(s.y) // bs) for s in self.sections)

    def batches(self, epoch: int) -> Iterable[tuple[int, torch.Tensor]]:
        for k, idx in self._plan(epoch):
            yield k, torch.from_numpy(idx).to(self.device)

    def step(self, model: DKAN, batch: tuple[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = model.config
        k, idx = batch
        sec = self.sections[k]
        y = sec.y[idx]
        with self.autocast():
            ctx = model.section_context(sec.nodes)
            levels = model.spot_levels(sec.x[idx], sec.rc[idx], ctx)
            text = model.text_tokens()
            e_ti = model.image_embedding(levels, text)
            pred = model.predict(e_ti)
            e_te = model.expression_embedding(y, text) if cfg.use_contrastive else None
        heads = [levels[n].float() for n in ("y_img", "y_patch", "y_global", "y_region")]
        l_sup = distillation_loss(pred.float(), heads, y, cfg.lambda_distill)
        out = {"sup": l_sup, "mse": torch.nn.functional.mse_loss(pred.float(), y)}
        if e_te is None:
            out["loss"] = l_sup
            return out
        l_cont = info_nce(e_ti.float(), e_te.float(), cfg.temperature, cfg.contrastive)
        ratios = [1.0, cfg.contrastive_ratio]
        if cfg.adaptive_weights:
            w_sup, w_cont = reciprocal_weights([l_sup, l_cont], ratios)
        else:
            w_sup, w_cont = (r / sum(ratios) for r in ratios)
        out.update(loss=w_sup * l_sup + w_cont * l_cont, contrastive=l_cont)
        return out

    def extra(self) -> dict[str, Any]:
        return {
            "gene_embeddings": self.gene_record,
            "training_spots": sum(len(s.y) for s in self.sections),
            "lattice_nodes": sum(len(s.nodes) for s in self.sections),
        }


TASK = DkanTask
