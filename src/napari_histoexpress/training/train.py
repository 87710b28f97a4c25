"""Training loops: PixNet on random crops around spots, and the ridge baseline.

PixNet (paper: Adam, lr 5e-4, weight decay 1e-4, λ = 0.5, 250 highest-mean genes,
library-size normalisation + log) is trained on :class:`~.spot_crops.SpotCropDataset` crops
at a fixed working µm/px, every spot fully inside a crop supervised through the sparse
loss ``MSE + λ·(1 − PCC)`` (:func:`~.losses.pixnet_loss`, PCC batch-wise per gene).

Choices the paper leaves open (all in :class:`TrainConfig`):

* ``crops_per_epoch``: an epoch visits a seeded random subset of anchor spots (default 128)
  instead of every spot, so an "epoch" has a fixed cost whatever the data size and the
  defaults finish in minutes on a 2-core CPU; each crop supervises all its spots anyway.
* ``epochs`` default 8 (paper 500, on GPUs); decoder 64 channels over ResNet levels 1-4
  (:data:`~.config.PIXNET_CPU_DEFAULTS`; paper 512 channels down to stride 2).
* The head bias starts at the training mean of each gene, so the model starts from the
  mean predictor (MSE ≈ variance) instead of from 0.
* Colour augmentation: mild per-crop brightness/contrast/saturation jitter (stain
  variation between sections), plus the dataset's dihedral flips/rotations.
* Resumable: after every epoch the model and optimiser states are written to
  ``RUN_DIR/resume/`` (safetensors + JSON, atomically); a rerun with the same config
  continues after the last finished epoch. The final checkpoint (``weights.safetensors`` +
  ``config.json``) is written when training ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import autocast, grad_scaler, resolve_device
from .config import PIXNET_CPU_DEFAULTS, TrainConfig, learning_rate
from .sections import Section

TRAINABLE_MODELS = ("pixnet", "ridge")

__all__ = [
    "TRAINABLE_MODELS",
    "TrainConfig",
    "resolve_device",
    "train",
    "train_pixnet",
    "train_ridge",
]


def choose_genes(sections: Sequence[Section], config: TrainConfig) -> list[str]:
    from ..expression import select_genes

    return select_genes([s.adata for s in sections], n=config.n_genes, gene_file=config.gene_file)


def _atomic_json(path: Path, obj: Any) -> None:
    from ..io.export import write_text_atomic

    write_text_atomic(json.dumps(obj, indent=2), path)


def _colour_jitter(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
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


def _save_resume(
    resume_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Model + optimiser tensors in safetensors, the rest in JSON (no pickle)."""
    from safetensors.torch import save_file

    resume_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, pstate in opt_state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    from ..io.export import write_atomic

    write_atomic(resume_dir / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    _atomic_json(
        resume_dir / "state.json",
        {**state, "opt_param_groups": opt_state["param_groups"], "opt_scalars": scalars},
    )


def _load_resume(resume_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((resume_dir / "state.json").read_text())
    tensors = load_file(str(resume_dir / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta.pop("opt_scalars").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta.pop("opt_param_groups")})
    return meta


def train_pixnet(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    genes: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train PixNet; returns the run directory (checkpoint written at the end)."""
    from tqdm.auto import tqdm

    from ..models.checkpoint import save_checkpoint
    from ..models.registry import build_model
    from .losses import pixnet_loss
    from .spot_crops import SpotCropDataset, collate_spot_crops

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    genes = list(genes) if genes is not None else choose_genes(sections, config)
    dataset = SpotCropDataset(
        [s.pair() for s in sections],
        genes,
        mpp=config.mpp,
        crop_um=config.crop_um,
        jitter_um=config.jitter_um,
        augment=True,
        seed=config.seed,
        target_sum=config.target_sum,
        mean=(0.0, 0.0, 0.0),  # PixNet normalises inside (self-describing checkpoints)
        std=(1.0, 1.0, 1.0),
    )
    model_cfg = {"n_genes": len(genes), **PIXNET_CPU_DEFAULTS, **config.model_config}
    model = build_model("pixnet", model_cfg)
    all_targets = dataset.all_targets()
    model.init_head_bias(all_targets.mean(axis=0))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, config.precision)

    resume_dir = out / "resume"
    fingerprint = {
        "config": config.to_dict(),
        "genes": genes,
        "sections": [str(s.path) for s in sections],
    }
    start_epoch, history = 0, []
    if (resume_dir / "state.json").exists():
        meta = json.loads((resume_dir / "state.json").read_text())
        if meta.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            meta = _load_resume(resume_dir, model, opt)
            start_epoch, history = int(meta["epoch"]), list(meta["history"])
            log(f"resuming {out} after epoch {start_epoch}")
        else:
            log(f"{resume_dir}: saved state is from a different config; starting afresh")

    gen = torch.Generator().manual_seed(config.seed)
    n_per_epoch = min(config.crops_per_epoch, len(dataset))
    steps_per_epoch = -(-n_per_epoch // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    t0 = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        dataset.set_epoch(epoch)
        rng = np.random.default_rng((config.seed, epoch))
        anchors = rng.choice(len(dataset), size=n_per_epoch, replace=False)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, anchors.tolist()),
            batch_size=config.batch_size,
            shuffle=False,
            collate_fn=collate_spot_crops,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        model.train()
        losses: list[float] = []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for step, batch in enumerate(bar):
            lr = learning_rate(
                config.lr,
                epoch * steps_per_epoch + step,
                total_steps,
                config.lr_schedule,
                config.warmup_fraction,
            )
            for group in opt.param_groups:
                group["lr"] = lr
            images = batch["image"].to(device, non_blocking=True)  # pinned on CUDA
            images = _colour_jitter(images, config.colour_jitter, gen)
            with autocast(device, config.precision):
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
            loss = pixnet_loss(pred, batch["targets"].to(device), lam=config.lam)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # float16 autocast: scaled loss, unscaled (and skipped if inf) step
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]['loss']:.4f} "
            f"({history[-1]['seconds']:.0f} s)"
        )
        _save_resume(
            resume_dir,
            model,
            opt,
            {"epoch": epoch + 1, "history": history, "fingerprint": fingerprint},
        )

    model.eval()
    save_checkpoint(
        out,
        model,
        config.to_dict(),
        genes,
        extra={
            "normalisation": {
                "target_sum": config.target_sum,
                "transform": "log1p",
                "description": "natural log of (1 + counts per 10k)",
            },
            "microns_per_pixel": config.mpp,
            "crop_um": config.crop_um,
            "sections": [s.name for s in sections],
            "history": history,
        },
    )
    return out


def train_ridge(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    genes: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Fit the ridge baseline (frozen backbone → PCA → ridge) and save its checkpoint."""
    from ..models.ridge import RidgeBaseline, RidgeConfig

    genes = list(genes) if genes is not None else choose_genes(sections, config)
    names = {f.name for f in dataclasses.fields(RidgeConfig)}
    rcfg = RidgeConfig(
        **{k: v for k, v in config.model_config.items() if k in names},
        target_sum=config.target_sum,
        seed=config.seed,
    )
    model = RidgeBaseline(rcfg).to(config.device, config.precision)
    model.fit([s.pair() for s in sections], genes)
    log(f"ridge: alpha {model.alpha:g} ({model.cv_scheme})")
    model.save(out_dir, train_config=config.to_dict())
    return Path(out_dir)


def train(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    genes: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the model named by ``config.model`` (see :data:`TRAINABLE_MODELS`)."""
    if config.model == "pixnet":
        return train_pixnet(sections, out_dir, config, genes=genes, progress=progress, log=log)
    if config.model == "ridge":
        return train_ridge(sections, out_dir, config, genes=genes, log=log)
    raise ValueError(f"unknown model {config.model!r}; choose from {TRAINABLE_MODELS}")
