"""CLIP and CyCLIP against the hand-computed values of design *spot-models* §1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.training.contrastive_losses import clip_loss, cyclip_loss, info_nce

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


@pytest.mark.parametrize("mode", ["pair", "per_gene", "flat", "across_spots"])
def test_blocked_info_nce_equals_the_whole_matrix(mode: str) -> None:
    """Blocks of logits (each checkpointed) give the same value and gradients."""
    gen = torch.Generator().manual_seed(3)
    shape = (24, 8) if mode == "pair" else (6, 5, 8)
    a0 = torch.randn(*shape, generator=gen)
    b0 = torch.randn(*shape, generator=gen)
    results = []
    for max_logits in (None, 7, 40, 10**9):  # rows of one problem, whole problems, one block
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        loss = info_nce(a, b, 0.1, mode, max_logits=max_logits)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for value, ga, gb in results[1:]:
        torch.testing.assert_close(value, results[0][0])
        torch.testing.assert_close(ga, results[0][1])
        torch.testing.assert_close(gb, results[0][2])


def test_across_spots_negatives_are_the_other_spots() -> None:
    """Two spots, one gene each identical to itself: per gene a 2 × 2 problem, the value of
    the pair mode on that gene's embeddings."""
    a = torch.randn(2, 3, 4)
    b = torch.randn(2, 3, 4)
    per_gene = [info_nce(a[:, g], b[:, g], 0.1, "pair") for g in range(3)]
    torch.testing.assert_close(info_nce(a, b, 0.1, "across_spots"), torch.stack(per_gene).mean())


_PEAK_SCRIPT = """
import resource, torch
from napari_histoexpress.training.contrastive_losses import info_nce
torch.manual_seed(0)
a = torch.randn(96, 250, 16, requires_grad=True)   # B·G = 24,000 tokens: 2.3 GB of logits
b = torch.randn(96, 250, 16, requires_grad=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = info_nce(a, b, 0.1, "flat")
loss.backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, float(loss.detach()), bool(torch.isfinite(a.grad).all()))
"""


def test_flat_info_nce_memory_stays_bounded() -> None:
    """The flat mode on 24,000 tokens (unblocked: 2.3 GB of logits, twice that with their
    gradient) grows the peak RSS of a fresh process by well under 1 GB. glibc's malloc keeps
    freed blocks of its per-thread arenas resident, so the process maps every allocation
    over 128 kB (``MALLOC_MMAP_THRESHOLD_``) and returns it on free: its RSS is then the
    live memory (unblocked, the same script grows by 6.6 GB)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    grown_mb, value, finite = float(out[0]), float(out[1]), out[2] == "True"
    assert finite and value > 0
    assert grown_mb < 1024, f"peak RSS grew by {grown_mb:.0f} MB"
