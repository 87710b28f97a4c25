"""HAGE trained through the one loop on the synthetic sample: paper defaults from the task,
the step schedule, cached features, resume, evaluation and cross-validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from dense_toys import TINY_HAGE
from napari_histoexpress.training.config import TrainConfig, learning_rate


def _config(tmp_path: Path, **kw) -> TrainConfig:
    given = {
        "n_genes": 6,
        "epochs": 3,
        "batch_size": 32,
        "lr": 1e-3,
        "device": "cpu",
        "feature_cache": str(tmp_path / "features"),
        "model_config": dict(TINY_HAGE),
    }
    given.update(kw)
    return TrainConfig.for_model("hage", **given)


def test_paper_defaults_come_from_the_task() -> None:
    cfg = TrainConfig.for_model("hage")
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size) == (15, 1e-4, 1e-5, 256)
    assert (cfg.lr_schedule, cfg.lr_step_epochs, cfg.lr_gamma) == ("step", 10, 0.5)
    assert TrainConfig.for_model("hage", epochs=3, lr=None).epochs == 3  # given wins, None not
    assert TrainConfig.for_model("pixnet").epochs == TrainConfig().epochs  # PixNet: the class's
    from napari_histoexpress.cli import cv_train_config

    assert cv_train_config(["--model", "hage"]).lr == 1e-4
    assert cv_train_config(["--model", "hage", "--epochs", "2"]).epochs == 2
    assert cv_train_config(["--model", "pixnet"]).lr == TrainConfig().lr
    ablation = cv_train_config(["--model", "hage", "--model-config", '{"use_ge": false}'])
    assert ablation.model_config == {"use_ge": False}


def test_step_schedule_is_torch_steplr_per_epoch() -> None:
    lrs = [
        learning_rate(1e-4, s, 150, "step", 0.05, epochs=15, step_epochs=10, gamma=0.5)
        for s in range(150)
    ]
    assert lrs[:100] == [1e-4] * 100 and lrs[100:] == [5e-5] * 50
    with pytest.raises(ValueError, match="lr_gamma"):
        TrainConfig(lr_gamma=0.0)


def test_train_evaluate_resume_and_feature_cache(
    sample_section, tmp_path: Path, monkeypatch
) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training import loop as loop_mod
    from napari_histoexpress.training.evaluate import evaluate_run
    from napari_histoexpress.training.train import train

    cfg = _config(tmp_path)
    run = tmp_path / "run"
    logs: list[str] = []
    train([sample_section], run, cfg, progress=False, log=logs.append)
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"] == "hage" and meta["config"]["epochs"] == 3
    history = meta["extra"]["history"]
    assert len(history) == 3
    for key in ("cyclip", "clip_local", "clip_global", "pcc"):
        assert all(np.isfinite(h[key]) for h in history)
    assert history[-1]["pcc"] < history[0]["pcc"]  # it learns
    assert meta["extra"]["gene_embeddings"]["encoder"] == "all-MiniLM-L6-v2"
    assert meta["extra"]["gene_embeddings"]["missing"] == {}
    assert meta["extra"]["training_spots"] == sample_section.adata.n_obs
    assert list((tmp_path / "features").rglob("*.safetensors"))  # the features were cached

    model, _ = load_checkpoint(run)
    assert model.registry_name == "hage" and model.genes == meta["genes"]
    assert float(model.gene_vectors.abs().sum()) > 0  # the gene memory is in the checkpoint
    report = evaluate_run(run, [sample_section], device="cpu", progress=False)
    res = report["sections"]["synthetic"]
    assert res["n_genes"] == 6 and np.isfinite(res["pcc_mean"])
    assert res["pcc_mean"] > 0.2  # in-sample, cell-type-driven synthetic expression
    # from the cached spot features (what cross-validation uses): the same predictions
    cached = evaluate_run(
        run, [sample_section], device="cpu", progress=False, feature_cache=cfg.feature_cache
    )["sections"]["synthetic"]
    assert cached["pcc_mean"] == pytest.approx(res["pcc_mean"], abs=1e-4)
    assert cached["mse"] == pytest.approx(res["mse"], rel=1e-4)

    # killed after epoch 1, resumed: the same weights as the uninterrupted run
    again = tmp_path / "again"
    original = loop_mod._save_resume

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_mod, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train([sample_section], again, cfg, progress=False, log=lambda s: None)
    monkeypatch.setattr(loop_mod, "_save_resume", original)
    resumed_logs: list[str] = []
    train([sample_section], again, cfg, progress=False, log=resumed_logs.append)
    assert any("after epoch 1" in line for line in resumed_logs)
    a, _ = load_checkpoint(run)
    b, _ = load_checkpoint(again)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=name)


def test_cv_with_ablations_reuses_folds(sample_section, tmp_path: Path) -> None:
    from napari_histoexpress.training.cross_validation import cross_validate

    other = copy.copy(sample_section)
    other.adata = sample_section.adata.copy()
    other.adata.uns["spatial"] = {"synthetic2": other.adata.uns["spatial"]["synthetic"]}
    other.name = "synthetic2"
    cfg = _config(tmp_path, epochs=1)
    cv = cross_validate([sample_section, other], tmp_path / "cv", cfg, progress=False,
                        log=lambda s: None)  # fmt: skip
    assert [r["fold"] for r in cv["rows"]] == ["synthetic", "synthetic2", "mean"]
    again = cross_validate([sample_section, other], tmp_path / "cv", cfg, progress=False,
                           log=lambda s: None)  # fmt: skip
    assert again["n_folds_resumed"] == 2
    no_ge = _config(tmp_path, epochs=1, model_config={**TINY_HAGE, "use_ge": False})
    ablated = cross_validate([sample_section, other], tmp_path / "cv", no_ge, progress=False,
                             log=lambda s: None)  # fmt: skip
    assert ablated["n_folds_resumed"] == 0  # another model: retrained


def test_bf16_autocast_training_runs(sample_section, tmp_path: Path, monkeypatch) -> None:
    """``precision='bf16'`` (what ``auto`` picks on a CUDA GPU), on CPU: the forward pass
    runs in bfloat16, the losses in float32, and the run trains and predicts."""
    import torch

    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.tasks.hage import HageTask
    from napari_histoexpress.training.train import train

    seen: list[torch.dtype] = []
    original = HageTask.step

    def step(self, model, batch):
        out = original(self, model, batch)
        seen.append(model.image_proj(self.X[batch][:1]).dtype)  # outside autocast: fp32
        with self.autocast():
            seen.append(model.image_proj(self.X[batch][:1]).dtype)
        assert all(v.dtype == torch.float32 for v in out.values())
        return out

    monkeypatch.setattr(HageTask, "step", step)
    run = tmp_path / "bf16"
    cfg = _config(tmp_path, epochs=1, precision="bf16")
    train([sample_section], run, cfg, progress=False, log=lambda s: None)
    assert seen[:2] == [torch.float32, torch.bfloat16]
    model, meta = load_checkpoint(run)
    assert meta["config"]["precision"] == "bf16"
    assert all(torch.isfinite(p).all() for p in model.parameters())
