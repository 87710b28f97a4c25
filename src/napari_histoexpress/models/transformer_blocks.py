"""Transformer pieces DKAN and ALIGN-ST share: blocked scaled dot-product attention, a
multi-head layer and a pre-LayerNorm block (self- or cross-attention + MLP, residual)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Block", "MultiHead", "attention"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention ``(…, h, n, dh)`` with an optional ``key_mask``
    (``(…, m)`` True = attend) and additive ``bias`` (broadcast to ``(…, h, n, m)``).
    ``block``: at most this many logits at once (queries in blocks; inference only)."""
    scale = q.shape[-1] ** -0.5
    n, m = q.shape[-2], k.shape[-2]
    if n == 0:  # no queries (a slide without patches and without prompts)
        return q.new_zeros((*q.shape[:-1], v.shape[-1]))
    rows = n if block is None else max(1, block // max(1, m * int(np.prod(q.shape[:-2]))))
    outs = []
    for r0 in range(0, n, rows):
        logits = (q[..., r0 : r0 + rows, :] @ k.transpose(-1, -2)) * scale
        if bias is not None:
            logits = logits + (bias[..., r0 : r0 + rows, :] if bias.shape[-2] == n else bias)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[..., None, None, :], float("-inf"))
        outs.append(torch.softmax(logits.float(), dim=-1).to(v.dtype) @ v)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


class MultiHead(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        block: int | None = None,
    ) -> torch.Tensor:
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (h, -1)).transpose(-3, -2)  # (…, h, n, dh)

        out = attention(
            split(self.q(x)),
            split(self.k(kv)),
            split(self.v(kv)),
            key_mask=key_mask,
            bias=bias,
            block=block,
        )
        return self.drop(self.o(out.transpose(-3, -2).flatten(-2)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: self-attention (or cross-attention when ``kv`` is
    given) + MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = MultiHead(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = round(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        *,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        block: int | None = None,
    ) -> torch.Tensor:
        q = self.norm1(x)
        memory = q if kv is None else self.norm_kv(kv)
        x = x + self.attn(q, memory, key_mask, bias, block)
        return x + self.mlp(self.norm2(x))
