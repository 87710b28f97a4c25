"""The model contract: every registered model, built small, honours the one model interface.

Parametrised over :func:`~napari_histoexpress.models.registry.available_models`, so a new
model gets these checks by registering (and giving ``contract_config()``, plus
``contract_instance()`` when it must be fitted first; see ``models/base.py``):

* it is a ``HistoModel`` of kind ``dense`` or ``spot``, with a gene head ``W (C, G)``,
  ``b (G,)``;
* dense: ``features`` on ``(2, 3, n, n)`` with ``n = 2 · input_multiple`` is exactly
  ``(2, C, n/s, n/s)``, and ``features @ W + b`` equals the model's own gene map where it has
  one (``gene_maps``); spot: ``encode_spots`` gives ``(N, C)`` and ``features @ W + b`` equals
  ``predict_features`` where the model has one; a spot model with slide context
  (``needs_slide_context``) gives ``(N, D)`` pass-1 features there and ``slide_context`` of
  them on a lattice gives ``(N, C)``, equal to ``spot_context`` of the same nodes, and
  ``slide_gene_head`` of those nodes reproduces ``predict_slide`` where the model has one;
* torch models: forward + backward runs and every gradient is finite;
* ``save_checkpoint`` → ``load_checkpoint`` (safetensors + JSON) gives identical outputs, the
  same genes, input spec and ``config_dict``;
* ``config_dict`` → ``from_config`` → ``config_dict`` is stable and JSON-able.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_histoexpress.models.base import (
    DenseModel,
    HistoModel,
    InputSpec,
    LatticeNodes,
    SpotInputs,
    SpotModel,
)
from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint
from napari_histoexpress.models.registry import available_models, get_model_class

MODELS = available_models()
N_SPOTS = 5


def _instance(name: str) -> HistoModel:
    torch.manual_seed(0)
    model = get_model_class(name).contract_instance()
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest) -> HistoModel:
    return _instance(request.param)


def _dense_input(model: DenseModel, batch: int = 2) -> torch.Tensor:
    n = 2 * model.input_spec().input_multiple
    return torch.rand(batch, 3, n, n, generator=torch.Generator().manual_seed(1))


def _spot_inputs(model: SpotModel) -> SpotInputs:
    spec = model.input_spec()
    assert spec.patch_px, f"{type(model).__name__}: a spot model's input spec gives patch_px"
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(N_SPOTS, 3, spec.patch_px, spec.patch_px, generator=gen)
    positions = torch.rand(N_SPOTS, 2, generator=gen) * 1000.0
    return SpotInputs(images=images, positions_um=positions)


def _nodes(features: torch.Tensor) -> LatticeNodes:
    """The contract's spots as lattice nodes: a 2 × 3 lattice, node 4 off the tissue."""
    n = features.shape[0]
    rc = torch.tensor([[i // 3, i % 3] for i in range(n)], dtype=torch.int64)
    return LatticeNodes(
        features=features,
        positions_um=rc.double() * 100.0,
        grid_rc=rc,
        lattice_shape=(2, 3),
        pitch_um=100.0,
        tissue=torch.arange(n) != 4,
    )


def _spot_features(model: SpotModel, inputs: SpotInputs) -> torch.Tensor:
    """``encode_spots``, then (slide context) ``slide_context`` on :func:`_nodes`."""
    y = model.encode_spots(inputs)
    if model.needs_slide_context:
        assert tuple(y.shape) == (len(inputs), model.node_feature_dim)
        y = model.slide_context(_nodes(y))
    return y


def _outputs(model: HistoModel) -> np.ndarray:
    """What the model computes on the contract's fixed input, as float64 numpy."""
    with torch.no_grad():
        if isinstance(model, DenseModel):
            y = model.features(_dense_input(model))
        else:
            assert isinstance(model, SpotModel)
            y = _spot_features(model, _spot_inputs(model))
    return y.detach().double().cpu().numpy()


def test_kind_and_gene_head(model: HistoModel) -> None:
    assert isinstance(model, HistoModel)
    assert model.kind in ("dense", "spot")
    assert isinstance(model, DenseModel if model.kind == "dense" else SpotModel)
    assert model.registry_name in MODELS
    W, b = model.gene_head()
    assert W.shape == (model.feature_dim, model.n_genes) and b.shape == (model.n_genes,)
    assert W.dtype == b.dtype == np.float64
    assert np.isfinite(W).all() and np.isfinite(b).all()
    assert len(model.gene_names) == model.n_genes
    spec = model.input_spec()
    assert isinstance(spec, InputSpec) and len(spec.mean) == len(spec.std) == 3
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_features_shape_and_head(model: HistoModel) -> None:
    W, b = model.gene_head()
    if isinstance(model, DenseModel):
        spec = model.input_spec()
        s = model.feature_stride
        assert spec.stride == s >= 1 and spec.input_multiple % s == 0
        x = _dense_input(model)
        n = x.shape[-1]
        with torch.no_grad():
            feats = model.features(x)
        assert tuple(feats.shape) == (2, model.feature_dim, n // s, n // s)
        genes = np.einsum("bchw,cg->bghw", feats.double().numpy(), W) + b[None, :, None, None]
        gene_maps = getattr(model, "gene_maps", None)
        if gene_maps is not None:
            with torch.no_grad():
                own = gene_maps(feats).double().numpy()
            np.testing.assert_allclose(genes, own, rtol=1e-5, atol=1e-5)
    else:
        assert isinstance(model, SpotModel)
        inputs = _spot_inputs(model)
        with torch.no_grad():
            feats = _spot_features(model, inputs)
            if model.needs_slide_context:
                nodes = _nodes(model.encode_spots(inputs))
                again = model.spot_context(nodes.features, nodes.grid_rc, nodes)
                np.testing.assert_allclose(again.numpy(), feats.numpy(), rtol=1e-6, atol=1e-6)
                W, b = model.slide_gene_head(nodes)  # this slide's head
                assert W.shape == (model.feature_dim, model.n_genes) and b.shape == (model.n_genes,)
                predict_slide = getattr(model, "predict_slide", None)
                if predict_slide is not None:  # the model's own prediction of the slide
                    own = predict_slide(nodes).double().numpy()
                    np.testing.assert_allclose(feats.double().numpy() @ W + b, own, atol=1e-5)
        assert tuple(feats.shape) == (len(inputs), model.feature_dim)
        genes = feats.double().numpy() @ W + b
        assert np.isfinite(genes).all()
        predict_features = getattr(model, "predict_features", None)
        raw = getattr(model, "encode_patches", None)
        if predict_features is not None and raw is not None:  # the ridge baseline
            patches = (inputs.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            F = raw(patches)
            own = predict_features(F)
            Z = model.encode_spots(SpotInputs(features=torch.from_numpy(F))).numpy()
            np.testing.assert_array_equal(own, (Z @ W + b).astype(own.dtype))


def test_forward_backward(model: HistoModel) -> None:
    if not isinstance(model, torch.nn.Module):
        # not a torch model (the ridge baseline): its encoder is frozen, encoding must run
        assert isinstance(model, SpotModel)
        assert np.isfinite(_outputs(model)).all()
        return
    net = type(model).contract_instance()  # a fresh one in training mode
    assert isinstance(net, torch.nn.Module)
    net.train()
    if isinstance(net, DenseModel):
        feats = net.features(_dense_input(net))
        loss = feats.float().pow(2).mean()
        gene_maps = getattr(net, "gene_maps", None)
        if gene_maps is not None:
            loss = loss + gene_maps(feats).float().pow(2).mean()
    else:
        assert isinstance(net, SpotModel)
        loss = _spot_features(net, _spot_inputs(net)).float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None for g in grads), "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_checkpoint_round_trip(model: HistoModel, tmp_path: Path) -> None:
    genes = [f"G{i}" for i in range(model.n_genes)]
    mpp = model.input_spec().mpp or 1.5
    model.set_genes(genes, mpp)
    save_checkpoint(tmp_path / "run", model, {"contract": True})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "weights.safetensors",
    ]
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["kind"] == model.kind and meta["working_mpp"] == pytest.approx(mpp)
    loaded, loaded_meta = load_checkpoint(tmp_path / "run")
    assert type(loaded) is type(model) and loaded_meta["genes"] == genes
    assert loaded.genes == genes and loaded.gene_names == genes
    assert loaded.working_mpp == pytest.approx(mpp)
    assert loaded.input_spec() == model.input_spec()
    assert loaded.config_dict() == model.config_dict()
    np.testing.assert_array_equal(_outputs(loaded), _outputs(model))
    W0, b0 = model.gene_head()
    W1, b1 = loaded.gene_head()
    np.testing.assert_array_equal(W0, W1)
    np.testing.assert_array_equal(b0, b1)


def test_config_round_trip(model: HistoModel) -> None:
    config: dict[str, Any] = model.config_dict()
    text = json.dumps(config, allow_nan=False)  # JSON-able, no NaN
    rebuilt = type(model).from_config(json.loads(text))
    assert rebuilt.config_dict() == config
    assert type(model).from_config(rebuilt.config_dict()).config_dict() == config
    assert json.loads(json.dumps(type(model).contract_config())) == type(model).contract_config()


def test_settings_of_resolves_like_a_built_model(model: HistoModel) -> None:
    """``settings_of`` (what cross-validation compares before reusing a fold) equals the
    config a model built from the same settings records."""
    cls = type(model)
    assert cls.settings_of(cls.contract_config()) == model.config_dict()
    assert cls.settings_of(model.config_dict()) == model.config_dict()
