"""The frozen-feature ridge baseline on small synthetic sections."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.expression import expression_matrix
from napari_histoexpress.io.slides import Slide
from napari_histoexpress.metrics import evaluate_predictions
from napari_histoexpress.models.ridge import RidgeBaseline, RidgeConfig

SLIDE_MPP = 0.5
GENES = ["DARK", "LIGHT", "NOISE"]


def _section(seed: int, nx: int = 6, ny: int = 5) -> tuple[ad.AnnData, Slide]:
    """Disks whose darkness drives the counts of DARK (up) and LIGHT (down)."""
    rng = np.random.default_rng(seed)
    pitch, diam = 200.0, 100.0  # px: 100 µm pitch, 50 µm spots at 0.5 µm/px
    xs, ys = np.meshgrid(np.arange(nx) * pitch + pitch, np.arange(ny) * pitch + pitch)
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    h, w = int((ny + 1) * pitch), int((nx + 1) * pitch)
    img = np.full((h, w, 3), 240, np.uint8)
    dark = rng.uniform(0, 1, len(xy))
    r = int(diam // 2) + 2
    yy, xx = np.mgrid[-r:r, -r:r] + 0.5
    for (x, y), d in zip(xy, dark, strict=True):
        x0, y0 = int(x), int(y)
        disk = (xx + x0 - x) ** 2 + (yy + y0 - y) ** 2 <= (diam / 2) ** 2
        img[y0 - r : y0 + r, x0 - r : x0 + r][disk] = (
            np.array([230, 150, 220]) * (1 - 0.8 * d)
        ).astype(np.uint8)
    counts = np.stack(
        [
            rng.poisson(5 + 80 * dark),
            rng.poisson(90 - 80 * dark),
            rng.poisson(20, len(xy)),
            rng.poisson(500, len(xy)),  # a stable housekeeping gene (library size)
        ],
        axis=1,
    ).astype(np.float32)
    adata = ad.AnnData(X=counts)
    adata.var_names = [*GENES, "HOUSE"]
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {
        "lib": {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": diam, "microns_per_pixel": SLIDE_MPP},
            "metadata": {"microns_per_pixel": SLIDE_MPP},
        }
    }
    slide = Slide(
        path=Path(f"s{seed}.png"), levels=[da.from_array(img)], mpp=SLIDE_MPP, mpp_source="user"
    )
    return adata, slide


def _config(**kw) -> RidgeConfig:
    base = dict(
        backbone="resnet18",  # random init: small, and the reference protocol's encoder
        patch_um=60.0,
        input_px=64,
        n_components=16,
        alphas=(0.1, 10.0, 1000.0),
        batch_size=16,
        seed=0,
    )
    base.update(kw)
    return RidgeConfig(**base)


@pytest.fixture(scope="module")
def fitted() -> tuple[RidgeBaseline, list, tuple]:
    train = [_section(1), _section(2), _section(3)]
    model = RidgeBaseline(_config()).fit(train, GENES)
    return model, train, _section(4)


def test_config_in_microns() -> None:
    cfg = RidgeConfig()
    assert cfg.input_px == 224
    assert cfg.input_mpp == pytest.approx(448 * 0.74 / 224)
    assert cfg.zero_init_last is False
    with pytest.raises(ValueError, match="cv_metric"):
        RidgeConfig(cv_metric="r2")


def test_default_encoder_is_offline_imagenet_lite0() -> None:
    """The default encoder is the offline ImageNet EfficientNet-Lite0 (it won on her2st and
    MOB); ``pretrained="auto"`` is recorded resolved, and other backbones default to random
    init."""
    cfg = RidgeConfig()
    assert (cfg.backbone, cfg.pretrained) == ("tf_efficientnet_lite0", "imagenet")
    assert RidgeConfig(backbone="resnet18").pretrained is None
    assert RidgeConfig(backbone="tf_efficientnet_lite1").pretrained == "imagenet"
    assert RidgeConfig(pretrained="none").pretrained is None
    assert RidgeConfig(pretrained=None).pretrained is None  # old checkpoints: random stays
    assert RidgeConfig(pretrained="w.safetensors").pretrained == "w.safetensors"
    model = RidgeBaseline.from_config({})
    assert model.config_dict()["pretrained"] == "imagenet"
    assert RidgeBaseline.settings_of({}) == model.config_dict()
    assert model.input_spec().mean == (0.5, 0.5, 0.5)  # Lite0's statistics


def test_patches_are_centred_and_resampled() -> None:
    model = RidgeBaseline(_config())
    sec = _section(1)
    patch = next(iter(model.spot_patches(sec)))
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
    # 60 µm patch around a 50 µm disk: disk colour at the centre, background at a corner
    assert patch[32, 32].tolist() != [240, 240, 240]
    assert patch[0, 0].tolist() == [240, 240, 240]


def test_fit_predict_recovers_signal(fitted) -> None:
    model, _, test = fitted
    assert model.alpha in model.config.alphas
    assert "GroupKFold(3)" in model.cv_scheme and len(model.cv_scores) == 3
    pred = model.predict(test)
    assert pred.shape == (test[0].n_obs, 3) and pred.dtype == np.float32
    res = evaluate_predictions(pred, expression_matrix(test[0], GENES), GENES)
    assert res["per_gene"]["DARK"]["pcc"] > 0.6
    assert res["per_gene"]["LIGHT"]["pcc"] > 0.6


def test_features_are_deterministic(fitted) -> None:
    model, train, _ = fitted
    other = RidgeBaseline(_config())
    np.testing.assert_allclose(
        other.extract_features(train[0]), model.extract_features(train[0]), rtol=1e-5, atol=1e-6
    )
    # ResNet18: pooled stem + 4 stages = 64 + 64 + 128 + 256 + 512
    assert model.extract_features(train[0]).shape == (30, 1024)


def test_save_load_round_trip(fitted, tmp_path: Path) -> None:
    model, _, test = fitted
    run = model.save(tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "weights.safetensors"]
    loaded = RidgeBaseline.load(run)
    assert loaded.genes == GENES and loaded.alpha == model.alpha
    assert loaded.config == model.config
    assert loaded.cv_scheme == model.cv_scheme
    np.testing.assert_allclose(loaded.predict(test), model.predict(test), rtol=1e-5, atol=1e-5)
    # the generic checkpoint loader rebuilds it through the registry as well
    from napari_histoexpress.models.checkpoint import load_checkpoint

    generic, meta = load_checkpoint(run)
    assert isinstance(generic, RidgeBaseline) and meta["genes"] == GENES
    np.testing.assert_allclose(
        generic.predict_features(np.ones((2, 1024))), model.predict_features(np.ones((2, 1024)))
    )


def test_load_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not a checkpoint"):
        RidgeBaseline.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputFileError):
        RidgeBaseline.load(tmp_path)


def test_unfitted_and_from_config() -> None:
    model = RidgeBaseline.from_config({"n_components": 8, "alphas": [1.0]})
    assert model.config.n_components == 8 and model.config.alphas == (1.0,)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_features(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown ridge config"):
        RidgeBaseline.from_config({"n_componentz": 8})


def test_single_section_uses_spot_kfold() -> None:
    model = RidgeBaseline(_config(n_components=8, cv_folds=3))
    rng = np.random.default_rng(0)
    F = rng.normal(size=(40, 12))
    Y = F[:, :2] @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(40, 3))
    model.fit_features([F], [Y], GENES)
    assert model.cv_scheme.startswith("KFold(3)")
    pred = model.predict_features(F)
    assert evaluate_predictions(pred, Y, GENES)["pcc_mean"] > 0.9


def test_registered() -> None:
    from napari_histoexpress.models import registry

    assert "ridge" in registry.available_models()
    assert registry.get_model_class("ridge") is RidgeBaseline
    built = registry.build_model("ridge", {"input_px": 32})
    assert isinstance(built, RidgeBaseline) and built.config.input_px == 32


def test_vit_backbone_with_options_and_own_normalisation(tmp_path: Path) -> None:
    """A UNI-style ViT as the frozen encoder (HEST's setting), with ImageNet statistics
    instead of the ViT name's timm defaults; saved and restored exactly."""
    vit = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"init_values": 1e-5, "dynamic_img_size": True},
        out_indices=(11,),
    )
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    train = [_section(1), _section(2)]
    model = RidgeBaseline(_config(**vit, **imagenet)).fit(train, GENES)
    feats = model.extract_features(train[0])
    assert feats.shape == (30, 192)
    # the normalisation override is used (timm's vit default is mean = std = 0.5)
    other = RidgeBaseline(_config(**vit)).extract_features(train[0])
    assert not np.allclose(other, feats, atol=1e-3)
    run = model.save(tmp_path / "run")
    loaded = RidgeBaseline.load(run)
    assert loaded.config == model.config and loaded.config.backbone_kwargs["init_values"] == 1e-5
    test = _section(4)
    np.testing.assert_allclose(loaded.predict(test), model.predict(test), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 values"):
        RidgeConfig(mean=(0.5, 0.5))


def test_encoder_device_and_precision() -> None:
    """``to(device, precision)``: the frozen encoder's forward pass autocasts (bf16 on CPU
    here, what ``auto`` picks on a CUDA GPU); features stay float32 and close to fp32's."""
    import torch

    section = _section(5)
    fp32 = RidgeBaseline(_config()).to("cpu", "fp32")
    mixed = RidgeBaseline(_config()).to("cpu", "bf16")
    seen: list[torch.dtype] = []
    conv = mixed.backbone.conv1
    handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    a, b = fp32.extract_features(section), mixed.extract_features(section)
    handle.remove()
    assert set(seen) == {torch.bfloat16}
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert not np.array_equal(a, b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert RidgeBaseline(_config()).to("auto").backbone is not None
    with pytest.raises(ValueError, match="precision"):
        RidgeBaseline(_config()).to("cpu", "half")


def test_spot_model_interface(fitted) -> None:
    """Features are Z (standardised, PCA-projected backbone features); the gene head is
    (ridge_coef.T, ridge_intercept) and predict_features is exactly Z @ W + b."""
    import torch

    from napari_histoexpress.models.base import SpotInputs, SpotModel

    model, train, _ = fitted
    assert isinstance(model, SpotModel) and model.kind == "spot"
    F = model.extract_features(train[0])
    Z = model.transform_features(F)
    W, b = model.gene_head()
    assert model.feature_dim == Z.shape[1] == W.shape[0] == 16
    assert W.shape == (16, 3) and b.shape == (3,) and W.dtype == np.float64
    np.testing.assert_array_equal(W, model._arrays["ridge_coef"].T)
    np.testing.assert_array_equal(model.predict_features(F), (Z @ W + b).astype(np.float32))
    # encode_spots from cached features or from the patches themselves
    from_feats = model.encode_spots(SpotInputs(features=torch.from_numpy(F)))
    np.testing.assert_array_equal(from_feats.numpy(), Z)
    patches = np.stack(list(model.spot_patches(train[0])))
    images = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    from_images = model.encode_spots(SpotInputs(images=images))
    np.testing.assert_allclose(from_images.numpy(), Z, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="images or features"):
        model.encode_spots(SpotInputs())
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        model.encode_spots(SpotInputs(images=images[:, :, :32, :32]))
    spec = model.input_spec()
    assert spec.patch_px == 64 and spec.mpp == pytest.approx(60.0 / 64)
    assert spec.patch_um == pytest.approx(60.0) and spec.normalizes_input
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))  # resnet18's statistics
    assert model.working_mpp == spec.mpp
    with pytest.raises(ValueError, match="µm/px"):
        model.working_mpp = 2.0


def test_unfitted_has_no_head() -> None:
    model = RidgeBaseline(_config())
    with pytest.raises(RuntimeError, match="not fitted"):
        model.gene_head()
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = model.feature_dim


def test_save_records_the_fit_and_the_working_mpp(fitted, tmp_path: Path) -> None:
    import json

    model, _, _ = fitted
    run = model.save(tmp_path / "run", train_config={"seed": 0})
    meta = json.loads((run / "config.json").read_text())
    assert meta["kind"] == "spot" and meta["config"] == {"seed": 0}
    assert meta["extra"]["alpha"] == model.alpha and meta["extra"]["cv_scheme"] == model.cv_scheme
    assert meta["working_mpp"] == pytest.approx(model.config.input_mpp)
    assert meta["input"]["patch_px"] == 64
    with pytest.raises(InputFileError, match="holds a 'pixnet' model, not 'ridge'"):
        meta["model"] = "pixnet"
        (run / "config.json").write_text(json.dumps(meta))
        RidgeBaseline.load(run)
