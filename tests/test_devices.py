"""Device and precision rules shared by training and whole-slide prediction."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from napari_histoexpress.devices import (
    PRECISIONS,
    autocast,
    autocast_dtype,
    grad_scaler,
    resolve_device,
)


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_auto_precision_per_device(monkeypatch, bf16_ok: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    want = torch.bfloat16 if bf16_ok else torch.float16
    assert autocast_dtype(torch.device("cuda"), "auto") is want
    assert autocast_dtype("cuda:0", "auto") is want
    assert autocast_dtype("cpu", "auto") is None
    assert autocast_dtype("mps", "auto") is None


def test_explicit_precisions() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    for dev in ("cpu", "cuda", "mps"):
        assert autocast_dtype(dev, "fp32") is None
        assert autocast_dtype(dev, "bf16") is torch.bfloat16
        assert autocast_dtype(dev, "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype("cpu", "half")


def test_autocast_context_really_casts_on_cpu() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    assert isinstance(autocast("cpu", "auto"), contextlib.nullcontext)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert conv(x).dtype is torch.float32


def test_grad_scaler_only_for_float16_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert grad_scaler("cpu", "fp16") is None  # CPU float16 autocast: no scaler needed
    assert grad_scaler("cpu", "bf16") is None
    assert grad_scaler("cuda", "bf16") is None
    assert grad_scaler("cuda", "fp32") is None
    with warnings.catch_warnings():  # without CUDA torch warns that the scaler is disabled
        warnings.simplefilter("ignore")
        scaler = grad_scaler("cuda", "auto")  # pre-Ampere GPU: auto = fp16 -> scaled
    assert isinstance(scaler, torch.amp.GradScaler)


def test_resolve_device_rules() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
