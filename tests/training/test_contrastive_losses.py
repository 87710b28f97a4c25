"""CLIP and CyCLIP against the hand-computed values of design *spot-models* §1."""

from __future__ import annotations

import pytest
import torch

from napari_histoexpress.training.contrastive_losses import clip_loss, cyclip_loss

ZI = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
ZE = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_cyclip_hand_value_and_zero_for_identical_embeddings() -> None:
    assert float(cyclip_loss(ZI, ZE)) == pytest.approx(0.72, abs=1e-6)
    assert float(cyclip_loss(ZE, ZE)) == pytest.approx(0.0, abs=1e-7)
    # symmetric in its two modalities
    assert float(cyclip_loss(ZE, ZI)) == pytest.approx(0.72, abs=1e-6)


def test_clip_hand_values() -> None:
    assert float(clip_loss(ZI, ZE, temperature=1.0)) == pytest.approx(0.44888, abs=1e-5)
    assert float(clip_loss(ZI, ZE, temperature=0.07)) == pytest.approx(0.014787, abs=1e-6)


def test_clip_prefers_matched_pairs_and_has_gradients() -> None:
    a = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    a.requires_grad_(True)
    matched = clip_loss(a, a.detach())
    shuffled = clip_loss(a, a.detach().roll(1, dims=0))
    assert float(matched.detach()) < float(shuffled.detach())
    matched.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(ZI, ZE[:1])
