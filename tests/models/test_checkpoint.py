"""Registry and safetensors + JSON checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint
from napari_histoexpress.models.pixnet import PixNet, PixNetConfig
from napari_histoexpress.models.registry import (
    available_models,
    build_model,
    describe_models,
    get_model_class,
    model_name_of,
    models_of_kind,
    register_model,
)


def test_registry() -> None:
    assert "pixnet" in available_models()
    assert get_model_class("pixnet") is PixNet
    assert get_model_class("PixNet") is PixNet
    m = build_model("pixnet", {"n_genes": 3, "decoder_dim": 8})
    assert isinstance(m, PixNet) and m.n_genes == 3
    assert model_name_of(m) == "pixnet"
    with pytest.raises(KeyError, match=r"unknown model 'nope'.*pixnet"):
        get_model_class("nope")
    with pytest.raises(ValueError, match="already registered"):

        @register_model("pixnet")
        class Other(PixNet):
            pass

    with pytest.raises(TypeError, match="from_config"):
        register_model("no_from_config")(type("Bad", (), {}))
    assert "no_from_config" not in available_models()

    # a class with from_config that is not a HistoModel is refused too
    class Duck:
        @classmethod
        def from_config(cls, config: dict) -> Duck:
            return cls()

    with pytest.raises(TypeError, match="not a HistoModel"):
        register_model("duck")(Duck)
    import napari_histoexpress.models.registry as registry

    assert not hasattr(registry, "get_model")  # the alias is gone: get_model_class


def test_kinds_and_descriptions() -> None:
    from napari_histoexpress.models.ridge import RidgeBaseline

    assert "pixnet" in models_of_kind("dense") and "pixnet" not in models_of_kind("spot")
    assert "ridge" in models_of_kind("spot")
    assert sorted(models_of_kind("dense") + models_of_kind("spot")) == available_models()
    with pytest.raises(ValueError, match="kind"):
        models_of_kind("sparse")  # type: ignore[arg-type]
    described = describe_models()
    assert set(described) == set(available_models())
    assert described["pixnet"] == PixNet.__doc__.strip().splitlines()[0]
    assert described["ridge"] == RidgeBaseline.__doc__.strip().splitlines()[0]
    assert all(described[name] for name in ("pixnet", "ridge"))


def _trained_like_model() -> PixNet:
    torch.manual_seed(0)
    m = PixNet(PixNetConfig(n_genes=4, decoder_dim=8, out_indices=(0, 1, 2)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for mod in m.modules():  # non-default BN buffers must survive too
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_roundtrip(tmp_path: Path) -> None:
    m = _trained_like_model()
    genes = ["ERBB2", "GAPDH", "ACTB", "KRT19"]
    extra = {"normalisation": "log1p_cp10k", "microns_per_pixel": np.float64(1.0)}
    save_checkpoint(tmp_path / "run", m, {"epochs": 2, "lr": 5e-4}, genes, extra)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "weights.safetensors",
    ]
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model"] == "pixnet" and meta["genes"] == genes
    assert {"torch", "timm", "napari_histoexpress"} <= set(meta["versions"])

    loaded, cfg = load_checkpoint(tmp_path / "run")
    assert isinstance(loaded, PixNet) and not loaded.training
    assert cfg["extra"]["microns_per_pixel"] == 1.0 and cfg["config"]["lr"] == 5e-4
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    # a fresh model with the same config differs (the test can fail)
    fresh = PixNet(PixNetConfig(n_genes=4, decoder_dim=8, out_indices=(0, 1, 2)))
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(x), m(x))


def test_pretrained_path_not_needed_on_load(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    weights = tmp_path / "backbone.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(weights))
    m = PixNet(PixNetConfig(n_genes=2, decoder_dim=8, pretrained=str(weights))).eval()
    save_checkpoint(tmp_path / "run", m, {}, ["A", "B"])
    weights.unlink()
    loaded, _ = load_checkpoint(tmp_path / "run")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_errors(tmp_path: Path) -> None:
    m = _trained_like_model()
    with pytest.raises(ValueError, match="4 genes"):
        save_checkpoint(tmp_path / "a", m, {}, ["A"])
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "b", m, {"obj": object()}, list("ABCD"))
    assert not (tmp_path / "b" / "config.json").exists()
    with pytest.raises(InputFileError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "c", m, {}, list("ABCD"))
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    meta["model_config"]["decoder_dim"] = 16
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=r"weights\.safetensors.*do not fit"):
        load_checkpoint(tmp_path / "c")
    meta["model"] = "nope"
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="unknown model"):
        load_checkpoint(tmp_path / "c")


def test_config_records_kind_input_and_working_mpp(tmp_path: Path) -> None:
    m = _trained_like_model()
    genes = ["ERBB2", "GAPDH", "ACTB", "KRT19"]
    save_checkpoint(tmp_path / "a", m, {}, genes, {"microns_per_pixel": 2.0})
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["kind"] == "dense" and meta["working_mpp"] == 2.0
    assert meta["extra"]["microns_per_pixel"] == 2.0  # still there for older readers
    assert meta["input"]["mpp"] == 2.0 and meta["input"]["normalizes_input"] is True
    loaded, _ = load_checkpoint(tmp_path / "a")
    assert loaded.genes == genes and loaded.working_mpp == 2.0
    assert loaded.input_spec() == m.input_spec().__class__.from_dict(meta["input"])

    # the model's own working µm/px is recorded (and written to extra for old readers) ...
    m.set_genes(genes, 0.5)
    save_checkpoint(tmp_path / "b", m, {})  # genes default to the model's
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["genes"] == genes and meta["working_mpp"] == 0.5
    assert meta["extra"]["microns_per_pixel"] == 0.5
    # ... and must agree with one passed in extra
    with pytest.raises(ValueError, match=r"0\.5 µm/px"):
        save_checkpoint(tmp_path / "c", m, {}, extra={"microns_per_pixel": 1.0})
    assert not (tmp_path / "c").exists()


def test_nan_is_kept_and_a_bad_gene_list_is_a_file_error(tmp_path: Path) -> None:
    m = _trained_like_model()
    save_checkpoint(tmp_path / "r", m, {"loss": float("nan")}, list("ABCD"))
    text = (tmp_path / "r" / "config.json").read_text()
    assert '"loss": NaN' in text
    meta = json.loads(text)
    meta["genes"] = ["A"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=r"config\.json.*4 genes but 1"):
        load_checkpoint(tmp_path / "r")


def test_bundled_demo_run_loads_as_before() -> None:
    """An older run (no top-level working_mpp/input/kind): µm/px from extra."""
    from napari_histoexpress.demo import bundled_demo_run

    meta = json.loads((bundled_demo_run() / "config.json").read_text())
    assert "working_mpp" not in meta and "input" not in meta
    model, loaded_meta = load_checkpoint(bundled_demo_run())
    assert loaded_meta == meta
    assert model.working_mpp == meta["extra"]["microns_per_pixel"]
    assert model.genes == meta["genes"] and model.input_spec().mpp == model.working_mpp
