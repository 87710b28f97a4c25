"""Backbones: timm features_only encoders, local weight loading, init choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.models.backbones import backbone_transform_stats, create_backbone


def _classifier(name: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10)


def _assert_backbone_matches(backbone: torch.nn.Module, full: torch.nn.Module) -> None:
    full_sd = full.state_dict()
    for name, value in backbone.state_dict().items():
        # timm's feature wrappers flatten "stages.0" into "stages_0"; ViT getters add "model."
        key = name.removeprefix("model.")
        src = (
            key
            if key in full_sd
            else next(k for k in full_sd if k.replace(".", "_") == key.replace(".", "_"))
        )
        assert torch.equal(value, full_sd[src]), key


def test_random_init_pyramid_shapes() -> None:
    model = create_backbone("resnet18")
    assert model.feature_info.channels() == [64, 64, 128, 256, 512]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    feats = model(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def test_out_indices() -> None:
    model = create_backbone("resnet18", out_indices=(1, 2, 3))
    assert model.feature_info.channels() == [64, 128, 256]
    assert len(model(torch.zeros(1, 3, 32, 32))) == 3


def test_zero_init_last_flag_matches_timm() -> None:
    torch.manual_seed(3)
    ours = create_backbone("resnet18", zero_init_last=False)
    torch.manual_seed(3)
    ref = timm.create_model("resnet18", features_only=True, zero_init_last=False)
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.all(ours.layer1[0].bn2.weight == 1)
    assert torch.all(create_backbone("resnet18", zero_init_last=True).layer1[0].bn2.weight == 0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_full_classifier_checkpoint(tmp_path: Path, suffix: str) -> None:
    full = _classifier()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        save_file(full.state_dict(), str(path))
    else:
        torch.save({"state_dict": full.state_dict()}, path)
    model = create_backbone("resnet18", pretrained=path)
    _assert_backbone_matches(model, full)
    # a random-init backbone differs (the test can fail)
    assert not torch.equal(create_backbone("resnet18").conv1.weight, full.conv1.weight)


def test_load_renamed_modules_convnext(tmp_path: Path) -> None:
    full = _classifier("convnext_atto", seed=1)
    path = tmp_path / "cn.safetensors"
    save_file(full.state_dict(), str(path))
    model = create_backbone("convnext_atto", pretrained=path)
    _assert_backbone_matches(model, full)


def test_wrong_shapes_name_the_file(tmp_path: Path) -> None:
    state = _classifier().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputFileError, match=r"bad\.safetensors.*wrong shape.*layer1\.0\.conv1"):
        create_backbone("resnet18", pretrained=path)


def test_wrong_architecture_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "r18.safetensors"
    save_file(_classifier().state_dict(), str(path))
    with pytest.raises(InputFileError, match=r"r18\.safetensors.*missing"):
        create_backbone("resnet34", pretrained=path)
    with pytest.raises(InputFileError, match="not found"):
        create_backbone("resnet18", pretrained=tmp_path / "nope.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputFileError, match=r"junk\.pth.*cannot read"):
        create_backbone("resnet18", pretrained=tmp_path / "junk.pth")


def test_torch_file_with_objects_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a file holding arbitrary Python objects is not unpickled."""

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _classifier().state_dict(), "obj": Path("x")}, path)
    with pytest.raises(InputFileError, match=r"evil\.pth"):
        create_backbone("resnet18", pretrained=path)


def test_transform_stats() -> None:
    mean, std = backbone_transform_stats("resnet18")
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    assert std == pytest.approx((0.229, 0.224, 0.225))
    assert backbone_transform_stats("not_a_timm_model")[0] == mean


UNI_KWARGS = {"init_values": 1e-5, "dynamic_img_size": True}


def _uni_style_vit(seed: int = 0) -> torch.nn.Module:
    """A small ViT built like UNI (LayerScale, interpolated positions), with LayerScale
    gammas far from their 1e-5 init, as trained weights have them."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **UNI_KWARGS)
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                param.uniform_(0.5, 1.5)
    return vit.eval()


def test_uni_style_vit_weights_with_their_architecture_options(tmp_path: Path) -> None:
    vit = _uni_style_vit()
    path = tmp_path / "uni_style.safetensors"
    save_file(vit.state_dict(), str(path))
    backbone = create_backbone(
        "vit_tiny_patch16_224", pretrained=path, model_kwargs=UNI_KWARGS, out_indices=(5, 11)
    ).eval()
    _assert_backbone_matches(backbone, vit)
    assert backbone.feature_info.reduction() == [16, 16]
    x = torch.rand(2, 3, 256, 256)  # not 224 px: the position embeddings are interpolated
    with torch.no_grad():
        ours = backbone(x)
        ref = vit.forward_intermediates(x, indices=[5, 11], intermediates_only=True)
    assert [tuple(f.shape) for f in ours] == [(2, 192, 16, 16)] * 2
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    # without the options the LayerScale tensors have nowhere to go: a warning names them
    with pytest.warns(UserWarning, match=r"uni_style\.safetensors.*not part of backbone.*gamma"):
        create_backbone("vit_tiny_patch16_224", pretrained=path)


def test_architecture_options_are_checked() -> None:
    with pytest.raises(ValueError, match="rejects options"):
        create_backbone("resnet18", model_kwargs={"init_values": 1e-5})
    with pytest.raises(ValueError, match="may not set"):
        create_backbone("resnet18", model_kwargs={"features_only": False})
    assert create_backbone("resnet18", model_kwargs={"drop_path_rate": 0.1}).feature_info


def test_path_named_imagenet_is_a_file_not_the_keyword(tmp_path: Path) -> None:
    """Only the text "imagenet" selects the offline weights (models/pretrained.py); a path
    object of that name is a weights file like any other."""
    with pytest.raises(InputFileError, match="weights file not found"):
        create_backbone("resnet18", pretrained=tmp_path / "imagenet")
