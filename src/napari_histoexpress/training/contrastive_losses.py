"""Contrastive alignment losses shared by the spot models (HAGE now; DKAN, ALIGN-ST next).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "cyclip_loss"]


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
