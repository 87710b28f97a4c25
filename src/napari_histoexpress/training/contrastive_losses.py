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
  ``mode="flat"`` (all ``B·G`` tokens against each other, as DKAN's released code does), or
  ``mode="across_spots"`` (per gene, the other spots' embeddings of that gene are the
  negatives: the spec's recommendation for DKAN). With ``a = b = I₂``: 0.31326 at τ = 1,
  4.54e-5 at τ = 0.1.
  **Memory**: the logits are computed in blocks of at most ``max_logits`` values, and a
  block's backward recomputes its logits instead of keeping them (only the rows'
  log-sum-exp is saved), so the peak is one block whatever ``B`` and ``G`` — the flat mode
  at 250 genes × batch 128 would otherwise hold 32,000² logits (4 GB) plus their
  gradient. The value and gradient equal the unblocked computation (tested).
* :func:`reciprocal_weights`: DKAN's adaptive loss weights (Eq. 4), normalised reciprocals
  ``w_i ∝ ratio_i / L_i`` of the losses' current values, with no gradient through them:
  losses 2 and 1 with ratios 1 and 3 give (1/7, 6/7).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_MAX_LOGITS",
    "INFO_NCE_MODES",
    "clip_loss",
    "cyclip_loss",
    "info_nce",
    "reciprocal_weights",
]

INFO_NCE_MODES = ("pair", "per_gene", "flat", "across_spots")
#: default block size of :func:`info_nce`'s logits (values): 16 MB of float32
DEFAULT_MAX_LOGITS = 1 << 22


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
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = 0.1,
    mode: str = "pair",
    *,
    max_logits: int | None = DEFAULT_MAX_LOGITS,
) -> torch.Tensor:
    """One-way InfoNCE of anchors ``a`` against candidates ``b`` on cosine similarity
    (see the module docstring for the modes and the blocking; ``max_logits=None`` computes
    all logits at once)."""
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
    # every mode as K independent problems of n anchors against their n candidates
    if mode in ("pair", "flat"):
        a, b = a.reshape(1, -1, a.shape[-1]), b.reshape(1, -1, b.shape[-1])
    elif mode == "across_spots":
        a, b = a.transpose(0, 1), b.transpose(0, 1)  # (G, B, d): one problem per gene
    k, n = a.shape[0], a.shape[1]
    scale = 1.0 / float(temperature)
    if max_logits is None or k * n * n <= max_logits:
        return _nce_block(a, b, torch.tensor(0), scale) / (k * n)
    total = a.new_zeros(())
    if n * n <= max_logits:  # whole problems per block
        step = max(1, int(max_logits) // (n * n))
        for k0 in range(0, k, step):
            total = total + _checkpointed(a[k0 : k0 + step], b[k0 : k0 + step], 0, scale)
    else:  # rows of one problem per block
        step = max(1, int(max_logits) // n)
        for i in range(k):
            for r0 in range(0, n, step):
                total = total + _checkpointed(a[i : i + 1, r0 : r0 + step], b[i : i + 1], r0, scale)
    return total / (k * n)


def _nce_block(a: torch.Tensor, b: torch.Tensor, row0: torch.Tensor, scale: float) -> torch.Tensor:
    """Summed cross-entropy of anchors ``a (k, r, d)`` (rows ``row0 …`` of their problems)
    against all candidates ``b (k, n, d)``."""
    logits = (a @ b.transpose(1, 2)) * scale  # (k, r, n)
    labels = torch.arange(a.shape[1], device=a.device) + row0.to(a.device)
    labels = labels.expand(a.shape[0], -1)
    return F.cross_entropy(logits.reshape(-1, b.shape[1]), labels.reshape(-1), reduction="sum")


class _BlockNce(torch.autograd.Function):
    """:func:`_nce_block` whose backward recomputes the block's logits instead of keeping
    them: the forward saves only ``a``, ``b`` and the rows' log-sum-exp."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: torch.Tensor, b: torch.Tensor, row0: int, scale: float
    ) -> torch.Tensor:
        logits = (a @ b.transpose(1, 2)) * scale  # (k, r, n)
        lse = torch.logsumexp(logits, dim=-1)
        rows = torch.arange(a.shape[1], device=a.device)
        positive = logits[:, rows, rows + row0]
        ctx.save_for_backward(a, b, lse)
        ctx.row0, ctx.scale = row0, scale
        return (lse - positive).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        a, b, lse = ctx.saved_tensors
        probs = (a @ b.transpose(1, 2)).mul_(ctx.scale).sub_(lse[..., None]).exp_()
        rows = torch.arange(a.shape[1], device=a.device)
        probs[:, rows, rows + ctx.row0] -= 1.0
        probs.mul_(grad * ctx.scale)
        return probs @ b, probs.transpose(1, 2) @ a, None, None


def _checkpointed(a: torch.Tensor, b: torch.Tensor, row0: int, scale: float) -> torch.Tensor:
    out = _BlockNce.apply(a, b, row0, scale)
    assert isinstance(out, torch.Tensor)
    return out


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
