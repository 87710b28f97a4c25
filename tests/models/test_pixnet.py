"""PixNet: shapes, config round trip, factorised aggregation identity, gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_histoexpress.geometry import CircleAggregator, circle_pixel_weights
from napari_histoexpress.models.pixnet import (
    PixNet,
    PixNetConfig,
    ResizeConv,
    spot_weight_matrix,
)


def _model(seed: int = 0, **kw: object) -> PixNet:
    torch.manual_seed(seed)
    cfg = PixNetConfig(**{"n_genes": 5, "decoder_dim": 16, **kw})  # type: ignore[arg-type]
    model = PixNet(cfg)
    with torch.no_grad():  # perturb so the head bias and δ are not trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> PixNet:
    return _model()


def test_shapes_and_stride(model: PixNet) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        g = model(x)
    assert model.output_stride == 2
    assert feats.shape == (2, 16, 32, 32)
    assert g.shape == (2, 5, 64, 64)
    assert torch.isfinite(g).all()
    with torch.no_grad():  # odd sizes are handled (resize to the skip's size)
        assert model(torch.rand(1, 3, 65, 70)).shape == (1, 5, 65, 70)


def test_other_backbone_and_levels() -> None:
    torch.manual_seed(0)
    m = PixNet(PixNetConfig(n_genes=3, decoder_dim=8, backbone="resnet18", out_indices=(1, 2, 3)))
    assert m.output_stride == 4
    assert len(m.delta) == 2
    with torch.no_grad():
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_vit_encoder_with_architecture_options(tmp_path) -> None:
    """A UNI-style ViT (LayerScale, interpolated positions) as PixNet's encoder: every level
    at stride 16, fused without upsampling; the options survive a checkpoint."""
    from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = PixNetConfig(
        n_genes=2,
        decoder_dim=8,
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"init_values": 1e-5, "dynamic_img_size": True},
        out_indices=(3, 7, 11),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    m = PixNet(cfg).eval()
    assert m.output_stride == 16 and len(m.delta) == 2
    assert any(n.endswith("ls1.gamma") for n, _ in m.named_parameters())
    x = torch.rand(1, 3, 192, 256)  # 384 µm crops at 2 µm/px are not 224 px
    with torch.no_grad():
        assert m.features(x).shape == (1, 8, 12, 16)
        y = m(x)
    assert y.shape == (1, 2, 192, 256)
    assert PixNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    save_checkpoint(tmp_path / "run", m, {}, ["A", "B"], extra={"microns_per_pixel": 2.0})
    loaded, _ = load_checkpoint(tmp_path / "run")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y)


def test_config_roundtrip_json() -> None:
    cfg = PixNetConfig(n_genes=4, decoder_dim=8, out_indices=(0, 1, 2), aggregation="sum")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert PixNetConfig.from_dict(d) == cfg
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(ValueError, match="aggregation"):
        PixNetConfig(aggregation="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        PixNetConfig.from_dict({"n_genes": 3, "bogus": 1})


def _explicit(g: np.ndarray, cx: float, cy: float, r: float, reduce: str) -> np.ndarray:
    rows, cols, w = circle_pixel_weights(cx, cy, r, g.shape[1:])
    s = (g[:, rows, cols] * w).sum(axis=1)
    return s / w.sum() if reduce == "mean" else s


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_factorised_spot_predictions_equal_explicit_map(model: PixNet, reduce: str) -> None:
    """Aggregating the full gene map == aggregating features, then the head (module doc)."""
    rng = np.random.default_rng(1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        g = model.gene_maps(feats, out_size=(64, 64)).double().numpy()
    n = 12
    centres = rng.uniform(-3, 67, size=(n, 2))
    radii = rng.uniform(0.3, 20, size=n)
    bidx = rng.integers(0, 2, size=n)
    with torch.no_grad():
        pred = model.spot_predictions(
            feats, centres, radii, (64, 64), batch_index=bidx, reduce=reduce
        ).numpy()
    ref = np.stack(
        [
            _explicit(g[b], cx, cy, r, reduce)
            for (cx, cy), r, b in zip(centres, radii, bidx, strict=True)
        ]
    )
    scale = np.abs(ref).max()
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-5 * scale)
    # and the numpy path used at inference: CircleAggregator on the resized features + head
    with torch.no_grad():
        up = torch.nn.functional.interpolate(feats, size=(64, 64), mode="bilinear")
    agg = CircleAggregator(up[0].permute(1, 2, 0).double().numpy())
    sel = bidx == 0
    pooled, area = agg.aggregate_many(centres[sel], radii[sel], reduce=reduce, return_area=True)
    np.testing.assert_allclose(
        model.apply_head(pooled, area, reduce), ref[sel], rtol=1e-4, atol=1e-5 * scale
    )


def test_spot_weight_rows_sum_to_area() -> None:
    from scipy.integrate import quad

    centres = np.array([[10.0, 10.0], [0.0, 0.0], [31.5, 2.2]])
    radii = np.array([4.0, 4.0, 0.4])
    mat, area = spot_weight_matrix(centres, radii, (32, 32), (8, 8))
    np.testing.assert_allclose(mat.to_dense().sum(1).numpy(), area, rtol=1e-12)
    assert area[0] == pytest.approx(np.pi * 16)
    # pixel (0, 0) spans -0.5..0.5: the image holds the part of the disk with x, y >= -0.5
    ref, _ = quad(lambda x: np.sqrt(16 - x * x) + min(0.5, np.sqrt(16 - x * x)), -0.5, 4)
    assert area[1] == pytest.approx(ref, rel=1e-9)
    assert area[2] == pytest.approx(np.pi * 0.16 / 2)  # x = 31.5 is the right border


def test_spot_predictions_gradients_and_errors(model: PixNet) -> None:
    m = _model(seed=2)
    m.train()
    x = torch.rand(1, 3, 64, 64)
    pred = m.spot_predictions(m.features(x), np.array([[30.0, 30.0]]), 10.0, (64, 64))
    pred.sum().backward()
    assert m.encoder.conv1.weight.grad is not None
    assert torch.isfinite(m.encoder.conv1.weight.grad).all()
    assert m.delta.grad is not None and torch.all(m.delta.grad != 0)
    with pytest.raises(ValueError, match="do not overlap"):
        m.spot_predictions(m.features(x), np.array([[300.0, 30.0]]), 5.0, (64, 64))
    with pytest.raises(ValueError, match="batch_index"):
        m.spot_predictions(torch.zeros(2, 16, 32, 32), np.array([[3.0, 3.0]]), 1.0, (64, 64))


def test_mean_aggregation_is_scale_free(model: PixNet) -> None:
    """Constant features: mean predictions do not depend on spot size (inside the image or
    across its border); sums grow with the area."""
    vec = torch.randn(16)
    f = vec.view(1, 16, 1, 1).expand(1, 16, 32, 32).contiguous()
    c = np.array([[32.0, 32.0], [32.0, 32.0], [0.0, 10.0], [40.2, 33.1]])
    r = np.array([3.0, 6.0, 9.0, 0.2])
    with torch.no_grad():
        mean = model.spot_predictions(f, c, r, (64, 64), reduce="mean").numpy()
        total = model.spot_predictions(f, c, r, (64, 64), reduce="sum").numpy()
        expected = model.head(f[:, :, :1, :1])[0, :, 0, 0].numpy()
    np.testing.assert_allclose(mean, np.broadcast_to(expected, mean.shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(total[1], 4 * total[0], rtol=1e-5, atol=1e-5)


def test_init_head_bias(model: PixNet) -> None:
    m = _model(seed=3)
    m.init_head_bias(np.arange(5.0))
    np.testing.assert_array_equal(m.head.bias.detach().numpy(), np.arange(5.0))


def _period2_energy(f: np.ndarray) -> float:
    """Share of a map's interior variance in the stride-2 (checkerboard) pattern."""
    f = f[:, 8:-8, 8:-8]  # away from the zero-padded borders
    blocks = [f[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
    n = min(b.shape[1] for b in blocks), min(b.shape[2] for b in blocks)
    means = np.stack([b[:, : n[0], : n[1]].mean(axis=(1, 2)) for b in blocks])  # (4, C)
    return float(means.var(axis=0).sum() / (f.var(axis=(1, 2)).sum() + 1e-12))


def test_bilinear_upsampling_has_no_checkerboard() -> None:
    x = torch.full((1, 3, 128, 128), 0.6)  # a uniform image: any periodic pattern is an artefact
    energy = {}
    for mode in ("transposed", "bilinear"):
        m = _model(upsample=mode)
        assert isinstance(m.up[0], ResizeConv) == (mode == "bilinear")
        with torch.no_grad():
            energy[mode] = _period2_energy(m.features(x)[0].numpy())
            assert m(torch.rand(1, 3, 65, 70)).shape == (1, 5, 65, 70)
    # measured: transposed 0.012, bilinear 0.0004 (30x less) of the interior variance
    assert energy["transposed"] > 0.005
    assert energy["bilinear"] < energy["transposed"] / 10
    with pytest.raises(ValueError, match="upsample"):
        PixNetConfig(upsample="nearest")  # type: ignore[arg-type]


def test_dense_model_interface(model: PixNet) -> None:
    """PixNet is a DenseModel: the gene head is W (C, G), the input spec says what the
    tiles must be (RGB in [0, 1], the encoder's 32 px grid for all ResNet18 levels)."""
    from napari_histoexpress.models.base import DenseModel

    assert isinstance(model, DenseModel) and model.kind == "dense"
    for attr in ("head_weights", "head_weights_layout", "normalizes_input"):
        assert not hasattr(model, attr)
    W, b = model.gene_head()
    assert W.shape == (16, 5) and b.shape == (5,) and W.dtype == b.dtype == np.float64
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        ref = model.gene_maps(feats)[0].double().numpy()
    lin = np.einsum("chw,cg->ghw", feats[0].double().numpy(), W) + b[:, None, None]
    np.testing.assert_allclose(lin, ref, rtol=1e-5, atol=1e-5)
    spec = model.input_spec()
    assert spec.normalizes_input and spec.stride == model.feature_stride == 2
    assert spec.input_multiple == 32 and spec.mpp is None and spec.receptive_field_px is None
    assert spec.mean == model.config.mean and spec.std == model.config.std
    # truncated encoders align on their own largest reduction
    small = PixNet(PixNetConfig(n_genes=2, decoder_dim=8, out_indices=(1, 2)))
    assert small.input_spec().input_multiple == 8 and small.input_spec().stride == 4
    small.set_genes(["A", "B"], 4.0)
    assert small.genes == ["A", "B"] and small.input_spec().mpp == 4.0
    with pytest.raises(ValueError, match="2 genes"):
        small.set_genes(["A"])
