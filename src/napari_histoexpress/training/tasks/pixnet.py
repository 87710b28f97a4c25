"""PixNet's training task: random crops around spots, every spot in a crop supervised.

PixNet (paper: Adam, lr 5e-4, weight decay 1e-4, λ = 0.5, 250 highest-mean genes,
library-size normalisation + log) is trained on :class:`~..spot_crops.SpotCropDataset` crops
at a fixed working µm/px, every spot fully inside a crop supervised through the sparse loss
``MSE + λ·(1 − PCC)`` (:func:`~..losses.pixnet_loss`, PCC batch-wise per gene) on the spot
means of the dense map (:meth:`~napari_histoexpress.models.pixnet.PixNet.spot_predictions`).
The loop (:mod:`..loop`) does the rest (Adam, schedule, precision, resume, checkpoint).

Choices the paper leaves open (all in :class:`~..config.TrainConfig`):

* ``crops_per_epoch``: an epoch visits a seeded random subset of anchor spots (default 128;
  ``numpy.random.default_rng((seed, epoch))``) instead of every spot, so an "epoch" has a
  fixed cost whatever the data size and the defaults finish in minutes on a 2-core CPU; each
  crop supervises all its spots anyway.
* ``epochs`` default 32 (paper 500, on GPUs); decoder 64 channels over encoder levels 1-4
  (:data:`PIXNET_CPU_DEFAULTS`; paper 512 channels down to stride 2); encoder the offline
  ImageNet EfficientNet-Lite0 (paper: ResNet18; see :data:`PIXNET_CPU_DEFAULTS`).
* The head bias starts at the training mean of each gene, so the model starts from the
  mean predictor (MSE ≈ variance) instead of from 0. With the text head (``--model-config
  '{"head": "text"}'``) the genes' descriptions are embedded first (as for HAGE) and the
  bias row of the projection is fitted to those means.
* Colour augmentation: mild per-crop brightness/contrast/saturation jitter (stain
  variation between sections) drawn from a generator seeded with ``config.seed`` (its state
  is part of the resume state), plus the dataset's dihedral flips/rotations.
* The forward pass runs in the loop's precision; spot sums and the loss in float32.
* Stain (``config.stain``, default off: nothing below happens and nothing is drawn).
  Normalisation: the reference is fitted on the training sections in :meth:`PixNetTask.build`
  (:func:`~..stain_fit.fit_run_stain`: 16 spot-centred crops of ``crop_um`` per section at
  the working µm/px, each section with its own source stains) and the dataset normalises
  every uint8 crop as read. HED augmentation (``augment_sigma``/``augment_bias``) is applied
  to the batch right after the colour jitter, drawn from a generator of its own (seeded
  from ``(seed, stream)`` with :class:`numpy.random.SeedSequence`, part of the resume
  state), so switching it on changes no colour-jitter draw. The fitted settings are
  recorded by the loop (:meth:`PixNetTask.fitted_stain`).
* Encoder learning rate (``encoder_lr_scale``): 1 (default) is one Adam group over every
  parameter, as in the paper. Otherwise two groups, the encoder's (``model.encoder``, named
  ``"encoder"``, ``lr_scale = encoder_lr_scale``) and the rest's (``lr_scale = 1``); the
  loop multiplies each group's ``lr_scale`` into the scheduled lr at every step. 0 freezes
  the encoder: ``requires_grad = False``, no optimiser group (no Adam state, no weight
  decay), and eval mode for the whole run (:meth:`PixNetTask.train_mode`), so BatchNorm
  keeps the pretrained running statistics and the encoder's tensors end bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .. import losses
from ..loop import GradientTask
from ..sections import Section

if TYPE_CHECKING:
    from ...models.pixnet import PixNet
    from ...stain import StainConfig
    from ..spot_crops import SpotCropDataset

#: stream number of the HED augmentation generator's seed (``SeedSequence([seed, this])``)
STAIN_STREAM = 0x48ED

__all__ = ["PIXNET_CPU_DEFAULTS", "TASK", "PixNetTask", "colour_jitter"]

#: PixNet settings used unless a run's ``model_config`` says otherwise: a 64-channel decoder
#: over ResNet levels 1-4 (a stride-4 map, 8 µm/px at the 2 µm/px working resolution). The
#: paper's 512 channels down to stride 2 cost ~2x (levels) x ~4x (channels) more per step on
#: CPU; pass ``--decoder-dim 512 --out-indices 0 1 2 3 4`` on a GPU to follow it.
#: Upsampling is bilinear ×2 + 3×3 conv rather than the paper's transposed conv: no
#: checkerboard in dense maps at the same accuracy (her2st leave-one-section-out mean PCC
#: 0.232 vs 0.230 at 8 epochs, ``benchmarks/her2st_cv.py``); ``--upsample transposed``
#: restores the paper's decoder.
#: Encoder: the offline ImageNet EfficientNet-Lite0, fine-tuned at ``lr`` (``pretrained``
#: ``"auto"``: ImageNet weights for it, random init for any other ``--backbone``). It beat
#: random-init ResNet18 on her2st (leave-one-section-out mean PCC 0.290 vs 0.272, top-50
#: variable genes 0.458 vs 0.409) and on the MOB sections (README *Results*,
#: ``benchmarks/her2st_cv.py`` and ``benchmarks/mob_cv.py``); ``--backbone resnet18`` gives
#: the paper's ResNet18 from random init.
PIXNET_CPU_DEFAULTS: dict[str, Any] = {
    "backbone": "tf_efficientnet_lite0",
    "pretrained": "auto",
    "decoder_dim": 64,
    "out_indices": [1, 2, 3, 4],
    "upsample": "bilinear",
}


def colour_jitter(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation jitter of RGB in [0, 1]."""
    if strength <= 0:
        return images
    b = images.shape[0]

    def factor() -> torch.Tensor:
        u = torch.rand(b, 1, 1, 1, generator=gen).to(images.device)  # CPU stream: same draws
        return 1.0 + (u * 2 - 1) * strength

    grey = images.mean(dim=1, keepdim=True)
    images = grey + (images - grey) * factor()  # saturation
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * factor()  # contrast
    images = images * factor()  # brightness
    return images.clamp(0.0, 1.0)


class PixNetTask(GradientTask):
    """PixNet on spot-centred crops (see the module docstring)."""

    dataset: SpotCropDataset
    generator: torch.Generator
    sections: list[str]
    stain: StainConfig
    stain_generator: torch.Generator | None = None

    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> PixNet:
        """The crop dataset, and PixNet (``PIXNET_CPU_DEFAULTS`` under ``model_config``) with
        its head bias at the genes' training means, on the device."""
        from ...models.registry import build_model
        from ..spot_crops import SpotCropDataset
        from ..stain_fit import fit_run_stain

        config = self.config
        self.sections = [s.name for s in sections]
        pairs = [s.pair() for s in sections]
        self.stain = config.stain_config()
        normalizers = None
        if self.stain.normalize != "none":
            self.stain, normalizers = fit_run_stain(
                self.stain,
                pairs,
                self.sections,
                mpp=config.mpp,
                size_px=round(config.crop_um / config.mpp),
                log=self.log,
            )
        self.dataset = SpotCropDataset(
            pairs,
            list(genes),
            stain=normalizers,
            mpp=config.mpp,
            crop_um=config.crop_um,
            jitter_um=config.jitter_um,
            augment=True,
            seed=config.seed,
            target_sum=config.target_sum,
            mean=(0.0, 0.0, 0.0),  # PixNet normalises inside (self-describing checkpoints)
            std=(1.0, 1.0, 1.0),
        )
        model = cast("PixNet", build_model(config.model, self.model_settings(genes)))
        self.gene_record: dict[str, Any] | None = None
        if model.config.head == "text":  # the columns come from the genes' descriptions
            from ..frozen_features import embed_genes

            self.gene_record = embed_genes(model, genes, self.log, who=config.model)
        model.init_head_bias(self.dataset.all_targets().mean(axis=0))
        model.set_genes(genes, working_mpp=config.mpp)
        model.to(self.device)
        if self._encoder_frozen():
            model.encoder.requires_grad_(False)
        self.generator = torch.Generator().manual_seed(config.seed)
        if self.stain.augments:
            seed = np.random.SeedSequence([config.seed % 2**32, STAIN_STREAM])
            self.stain_generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        return model

    def model_settings(self, genes: Sequence[str]) -> dict[str, Any]:
        """``n_genes``, then :data:`PIXNET_CPU_DEFAULTS`, then the run's ``model_config``."""
        return {"n_genes": len(genes), **PIXNET_CPU_DEFAULTS, **self.config.model_config}

    def fitted_stain(self) -> StainConfig | None:
        """The stain settings with the fitted reference; ``None`` when they are the
        defaults (nothing to record)."""
        from ...stain import StainConfig

        return None if self.stain == StainConfig() else self.stain

    def _encoder_frozen(self) -> bool:
        return self.config.encoder_lr_scale == 0.0

    def optimizer(self, model: PixNet) -> torch.optim.Optimizer:
        """Adam as the loop's default when ``encoder_lr_scale == 1``; else an ``"encoder"``
        group at ``lr_scale = encoder_lr_scale`` (none when frozen) and one for the rest."""
        config = self.config
        scale = float(config.encoder_lr_scale)
        if scale == 1.0:
            return super().optimizer(model)
        encoder = list(model.encoder.parameters())
        in_encoder = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if id(p) not in in_encoder]
        groups: list[dict[str, Any]] = [{"params": rest, "name": "decoder", "lr_scale": 1.0}]
        if scale > 0:
            lr = config.lr * scale
            groups.insert(0, {"params": encoder, "name": "encoder", "lr_scale": scale, "lr": lr})
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)

    def train_mode(self, model: PixNet) -> None:
        """``model.train()``, the encoder kept in eval mode when frozen (its BatchNorm
        statistics stay the pretrained ones)."""
        model.train()
        if self._encoder_frozen():
            model.encoder.eval()

    def _crops_per_epoch(self) -> int:
        return min(self.config.crops_per_epoch, len(self.dataset))

    def steps_per_epoch(self) -> int:
        return -(-self._crops_per_epoch() // self.config.batch_size)

    def batches(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        """A loader over ``crops_per_epoch`` anchors drawn without replacement from
        ``default_rng((seed, epoch))``, the dataset's draws set to ``epoch``."""
        from ..spot_crops import collate_spot_crops

        self.dataset.set_epoch(epoch)
        rng = np.random.default_rng((self.config.seed, epoch))
        anchors = rng.choice(len(self.dataset), size=self._crops_per_epoch(), replace=False)
        loader: Iterable[dict[str, torch.Tensor]] = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, anchors.tolist()),
            batch_size=self.config.batch_size,
            shuffle=False,
            collate_fn=collate_spot_crops,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return loader

    def step(self, model: PixNet, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``pixnet_loss`` of the spot means of the dense map of colour-jittered (and, when
        asked, HED-augmented) crops."""
        images = batch["image"].to(self.device, non_blocking=True)  # pinned on CUDA
        images = colour_jitter(images, self.config.colour_jitter, self.generator)
        if self.stain_generator is not None:
            images = self.stain.augment(images, self.stain_generator)
        with self.autocast():
            feats = model.features(images)
        feats = feats.float()  # spot sums and the PCC loss in float32
        # spot_crops: pixel (r, c) covers [c, c+1) -> centres at c + 0.5;
        # PixNet/aggregate: pixel centres at integers -> shift by half a pixel
        centres = batch["centres"] - 0.5
        pred = model.spot_predictions(
            feats,
            centres,
            batch["radii"],
            images.shape[-2:],
            batch_index=batch["batch_index"],
        )
        target = batch["targets"].to(self.device)
        return {"loss": losses.pixnet_loss(pred, target, lam=self.config.lam)}

    def resume_state(self) -> dict[str, torch.Tensor]:
        state = {"colour_jitter_generator": self.generator.get_state()}
        if self.stain_generator is not None:
            state["stain_generator"] = self.stain_generator.get_state()
        return state

    def load_resume_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if "colour_jitter_generator" in state:
            self.generator.set_state(state["colour_jitter_generator"])
        if self.stain_generator is not None and "stain_generator" in state:
            self.stain_generator.set_state(state["stain_generator"])

    def extra(self) -> dict[str, Any]:
        """Target normalisation, working µm/px, crop size and the training sections."""
        config = self.config
        return {
            "normalisation": {
                "target_sum": config.target_sum,
                "transform": "log1p",
                "description": "natural log of (1 + counts per 10k)",
            },
            "microns_per_pixel": config.mpp,
            "crop_um": config.crop_um,
            "sections": self.sections,
            **({"gene_embeddings": self.gene_record} if self.gene_record else {}),
        }


TASK = PixNetTask
