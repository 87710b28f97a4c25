"""DKAN's modules against the design notes' test values (*spot-models* §2): PEGH identity and
shift invariance, masked region tokens ignored, single-KV attention independent of the query,
and the store's head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.models.base import LatticeNodes
from napari_histoexpress.models.dkan import DKAN, DkanConfig, PositionalConv
from napari_histoexpress.models.transformer_blocks import MultiHead as _MultiHead

TINY = {**DKAN.contract_config(), "dim": 16, "heads": 2, "region_size": 3}


def _model(**kw) -> DKAN:
    torch.manual_seed(0)
    model = DKAN.from_config({**TINY, **kw})
    model.set_gene_vectors(np.random.default_rng(0).normal(size=(3, 6)))
    return model.eval()


def _lattice(model: DKAN, rows: int = 5, cols: int = 6, seed: int = 1) -> LatticeNodes:
    rr, cc = np.mgrid[0:rows, 0:cols]
    rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
    feats = np.random.default_rng(seed).normal(size=(len(rc), model.node_feature_dim))
    return model.section_nodes(feats, rc)


def test_pegh_with_a_zero_kernel_is_the_identity() -> None:
    peg = PositionalConv(4)
    torch.nn.init.zeros_(peg.conv.weight)
    torch.nn.init.zeros_(peg.conv.bias)
    x = torch.randn(6, 4)
    rc = torch.tensor([[0, 0], [0, 1], [1, 0], [2, 2], [5, 1], [3, 3]])
    torch.testing.assert_close(peg(x, rc), x)


def test_pegh_mixes_lattice_neighbours_only() -> None:
    peg = PositionalConv(1)
    with torch.no_grad():
        peg.conv.weight.fill_(1.0)
        peg.conv.bias.zero_()
    x = torch.tensor([[1.0], [10.0], [100.0]])
    rc = torch.tensor([[0, 0], [0, 1], [0, 5]])  # the third is no neighbour
    out = peg(x, rc)
    torch.testing.assert_close(out, torch.tensor([[12.0], [21.0], [200.0]]))
    keep = torch.tensor([True, False, True])  # an off-tissue token reaches nobody
    torch.testing.assert_close(peg(x, rc, keep)[:, 0], torch.tensor([2.0, 11.0, 200.0]))


def test_a_shifted_lattice_changes_nothing() -> None:
    model = _model()
    nodes = _lattice(model)
    shifted = LatticeNodes(
        features=nodes.features,
        positions_um=nodes.positions_um,
        grid_rc=nodes.grid_rc + torch.tensor([7, 3]),
        lattice_shape=(20, 20),
        pitch_um=nodes.pitch_um,
    )
    with torch.no_grad():
        torch.testing.assert_close(model.slide_context(shifted), model.slide_context(nodes))


def test_masked_region_tokens_change_nothing() -> None:
    """Perturbing the features of off-tissue nodes (masked region tokens, no keys of the
    global encoder, zeros in its convolution) leaves every tissue node's output unchanged."""
    model = _model()
    nodes = _lattice(model)
    tissue = torch.ones(len(nodes), dtype=torch.bool)
    tissue[[7, 8, 13, 20]] = False
    nodes.tissue = tissue
    with torch.no_grad():
        before = model.slide_context(nodes)
        nodes.features[~tissue] += 50.0 * torch.randn(int((~tissue).sum()), nodes.features.shape[1])
        after = model.slide_context(nodes)
    torch.testing.assert_close(after[tissue], before[tissue])
    assert not torch.allclose(after[~tissue], before[~tissue])  # their own outputs do change


def test_region_mask_and_bias_are_used() -> None:
    model = _model()
    nodes = _lattice(model)
    with torch.no_grad():
        base = model.slide_context(nodes)
        model.region_bias.add_(torch.randn_like(model.region_bias))
        assert not torch.allclose(model.slide_context(nodes), base)


def test_single_kv_attention_does_not_depend_on_the_query() -> None:
    """The released code's ``kv="fused"``: softmax over one key is 1, so the attention adds
    ``W_o·W_v·kv`` whatever the query."""
    torch.manual_seed(0)
    attn = _MultiHead(8, 2, 0.0).eval()
    kv = torch.randn(3, 1, 8)
    q1, q2 = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    out1, out2 = attn(q1, kv), attn(q2, kv)
    torch.testing.assert_close(out1, out2)
    expected = attn.o(attn.v(kv)).expand(3, 5, 8)
    torch.testing.assert_close(out1, expected)
    many = torch.randn(3, 4, 8)  # with several tokens (kv="tokens") the query matters
    assert not torch.allclose(attn(q1, many), attn(q2, many))


def test_fused_kv_makes_every_gene_see_the_same_image_term() -> None:
    model = _model(kv="fused", image_path_layers=1)
    nodes = _lattice(model)
    with torch.no_grad():
        ctx = model.section_context(nodes)
        levels = model.spot_levels(nodes.features[:4], nodes.grid_rc[:4], ctx)
        text = model.text_tokens()
        layer = model.image_path[0]
        memory = layer.norm_kv(levels["f_img"][:, None, :])
        q = layer.norm1(text[None].expand(4, -1, -1))
        term = layer.attn(q, memory)
    torch.testing.assert_close(term[:, 0], term[:, 1])
    torch.testing.assert_close(term[:, 0], term[:, 2])


def test_store_head_is_identity_or_the_image_head() -> None:
    model = _model()
    W, b = model.gene_head()
    np.testing.assert_array_equal(W, np.eye(3))
    np.testing.assert_array_equal(b, np.zeros(3))
    img = _model(store="image_head")
    W, b = img.gene_head()
    assert W.shape == (16, 3) and img.feature_dim == 16
    nodes = _lattice(img)
    with torch.no_grad():
        f = img.slide_context(nodes)
        ctx = img.section_context(nodes)
        levels = img.spot_levels(nodes.features, nodes.grid_rc, ctx)
    np.testing.assert_allclose(
        f.double().numpy() @ W + b, levels["y_img"].double().numpy(), atol=1e-5
    )


def test_inference_chunks_and_attention_blocks_change_nothing() -> None:
    model = _model()
    nodes = _lattice(model, 6, 7)
    with torch.no_grad():
        whole = model.slide_context(nodes)
        model.config.inference_chunk = 5
        chunked = model.slide_context(nodes)
        ctx = model.section_context(nodes)
        blocked = model.section_context(nodes, block=64)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(blocked.global_tokens, ctx.global_tokens)


def test_config_checks_and_defaults() -> None:
    cfg = DkanConfig(**{**TINY, "n_genes": 3})
    assert cfg.pitch_um == pytest.approx(32.0) and cfg.region_step == 2
    assert cfg.node_dim == cfg.image_dim + 4 * cfg.token_dim
    for bad in ({"kv": "x"}, {"store": "x"}, {"contrastive": "pair"}, {"region_size": 4}):
        with pytest.raises(ValueError):
            DkanConfig(**{**TINY, **bad})
    with pytest.raises(ValueError, match="unknown DKAN config"):
        DKAN.from_config({"nope": 1})


def test_paper_pooling_gives_tokens_of_the_last_level() -> None:
    from napari_histoexpress.models import feature_cache as fc

    model = _model()
    assert model.frozen_encoder().pooling == "mean+tokens2"
    x = torch.rand(2, 3, 32, 32)
    raw = model.encode_images(x)
    D = model.config.image_dim
    mean_only = fc.encode_tensor(
        model.encoder, x, *model.frozen_encoder().input_stats(), device="cpu"
    )
    np.testing.assert_allclose(raw[:, :D].numpy(), mean_only, rtol=1e-6, atol=1e-6)
    tokens = raw[:, D:].reshape(2, 4, -1)
    # the tokens' mean is the last level's global mean (2 × 2 average pooling of an even map)
    last = mean_only[:, D - model.config.token_dim :]
    np.testing.assert_allclose(tokens.mean(1).numpy(), last, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        fc.check_pooling("mean+tokens0")
