"""CLIP and CyCLIP against the hand-computed values of design *spot-models* §1."""

from __future__ import annotations

import numpy as np
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


def test_info_nce_hand_values_and_modes() -> None:
    from napari_histoexpress.training.contrastive_losses import info_nce

    eye = torch.eye(2)
    assert float(info_nce(eye, eye, temperature=1.0)) == pytest.approx(0.31326, abs=1e-5)
    assert float(info_nce(eye, eye, temperature=0.1)) == pytest.approx(4.54e-5, rel=1e-2)
    # cosine similarity: scaling an embedding changes nothing
    assert float(info_nce(3.0 * eye, eye, temperature=1.0)) == pytest.approx(0.31326, abs=1e-5)
    per_spot = torch.stack([eye, eye])  # (B=2, G=2, d=2)
    # per gene: the negatives are the spot's other genes only, so two spots with identical
    # genes are no negatives of each other; flat counts them (higher loss)
    same = info_nce(per_spot, per_spot, 1.0, mode="per_gene")
    flat = info_nce(per_spot, per_spot, 1.0, mode="flat")
    assert float(same) == pytest.approx(0.31326, abs=1e-5)
    assert float(flat) == pytest.approx(np.log(2 * np.e + 2) - 1, abs=1e-5)  # 1.00641
    with pytest.raises(ValueError, match="mode"):
        info_nce(eye, eye, mode="both")
    with pytest.raises(ValueError, match=r"\(B, G, d\)"):
        info_nce(eye, eye, mode="flat")


def test_reciprocal_weights_and_distillation_loss_hand_values() -> None:
    from napari_histoexpress.training.contrastive_losses import reciprocal_weights
    from napari_histoexpress.training.losses import distillation_loss

    w = reciprocal_weights([torch.tensor(2.0, requires_grad=True), 1.0], ratios=[1, 3])
    assert w == pytest.approx([1 / 7, 6 / 7])
    assert w[0] * 2.0 + w[1] * 1.0 == pytest.approx(8 / 7)
    with pytest.raises(ValueError, match="positive"):
        reciprocal_weights([0.0, 1.0])
    y = torch.ones(3, 4)
    final = torch.zeros(3, 4)
    heads = [torch.full((3, 4), 0.5) for _ in range(4)]
    assert float(distillation_loss(final, heads, y, lam=0.3)) == pytest.approx(2.0)
