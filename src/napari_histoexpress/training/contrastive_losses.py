"""Contrastive alignment losses shared by the spot models (HAGE; DKAN and ALIGN-ST next).

* :func:`clip_loss`: CLIP's symmetric cross-entropy on the similarity matrix
  ``S = a · bᵀ / τ`` of paired rows (row ``i`` of ``a`` belongs with row ``i`` of ``b``):
  ``(CE(S, I) + CE(Sᵀ, I)) / 2``. Hand-computed (design *spot-models* §1):
  ``a = [(1, 0), (0, 1)]``, ``b = [(1, 0), (0.6, 0.8)]`` give 0.44888 at τ = 1 and 0.014787
  at τ = 0.07.
* :func:`cyclip_loss`: CyCLIP's cross-modal plus in-modal consistency (HAGE Eq. 1, the index
  typo read as a sum over all pairs ``j, k``):
  ``(1/N) Σ (⟨a_j, b_k⟩ − ⟨a_k, b_j⟩)² + (1/N) Σ (⟨a_j, a_k⟩ − ⟨b_j, b_k⟩)²``; 0.72 for the
  pair above, 0 when ``a = b``.

Both take the embeddings as given: callers L2-normalise them first (HAGE does, as CyCLIP
itself does; unnormalised inner products weighted 10 blow up). Computed in float32.

* :func:`info_nce`: one-way InfoNCE (NT-Xent) on **cosine** similarity / τ (DKAN Eq. 1),
  anchors ``a`` against candidates ``b``, the positive of ``a_i`` being ``b_i``:
  ``mode="pair"`` over the rows of ``(N, d)``; for per-gene embeddings ``(B, G, d)``,
  ``mode="per_gene"`` (the negatives are the spot's other genes, as DKAN's text says) or
  ``mode="flat"`` (all ``B·G`` tokens against each other, as DKAN's released code does).
  With ``a = b = I₂``: 0.31326 at τ = 1, 4.54e-5 at τ = 0.1.
* :func:`reciprocal_weights`: DKAN's adaptive loss weights (Eq. 4), normalised reciprocals
  ``w_i ∝ ratio_i / L_i`` of the losses' current values, with no gradient through them:
  losses 2 and 1 with ratios 1 and 3 give (1/7, 6/7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["INFO_NCE_MODES", "clip_loss", "cyclip_loss", "info_nce", "reciprocal_weights"]

INFO_NCE_MODES = ("pair", "per_gene", "flat")


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"need two (N, d) embeddings of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a.float(), b.float()


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """CLIP's symmetric InfoNCE of paired rows ``a (N, d)``, ``b (N, d)`` at ``temperature``."""
    a, b = _pair(a, b)
    logits = a @ b.T / float(temperature)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cyclip_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CyCLIP's cross-modal + in-modal consistency of paired rows (see the module docstring)."""
    a, b = _pair(a, b)
    n = a.shape[0]
    cross = a @ b.T
    in_modal = a @ a.T - b @ b.T
    return ((cross - cross.T).pow(2).sum() + in_modal.pow(2).sum()) / n


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, mode: str = "pair"
) -> torch.Tensor:
    """One-way InfoNCE of anchors ``a`` against candidates ``b`` on cosine similarity
    (see the module docstring for the modes)."""
    if mode not in INFO_NCE_MODES:
        raise ValueError(f"mode must be one of {INFO_NCE_MODES}, got {mode!r}")
    if a.shape != b.shape or a.ndim != (2 if mode == "pair" else 3):
        want = "(N, d)" if mode == "pair" else "(B, G, d)"
        raise ValueError(
            f"info_nce mode {mode!r} needs two {want} tensors of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    if mode == "flat":
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if a.ndim == 2:
        logits = a @ b.T / float(temperature)
        return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))
    logits = a @ b.transpose(1, 2) / float(temperature)  # (B, G, G): the spot's genes
    labels = torch.arange(a.shape[1], device=a.device).expand(a.shape[0], -1)
    return F.cross_entropy(logits.reshape(-1, a.shape[1]), labels.reshape(-1))


def reciprocal_weights(
    losses: Sequence[torch.Tensor | float], ratios: Sequence[float] | None = None
) -> list[float]:
    """Normalised reciprocal weights ``w_i = (r_i / L_i) / Σ_j (r_j / L_j)`` of the losses'
    values (plain floats: no gradient flows through the weights); ``ratios`` default 1."""
    values = [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in losses]
    ratios = [1.0] * len(values) if ratios is None else [float(r) for r in ratios]
    if len(ratios) != len(values) or not values:
        raise ValueError("need one ratio per loss (and at least one loss)")
    if any(not v > 0 for v in values):
        raise ValueError(f"reciprocal weights need positive losses, got {values}")
    raw = [r / v for r, v in zip(ratios, values, strict=True)]
    total = sum(raw)
    return [w / total for w in raw]
