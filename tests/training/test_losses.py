"""PixNet losses: MSE + λ(1 − batch-wise Pearson)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.training.losses import batch_pearson, pcc_loss, pixnet_loss


def test_pearson_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 6, generator=g, dtype=torch.float64)
    b = a + torch.randn(50, 6, generator=g, dtype=torch.float64)
    ref = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(6)]
    np.testing.assert_allclose(batch_pearson(a, b).numpy(), ref, rtol=1e-6)


def test_perfect_and_anti_correlated() -> None:
    t = torch.randn(32, 8)
    assert pcc_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)
    assert pcc_loss(2 * t + 3, t).item() == pytest.approx(0.0, abs=1e-5)
    assert pcc_loss(-t, t).item() == pytest.approx(2.0, abs=1e-5)
    assert pixnet_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)
    mse = torch.mean((t + 1 - t) ** 2).item()
    assert pixnet_loss(t + 1, t, lam=0.5).item() == pytest.approx(mse, abs=1e-5)
    assert pixnet_loss(-t, t, lam=0.5).item() == pytest.approx(
        torch.mean((2 * t) ** 2).item() + 1.0, rel=1e-5
    )


def test_constant_columns_are_finite() -> None:
    target = torch.randn(16, 4)
    target[:, 1] = 3.0  # constant gene
    pred = torch.zeros(16, 4, requires_grad=True)  # constant prediction (e.g. at init)
    loss = pixnet_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    assert pcc_loss(pred.detach(), target).item() == pytest.approx(1.0)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        pcc_loss(torch.zeros(3, 2), torch.zeros(3, 3))
