"""Choosing the torch device: one rule for training, evaluation and whole-slide prediction."""

from __future__ import annotations

from typing import Any

#: The device names every entry point offers (CLI ``--device``, the Predict widget, the API).
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


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


#: ``precision`` values accepted by training and prediction.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(device: Any, precision: str = "auto") -> Any:
    """The ``torch.autocast`` dtype for ``precision`` on ``device``, or ``None`` for float32.

    ``"auto"``: bfloat16 on CUDA where the GPU supports it (Ampere and later; its float32
    exponent range needs no loss scaling), float16 on older CUDA GPUs, float32 on CPU and
    MPS (CPU autocast is rarely faster for convolutions and MPS autocast support varies
    between torch releases). ``"fp32"`` never autocasts. ``"bf16"``/``"fp16"`` are honoured on
    any device type autocast supports (CPU bf16 is how the tests exercise the mixed-precision
    code path on machines without a GPU).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = _as_device(device)
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: Any, precision: str = "auto") -> Any:
    """A context manager that runs the forward pass in ``precision`` on ``device``.

    A ``contextlib.nullcontext`` for float32. Callers keep reductions that need float32
    (spot sums, losses, stored features) outside it and cast back with ``.float()``.
    """
    import contextlib

    import torch

    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    device = _as_device(device)
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: Any, precision: str = "auto") -> Any:
    """A ``torch.amp.GradScaler`` when training autocasts to float16 on CUDA, else ``None``.

    float16's narrow exponent range underflows small gradients, so its losses are scaled;
    bfloat16 and float32 need no scaling.
    """
    import torch

    device = _as_device(device)
    if device.type == "cuda" and autocast_dtype(device, precision) == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def _as_device(device: Any) -> Any:
    import torch

    return device if isinstance(device, torch.device) else torch.device(device)
