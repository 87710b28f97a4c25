"""ALIGN-ST's modules against the design notes' test values (*spot-models* §3): Eq. 5's
gating, ASIG on the 3-gene example, GraphSAGE on a 3-node path, the store's head, adding a
gene without ASIG, and the patch graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.models.align_st import AlignST, asig_aggregate, gated_prompts
from napari_histoexpress.models.base import LatticeNodes, SpotInputs


def _model(**kw) -> AlignST:
    torch.manual_seed(0)
    model = AlignST.from_config({**AlignST.contract_config(), **kw})
    G, L, dg = model.gene_tokens.shape
    rng = np.random.default_rng(0)
    model.set_gene_tokens([rng.normal(size=(n, dg)) for n in [L, 2, 1][:G]])
    return model.eval()


def _nodes(model: AlignST, n: int = 12, seed: int = 1) -> LatticeNodes:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, model.node_feature_dim)).astype(np.float32)
    feats[:, int(model.config.image_dim) :] = rng.uniform(size=(n, model.config.nuclei_dim))
    rc = np.stack([np.arange(n) // 4, np.arange(n) % 4], axis=1)
    return LatticeNodes(
        features=torch.from_numpy(feats),
        positions_um=torch.from_numpy(rc[:, ::-1] * 100.0),
        grid_rc=torch.from_numpy(rc),
        lattice_shape=(3, 4),
        pitch_um=100.0,
    )


def test_eq5_gated_prompt_fusion() -> None:
    out = gated_prompts(torch.ones(1, 2), torch.zeros(1, 2), 0.2)
    torch.testing.assert_close(out, torch.tensor([[0.2, 0.2]]))


def test_with_alpha_zero_the_image_gives_the_genes_no_gradient() -> None:
    for alpha, expect_grad in ((0.0, False), (0.2, True)):
        model = _model(alpha=alpha)
        H = torch.randn(6, model.config.dim, requires_grad=True)
        model.gene_embeddings(model.image_stream(H)).sum().backward()
        got = H.grad is not None and bool(H.grad.abs().sum() > 0)
        assert got is expect_grad, alpha


def test_asig_on_the_three_gene_example() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zn, adjacency = asig_aggregate(z, top_k=2)  # gene 1's neighbours: genes 2 and 3
    s12 = float(torch.tanh(torch.tensor(1.0)))  # Z_2 · tanh(Z_1 + Z_2)
    s13 = float(torch.tanh(torch.tensor(2.0)) + torch.tanh(torch.tensor(1.0)))
    assert (s12, s13) == pytest.approx((0.76159, 1.72562), abs=1e-5)
    beta = np.exp([s12, s13]) / np.exp([s12, s13]).sum()
    assert beta == pytest.approx((0.27607, 0.72393), abs=1e-5)
    torch.testing.assert_close(zn[0], torch.tensor([0.72393, 1.0]), atol=1e-5, rtol=0)
    assert adjacency.sum(1).tolist() == [2, 2, 2] and not adjacency.diagonal().any()
    _, adjacency = asig_aggregate(torch.randn(7, 4), top_k=4)
    assert adjacency.sum(1).tolist() == [4] * 7 and not adjacency.diagonal().any()
    zn, adjacency = asig_aggregate(torch.randn(1, 4), top_k=4)  # no other gene
    assert not zn.any() and not adjacency.any()


def test_graphsage_with_identity_weights_on_a_path() -> None:
    model = _model(dim=2, heads=1, embed_dim=2, sage_layers=1)
    (conv,) = model.sage
    with torch.no_grad():
        conv.lin_l.weight.copy_(torch.eye(2))
        conv.lin_l.bias.zero_()
        conv.lin_r.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 3.0]])
    edges = torch.tensor([[1, 0, 2, 1], [0, 1, 1, 2]])  # 0 - 1 - 2, both ways
    with torch.no_grad():
        out = model.graph_features(x, edges)
    # mean of the neighbours + the node itself
    expect = torch.tensor([[2 + 1, 1 + 0], [2.5 + 2, 1.5 + 1], [2 + 4, 1 + 3]])
    torch.testing.assert_close(out, expect)


def test_store_head_of_circle_mean_features_is_the_mean_prediction() -> None:
    model = _model()
    nodes = _nodes(model)
    with torch.no_grad():
        fv = model.slide_context(nodes).double().numpy()
        W, b = model.slide_gene_head(nodes)
        pred = model.predict_slide(nodes).double().numpy()
    inside = [1, 2, 5, 6]  # the nodes of a circle
    np.testing.assert_allclose(fv[inside].mean(0) @ W + b, pred[inside].mean(0), atol=1e-6)
    assert not b.any()  # Eq. 9 has no bias


def test_the_head_depends_on_the_slide_through_the_prompts() -> None:
    model = _model()
    with torch.no_grad():
        W1, _ = model.slide_gene_head(_nodes(model, seed=1))
        W2, _ = model.slide_gene_head(_nodes(model, seed=2))
    assert not np.allclose(W1, W2)
    model = _model(use_prompts=False)  # without prompts the genes never see the slide
    with torch.no_grad():
        W1, _ = model.slide_gene_head(_nodes(model, seed=1))
        W2, _ = model.slide_gene_head(_nodes(model, seed=2))
    np.testing.assert_allclose(W1, W2, atol=1e-6)


def test_adding_a_gene_without_asig_leaves_the_others_unchanged() -> None:
    model = _model(use_asig=False)
    nodes = _nodes(model)
    new = [np.random.default_rng(5).normal(size=(3, model.config.gene_dim))]
    with torch.no_grad():
        W, _ = model.slide_gene_head(nodes)
        col = model.gene_columns(model.slide_state(nodes), new)
        # the same gene as one of the model's own: its column is its trained column
        own = model.gene_tokens[1, :2].float().numpy()
        again = model.gene_columns(model.slide_state(nodes), [own])
    assert col.shape == (model.feature_dim, 1)
    np.testing.assert_allclose(again[:, 0], W[:, 1], atol=1e-5)
    np.testing.assert_allclose(model.slide_gene_head(nodes)[0], W)  # nothing moved


def test_with_asig_a_new_gene_takes_neighbours_from_the_models_genes() -> None:
    model = _model(top_k=2)
    nodes = _nodes(model)
    own = model.gene_tokens[2, :1].float().numpy()
    with torch.no_grad():
        W, _ = model.slide_gene_head(nodes)
        col = model.gene_columns(
            model.slide_state(nodes), [own]
        )  # a copy of gene 2 among genes 0, 1, 2
    assert np.isfinite(col).all() and not np.allclose(col[:, 0], 0)
    assert not np.allclose(col[:, 0], W[:, 2])  # its neighbours differ (it has a twin now)


def test_patch_graph_spatial_and_feature_neighbours() -> None:
    model = _model(knn_spatial=2, knn_feature=1)
    nodes = _nodes(model)
    edges = model.patch_graph(nodes.features, nodes.positions_um)
    src, dst = edges
    assert not (src == dst).any()
    assert len({tuple(e) for e in edges.T.tolist()}) == edges.shape[1]  # no duplicates
    for i in range(len(nodes)):
        assert 2 <= int((dst == i).sum()) <= 3  # 2 spatial ∪ 1 by features
    # node 0 at (0, 0): its two nearest are (100, 0) and (0, 100) = nodes 1 and 4
    assert {1, 4} <= set(src[dst == 0].tolist())
    senders = torch.ones(len(nodes), dtype=torch.bool)
    senders[[1, 4]] = False
    edges = model.patch_graph(nodes.features, nodes.positions_um, senders)
    assert not np.isin(edges[0].numpy(), [1, 4]).any()


def test_off_tissue_nodes_change_nothing_on_the_tissue_prompts() -> None:
    """Nodes off the tissue send nothing: perturbing them keeps the slide's head."""
    model = _model()
    nodes = _nodes(model)
    nodes.tissue = torch.ones(len(nodes), dtype=torch.bool)
    nodes.tissue[[3, 7]] = False
    with torch.no_grad():
        W1, _ = model.slide_gene_head(nodes)
        nodes.features[[3, 7]] += 10.0
        W2, _ = model.slide_gene_head(nodes)  # an in-place edit is not served from the memo
    np.testing.assert_allclose(W1, W2, atol=1e-5)


def test_nuclei_part_of_the_features_is_the_segmenters_grid() -> None:
    from napari_histoexpress.models.feature_cache import nuclei_features

    model = _model()
    p = model.config.input_px
    img = torch.ones(2, 3, p, p) * torch.tensor([0.92, 0.67, 0.78]).view(1, 3, 1, 1)
    img[:, :, 8:20, 8:20] = torch.tensor([0.24, 0.16, 0.59]).view(1, 3, 1, 1)  # a nucleus
    raw = model.encode_spots(SpotInputs(images=img))
    D = int(model.config.image_dim)
    grid = raw[:, D:].numpy()
    rgb = (img.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    expect = nuclei_features(rgb, model.config.input_mpp, model.config.nuclei_grid, "hed-watershed")
    np.testing.assert_allclose(grid, expect)
    assert grid.max() > 0.5 and grid.min() == 0.0
    assert model.pooling == "mean+nuclei8"
    assert _model(use_nuclei=False).node_feature_dim == D


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="mask_strides"):
        AlignST.from_config({**AlignST.contract_config(), "mask_strides": [1, 2]})
    with pytest.raises(ValueError, match="alpha"):
        AlignST.from_config({**AlignST.contract_config(), "alpha": 1.5})
    with pytest.raises(ValueError, match="unknown ALIGN-ST config keys"):
        AlignST.from_config({"no_such": 1})


def test_the_kept_state_gives_the_same_columns_as_the_nodes() -> None:
    model = _model()
    nodes = _nodes(model)
    state = model.slide_state(nodes)
    assert state["prompts"].shape == (2, 2, model.config.dim)
    assert state["asig_z"].shape == (3, model.config.embed_dim)
    seqs = [np.random.default_rng(3).normal(size=(4, model.config.gene_dim))]
    with torch.no_grad():
        W, _ = model.slide_gene_head(nodes)
        again = model.gene_columns(state, [model.gene_tokens[0].float().numpy()])
    np.testing.assert_allclose(
        model.gene_columns(state, seqs), model.gene_columns(model.slide_state(nodes), seqs)
    )
    # gene 0 described again by its own tokens, with ASIG over the model's genes + itself:
    # finite, and the slide's prompts reach it (another slide, another column)
    assert np.isfinite(again).all()
    other = model.gene_columns(model.slide_state(_nodes(model, seed=4)), seqs)
    assert not np.allclose(other, model.gene_columns(state, seqs))
    assert W.shape[1] == 3
    without = _model(use_prompts=False)
    assert without.slide_state(_nodes(without))["prompts"].size == 0


def test_a_finer_lattice_is_split_into_offset_lattices() -> None:
    """At half the training pitch the nodes form 4 offset lattices at the training pitch;
    the patch graph stays within each (the geometry the model was trained on)."""
    model = _model(knn_spatial=2, knn_feature=2)  # trained pitch 100 µm
    rr, cc = np.mgrid[0:6, 0:6]
    rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
    feats = np.random.default_rng(0).normal(size=(len(rc), model.node_feature_dim))
    nodes = LatticeNodes(
        features=torch.from_numpy(feats.astype(np.float32)),
        positions_um=torch.from_numpy(rc[:, ::-1] * 50.0),
        grid_rc=torch.from_numpy(rc),
        lattice_shape=(6, 6),
        pitch_um=50.0,
    )
    groups = model.offset_lattices(nodes)
    assert groups is not None and sorted(set(groups.tolist())) == [0, 1, 2, 3]
    edges = model.patch_graph(nodes.features, nodes.positions_um, groups=groups)
    assert (groups[edges[0]] == groups[edges[1]]).all() and edges.shape[1] > 0
    with torch.no_grad():
        out = model.slide_context(nodes)
    assert out.shape == (36, model.feature_dim) and torch.isfinite(out).all()
    nodes.pitch_um = 100.0
    assert model.offset_lattices(nodes) is None
