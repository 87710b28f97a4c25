"""Training, evaluation and cross-validation on the synthetic sample (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_histoexpress.training.train import TrainConfig

# ResNet18 from random init: small and quick on CPU (the default encoder, ImageNet
# EfficientNet-Lite0, is tested in test_default_encoder_is_offline_imagenet_lite0)
TINY = {"backbone": "resnet18", "decoder_dim": 16, "out_indices": [1, 2, 3, 4]}


def _config(**kw) -> TrainConfig:
    base = dict(
        n_genes=6,
        epochs=1,
        crops_per_epoch=8,
        batch_size=4,
        mpp=4.0,
        crop_um=256.0,
        jitter_um=20.0,
        device="cpu",
        model_config=dict(TINY),
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_run_and_resumes(sample_section, tmp_path: Path) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.train import train

    run = tmp_path / "run"
    logs: list[str] = []
    train([sample_section], run, _config(epochs=1), progress=False, log=logs.append)
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"] == "pixnet" and len(meta["genes"]) == 6
    assert meta["extra"]["microns_per_pixel"] == 4.0
    assert meta["extra"]["normalisation"]["target_sum"] == 1e4
    assert (run / "weights.safetensors").exists()
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.pt"))
    first = meta["extra"]["history"]
    # a second call with more epochs continues after epoch 1 (resumable)
    train([sample_section], run, _config(epochs=2), progress=False, log=logs.append)
    assert any("different config" in line for line in logs)  # epochs changed -> fingerprint differs
    meta2 = json.loads((run / "config.json").read_text())
    assert len(meta2["extra"]["history"]) == 2 and len(first) == 1
    model, _ = load_checkpoint(run)
    assert model.n_genes == 6


def test_resume_continues_after_interruption(sample_section, tmp_path: Path, monkeypatch) -> None:
    from napari_histoexpress.training import loop as loop_mod
    from napari_histoexpress.training import train as train_mod

    run = tmp_path / "run"
    cfg = _config(epochs=2)
    calls = {"n": 0}
    original = loop_mod._save_resume  # the one training loop saves the resume state

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt  # killed right after epoch 1 was saved

    monkeypatch.setattr(loop_mod, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train([sample_section], run, cfg, progress=False, log=lambda s: None)
    assert not (run / "config.json").exists()  # no final checkpoint from a killed run
    monkeypatch.setattr(loop_mod, "_save_resume", original)
    logs: list[str] = []
    train_mod.train([sample_section], run, cfg, progress=False, log=logs.append)
    assert any("resuming" in line and "after epoch 1" in line for line in logs)
    assert sum("epoch 1/2" in line for line in logs) == 0
    assert (run / "config.json").exists()


def test_training_reduces_loss_on_sample(sample_section, tmp_path: Path) -> None:
    from napari_histoexpress.training.train import train

    run = tmp_path / "run"
    train(
        [sample_section],
        run,
        _config(epochs=4, crops_per_epoch=16, lr=2e-3),
        progress=False,
        log=lambda s: None,
    )
    history = json.loads((run / "config.json").read_text())["extra"]["history"]
    losses = [h["loss"] for h in history]
    assert min(losses[1:]) < losses[0]


def test_mixed_precision_training_runs_the_forward_in_bf16(
    sample_section, tmp_path: Path, monkeypatch
) -> None:
    """``precision='bf16'`` (what ``auto`` picks on a CUDA GPU), run here on CPU: the
    backbone runs in bfloat16, the loss stays float32 and finite, the run records it."""
    import torch

    from napari_histoexpress.models import pixnet
    from napari_histoexpress.training import train as train_mod

    seen: list[torch.dtype] = []
    original = pixnet.PixNet.features

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(pixnet.PixNet, "features", spy)
    losses: list[torch.dtype] = []
    from napari_histoexpress.training import losses as losses_mod  # train() imports from it

    real_loss = losses_mod.pixnet_loss

    def loss_spy(pred, target, **kw):
        losses.append(pred.dtype)
        return real_loss(pred, target, **kw)

    monkeypatch.setattr(losses_mod, "pixnet_loss", loss_spy)
    run = tmp_path / "run"
    train_mod.train([sample_section], run, _config(precision="bf16"), progress=False,
                    log=lambda s: None)  # fmt: skip
    assert seen and set(seen) == {torch.bfloat16}
    assert losses and set(losses) == {torch.float32}
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["precision"] == "bf16"
    assert np.isfinite(meta["extra"]["history"][0]["loss"])
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")


def test_evaluate_and_ridge_and_cv(sample_section, tmp_path: Path) -> None:
    import copy

    from napari_histoexpress.training.cross_validation import cross_validate
    from napari_histoexpress.training.evaluate import evaluate_run
    from napari_histoexpress.training.train import train

    run = tmp_path / "pix"
    train([sample_section], run, _config(), progress=False, log=lambda s: None)
    report = evaluate_run(run, [sample_section], device="cpu", progress=False)
    res = report["sections"]["synthetic"]
    assert res["n_spots"] == sample_section.adata.n_obs and res["n_genes"] == 6
    for key in ("pcc_mean", "pcc_median", "pcc_q1", "pcc_heg50", "pcc_hvg50", "mse", "mae"):
        assert np.isfinite(res[key])

    ridge_cfg = _config(
        model="ridge",
        model_config={"n_components": 8, "patch_um": 64.0, "input_px": 32, "cv_folds": 2},
    )
    ridge_run = tmp_path / "ridge"
    train([sample_section], ridge_run, ridge_cfg, progress=False, log=lambda s: None)
    ridge = evaluate_run(ridge_run, [sample_section], progress=False)["sections"]["synthetic"]
    # in-sample ridge on cell-type-driven synthetic expression must correlate clearly
    assert ridge["pcc_mean"] > 0.3

    # two "sections": the sample and a copy renamed (leave-one-section-out runs both folds)
    other = copy.copy(sample_section)
    other.adata = sample_section.adata.copy()
    other.adata.uns["spatial"] = {"synthetic2": other.adata.uns["spatial"]["synthetic"]}
    other.name = "synthetic2"
    cv = cross_validate(
        [sample_section, other], tmp_path / "cv", ridge_cfg, progress=False, log=lambda s: None
    )
    assert [r["fold"] for r in cv["rows"]] == ["synthetic", "synthetic2", "mean"]
    assert (tmp_path / "cv" / "cv.md").read_text().count("|") > 10
    n = sample_section.adata.n_obs
    assert [r["n_spots"] for r in cv["rows"]] == [n, n, 2 * n]
    assert cv["n_folds_resumed"] == 0
    again = cross_validate(
        [sample_section, other], tmp_path / "cv", ridge_cfg, progress=False, log=lambda s: None
    )  # finished folds with the same settings are reused, with the same numbers
    assert again["n_folds_resumed"] == 2 and again["rows"] == cv["rows"]


def test_cosine_schedule_warms_up_and_decays() -> None:
    from napari_histoexpress.training.config import TrainConfig, learning_rate

    lrs = [learning_rate(1e-3, s, 100, "cosine", 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3)
    assert int(np.argmax(lrs)) == 9 and lrs[-1] < 1e-5
    assert np.all(np.diff(lrs[9:]) <= 0)
    assert learning_rate(1e-3, 50, 100, "constant", 0.1) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_cv_reuses_a_finished_fold_only_with_the_same_settings(tmp_path: Path) -> None:
    from napari_histoexpress.training.cross_validation import _same_run

    cfg = TrainConfig(model="pixnet", n_genes=3, epochs=2)
    saved = {k: v for k, v in cfg.to_dict().items() if k != "lr_schedule"}  # an older run
    (tmp_path / "config.json").write_text(json.dumps({"config": saved, "genes": ["A", "B"]}))
    assert _same_run(tmp_path, cfg, ["A", "B"])  # a key added later counts as its default
    assert _same_run(tmp_path, TrainConfig(model="pixnet", n_genes=3, epochs=2, device="cuda"),
                     ["A", "B"])  # fmt: skip
    assert not _same_run(tmp_path, TrainConfig(model="pixnet", n_genes=3, epochs=3), ["A", "B"])
    assert not _same_run(tmp_path, cfg, ["A", "C"])
    assert not _same_run(tmp_path / "missing", cfg, ["A", "B"])


def test_cv_compares_the_resolved_model_config(tmp_path: Path) -> None:
    """A fold recorded with the model's resolved config is reused when today's options
    resolve to the same model, and retrained when a default changed under the same options
    (the ridge baseline's encoder was random-init ResNet18 before it became ImageNet Lite0)."""
    from napari_histoexpress.models.ridge import RidgeBaseline
    from napari_histoexpress.training.cross_validation import _same_run

    genes = ["A", "B"]
    old = TrainConfig(model="ridge", n_genes=2)  # options as given then: {}
    resnet = RidgeBaseline.settings_of({"backbone": "resnet18", "pretrained": None})
    record = {"config": old.to_dict(), "genes": genes, "model_config": resnet}
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert not _same_run(tmp_path, old, genes)  # {} now means Lite0: retrain
    same_model = TrainConfig(model="ridge", n_genes=2, model_config={"backbone": "resnet18"})
    assert _same_run(tmp_path, same_model, genes)  # resnet18, "auto" -> random init: reuse
    other = TrainConfig(model="ridge", n_genes=2, model_config={"n_components": 8})
    assert not _same_run(tmp_path, other, genes)


def test_default_encoder_is_offline_imagenet_lite0(sample_section, tmp_path: Path) -> None:
    """PixNet's training default: the ImageNet EfficientNet-Lite0 (``pretrained="auto"``),
    random init for another backbone; a tiny run with it trains and records it."""
    import torch

    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.models.pixnet import PixNet
    from napari_histoexpress.models.pretrained import imagenet_weights
    from napari_histoexpress.training.tasks import task_class

    genes = ["A", "B"]
    task = task_class("pixnet")(TrainConfig(), device=torch.device("cpu"), log=lambda s: None)
    resolved = PixNet.settings_of(task.model_settings(genes))
    assert (resolved["backbone"], resolved["pretrained"]) == ("tf_efficientnet_lite0", "imagenet")
    r18 = task_class("pixnet")(
        TrainConfig(model_config={"backbone": "resnet18"}), device=torch.device("cpu")
    )
    assert PixNet.settings_of(r18.model_settings(genes))["pretrained"] is None

    from napari_histoexpress.training.train import train

    cfg = _config(epochs=1, crops_per_epoch=2, model_config={"decoder_dim": 8})
    run = train([sample_section], tmp_path / "run", cfg, progress=False, log=lambda s: None)
    model, meta = load_checkpoint(run)
    assert meta["model_config"]["backbone"] == "tf_efficientnet_lite0"
    assert meta["model_config"]["pretrained"] == "imagenet"
    # the encoder started from the ImageNet weights (one epoch moves them only a little)
    from safetensors.torch import load_file

    stem = load_file(str(imagenet_weights("tf_efficientnet_lite0")))["conv_stem.weight"]
    trained = model.encoder.state_dict()["conv_stem.weight"]
    assert torch.corrcoef(torch.stack([stem.flatten(), trained.flatten()]))[0, 1] > 0.9
