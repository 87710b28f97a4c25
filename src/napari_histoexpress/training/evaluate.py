"""Evaluate a trained run on sections with the literature's metrics.

Spot predictions of a dense model (PixNet) come from a crop of ``crop_um`` µm centred on
each spot at the run's working µm/px (the same context the model was trained with), the
dense map aggregated inside the spot's disk; the ridge baseline predicts from its own
spot-centred patches. Metrics per section: :func:`~.metrics.evaluate_predictions`.
Every section must measure all the run's genes (checked before predicting anything).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputFileError
from .sections import Section


def check_genes(run_dir: str | os.PathLike[str], genes: Sequence[str], section: Section) -> None:
    """Raise :class:`InputFileError` naming the section's file when it lacks genes the run
    predicts (checked before any prediction: a mismatch is a wrong pair of files, not
    something to find out after minutes of work)."""
    present = set(map(str, section.adata.var_names))
    missing = [g for g in genes if g not in present]
    if missing:
        raise InputFileError(
            section.path,
            f"lacks {len(missing)} of the {len(genes)} genes that the run {run_dir} predicts, "
            f"e.g. {missing[:5]}: evaluate on sections that measure them",
        )


def predict_section_spots(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    *,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """``(n_spots, n_genes)`` predictions (normalised log1p scale) for every spot."""
    name = meta["model"]
    if name == "ridge":  # float32 features on the device (metrics independent of the GPU)
        model.to(device, precision="fp32")
        return np.asarray(model.predict(section.pair()), dtype=np.float32)
    if name != "pixnet":
        raise ValueError(f"no spot evaluation for model {name!r}")
    from tqdm.auto import tqdm

    from ..devices import resolve_device
    from .config import TrainConfig
    from .spot_crops import SpotCropDataset

    cfg = TrainConfig.from_dict(meta.get("config", {}))
    dev = resolve_device(device)
    model.to(dev).eval()
    genes = list(meta["genes"])
    dataset = SpotCropDataset(
        [section.pair()],
        genes,
        mpp=cfg.mpp,
        crop_um=cfg.crop_um,
        jitter_um=0.0,
        augment=False,
        seed=0,
        target_sum=cfg.target_sum,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    out = np.zeros((len(dataset), len(genes)), dtype=np.float32)
    size = dataset.config.size_px
    items = range(len(dataset))
    batches = [list(items[i : i + batch_size]) for i in range(0, len(dataset), batch_size)]
    with torch.inference_mode():
        for idx in tqdm(batches, disable=not progress, desc=section.name, unit="batch"):
            images = torch.stack([dataset[i]["image"] for i in idx]).to(dev)
            feats = model.features(images)
            # the anchor spot sits at the crop centre (pixel-centre convention of PixNet)
            centres = torch.full((len(idx), 2), size / 2.0 - 0.5)
            radii = torch.full((len(idx),), float(dataset.spot_radius_um(0) / cfg.mpp))
            pred = model.spot_predictions(
                feats, centres, radii, images.shape[-2:], batch_index=torch.arange(len(idx))
            )
            out[idx] = pred.float().cpu().numpy()
    return out


def evaluate_run(
    run_dir: str | os.PathLike[str],
    sections: Sequence[Section],
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Per-section metrics and their mean over sections: ``{'sections': {...}, 'mean': {...}}``."""
    from ..expression import expression_matrix
    from ..metrics import aggregate_folds, evaluate_predictions
    from ..models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(run_dir)
    genes = list(meta["genes"])
    for section in sections:
        check_genes(run_dir, genes, section)
    target_sum = float(meta.get("config", {}).get("target_sum", 1e4))
    results: dict[str, Any] = {}
    for section in sections:
        pred = predict_section_spots(model, meta, section, device=device, progress=progress)
        true = expression_matrix(section.adata, genes, target_sum)
        results[section.name] = evaluate_predictions(pred, true, genes, section=section.name)
    return {
        "run": str(Path(run_dir)),
        "model": meta["model"],
        "sections": results,
        "mean": aggregate_folds(list(results.values())),
    }
