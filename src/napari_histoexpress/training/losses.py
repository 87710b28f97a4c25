"""Training losses of PixNet (paper section 2.4): ``L = MSE + λ · (1 − PCC)``, λ = 0.5;
the batch PCC loss HAGE uses too; DKAN's supervised + distillation loss
(:func:`distillation_loss`).

PCC is the batch-wise Pearson correlation per gene (across the spots of the batch), averaged
over genes. Constant columns (a gene that does not vary in the batch, or a constant
prediction at init) have no defined correlation: the ``eps`` inside the square roots makes
their correlation 0 (loss 1 for that gene) with finite gradients instead of NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["batch_pearson", "distillation_loss", "pcc_loss", "pixnet_loss"]


def batch_pearson(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each column (gene) across rows (spots): ``(G,)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim == 1:
        pred, target = pred[:, None], target[:, None]
    pc = pred - pred.mean(dim=0, keepdim=True)
    tc = target - target.mean(dim=0, keepdim=True)
    cov = (pc * tc).mean(dim=0)
    sp = torch.sqrt(pc.pow(2).mean(dim=0) + eps)
    st = torch.sqrt(tc.pow(2).mean(dim=0) + eps)
    return cov / (sp * st)


def pcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 − mean_g PCC_g``: 0 for a perfect (or positively affine) prediction, 2 for an
    anti-correlated one, 1 for uncorrelated or constant columns."""
    return 1.0 - batch_pearson(pred, target, eps).mean()


def pixnet_loss(
    pred: torch.Tensor, target: torch.Tensor, lam: float = 0.5, eps: float = 1e-8
) -> torch.Tensor:
    """``MSE + lam · pcc_loss`` (paper Eq. 6, λ = 0.5)."""
    return F.mse_loss(pred, target) + lam * pcc_loss(pred, target, eps)


def distillation_loss(
    final: torch.Tensor,
    heads: Sequence[torch.Tensor],
    target: torch.Tensor,
    lam: float = 0.3,
) -> torch.Tensor:
    """DKAN's supervised loss (Eqs. 2–3): ``Σ_d [λ·MSE(Ŷ_d, Ŷ) + (1 − λ)·MSE(Ŷ_d, Y)] +
    MSE(Ŷ, Y)`` over the auxiliary heads ``Ŷ_d`` (img, patch, slide, region) and the final
    prediction ``Ŷ``, which is not detached (as DKAN's released code; λ = 0.3 there).
    ``Y = 1, Ŷ = 0`` and four heads at 0.5 give 2.0."""
    total = F.mse_loss(final, target)
    for head in heads:
        total = total + lam * F.mse_loss(head, final) + (1.0 - lam) * F.mse_loss(head, target)
    return total
