"""Choosing the torch device: one rule for training, evaluation and whole-slide prediction."""

from __future__ import annotations

from typing import Any


def resolve_device(device: Any = "auto") -> Any:
    """``'auto'`` → CUDA if available, else MPS, else CPU; a named device must be available.

    Accepts a ``torch.device`` as is. Raises ``ValueError`` for ``'cuda'``/``'mps'`` when
    this machine has none, rather than failing later inside the first forward pass.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device == "mps" and not mps_ok:
        raise ValueError("device 'mps' requested but MPS is not available")
    return torch.device(device)
