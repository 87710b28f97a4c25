"""HAGE's modules against design *spot-models* §1: GE with one gene, gradients, the head
on the features equals the forward pass, the ablation and the missing-gene rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.models.hage import HAGE, GeneEmbeddingAttention, HageConfig


def _model(**kw) -> HAGE:
    torch.manual_seed(0)
    config = {**HAGE.contract_config(), **kw}
    model = HAGE.from_config(config)
    model.set_gene_vectors(np.random.default_rng(0).normal(size=(config["n_genes"], 6)))
    return model


def test_ge_with_one_gene_is_the_value_projection_whatever_the_query() -> None:
    torch.manual_seed(0)
    ge = GeneEmbeddingAttention(dim=8, heads=2, mlp_ratio=4.0, dropout=0.0, use_ge=True)
    gene = torch.randn(1, 8)
    q1, q2 = torch.randn(3, 8), 10.0 * torch.randn(3, 8)
    with torch.no_grad():
        a1, a2 = ge.attention(q1, gene), ge.attention(q2, gene)
        expected = ge.out_proj(ge.v_proj(ge.norm_kv(gene)))  # W_o·(W_v·LN(g) + b_v) + b_o
    torch.testing.assert_close(a1, expected.expand(3, -1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a2, expected.expand(3, -1), rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_image_and_gene_projections_not_the_frozen_encoder() -> None:
    model = _model()
    model.train()
    x = torch.randn(5, model.config.image_dim)
    model(x).pow(2).mean().backward()
    assert model.image_proj.weight.grad is not None and model.image_proj.weight.grad.abs().sum() > 0
    assert model.gene_proj.weight.grad is not None and model.gene_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not model.encoder.training  # frozen: eval mode even in training mode
    names = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in names for p in model.encoder.parameters())
    assert id(model.gene_offsets) not in names  # no learned gene: no offsets trained


def test_head_applied_to_features_equals_forward() -> None:
    model = _model().eval()
    x = torch.randn(7, model.config.image_dim, generator=torch.Generator().manual_seed(1))
    W, b = model.gene_head()
    with torch.no_grad():
        forward = model(x).double().numpy()
        from napari_histoexpress.models.base import SpotInputs

        feats = model.encode_spots(SpotInputs(features=x)).double().numpy()
    np.testing.assert_allclose(feats @ W + b, forward, rtol=1e-6, atol=1e-6)


def test_without_ge_the_genes_change_nothing() -> None:
    x = torch.randn(4, _model().config.image_dim)
    with torch.no_grad():
        plain = _model(use_ge=False).eval()
        before = plain(x)
        plain.gene_vectors.mul_(3.0).add_(1.0)
        torch.testing.assert_close(plain(x), before)
        ge = _model().eval()
        before = ge(x)
        ge.gene_vectors.mul_(3.0).add_(1.0)
        assert not torch.allclose(ge(x), before)


def test_learned_genes_train_their_offsets() -> None:
    model = _model()
    vectors = np.zeros((3, 6), np.float32)
    model.set_gene_vectors(vectors, learned=np.array([False, True, False]))
    assert id(model.gene_offsets) in {id(p) for p in model.trainable_parameters()}
    model(torch.randn(4, model.config.image_dim)).sum().backward()
    grad = model.gene_offsets.grad
    assert grad is not None and grad[1].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    with pytest.raises(ValueError, match="gene vectors must be"):
        model.set_gene_vectors(np.zeros((2, 6)))


def test_default_config_resolves_the_offline_encoders() -> None:
    cfg = HageConfig(n_genes=4)
    assert cfg.backbone == "tf_efficientnet_lite0" and cfg.pretrained == "imagenet"
    assert cfg.image_dim == 16 + 24 + 40 + 112 + 320  # Lite0's pooled levels
    assert cfg.gene_dim == 384  # all-MiniLM-L6-v2
    assert (cfg.dim, cfg.heads, cfg.head_dim, cfg.temperature) == (1024, 8, 256, 0.07)
    assert (cfg.lambda_cyclip, cfg.lambda_local, cfg.lambda_global, cfg.lambda_pcc) == (
        10.0, 1.0, 1.0, 10.0
    )  # fmt: skip
    assert (cfg.k_expression, cfg.k_image) == (30, 2)
    assert HAGE.settings_of({"n_genes": 4}) == cfg.to_dict()
    with pytest.raises(ValueError, match="gene_missing"):
        HageConfig(n_genes=2, gene_missing="drop")
    with pytest.raises(ValueError, match="unknown HAGE config"):
        HAGE.from_config({"n_genes": 2, "bogus": 1})
