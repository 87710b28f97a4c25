"""DKAN trained through the one loop on the synthetic sample: the task's defaults, the losses
it records, the ablations, cached evaluation, target smoothing, and whole-slide prediction
through the two-pass lattice predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dense_toys import TINY_DKAN
from napari_histoexpress.training.config import TrainConfig


def _config(cache: Path, **kw) -> TrainConfig:
    given = {
        "n_genes": 6,
        "epochs": 3,
        "batch_size": 32,
        "lr": 1e-3,
        "device": "cpu",
        "feature_cache": str(cache),
        "model_config": dict(TINY_DKAN),
    }
    given.update(kw)
    return TrainConfig.for_model("dkan", **given)


@pytest.fixture(scope="module")
def trained(sample_section, tmp_path_factory):
    from napari_histoexpress.training.train import train

    root = tmp_path_factory.mktemp("dkan")
    logs: list[str] = []
    train(
        [sample_section], root / "run", _config(root / "features"), progress=False, log=logs.append
    )
    return root, logs


@pytest.fixture(scope="module")
def features(trained) -> Path:
    """The module's feature cache (filled by the first training)."""
    return trained[0] / "features"


def test_paper_defaults_come_from_the_task() -> None:
    cfg = TrainConfig.for_model("dkan")
    assert (cfg.lr, cfg.batch_size, cfg.lr_schedule) == (5e-4, 64, "step")
    assert (cfg.lr_step_epochs, cfg.lr_gamma) == (50, 0.9)
    from napari_histoexpress.cli import cv_train_config

    ablation = cv_train_config(["--model", "dkan", "--model-config", '{"use_text": false}'])
    assert ablation.model_config == {"use_text": False} and ablation.batch_size == 64


def test_train_records_the_losses_and_evaluates(trained, sample_section) -> None:
    from napari_histoexpress.training.evaluate import evaluate_run

    root, logs = trained
    meta = json.loads((root / "run" / "config.json").read_text())
    assert meta["model"] == "dkan" and len(meta["genes"]) == 6
    history = meta["extra"]["history"]
    assert len(history) == 3 and {"sup", "mse", "contrastive"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    assert meta["extra"]["lattice_nodes"] > meta["extra"]["training_spots"] == 207
    assert any("lattice nodes" in line for line in logs)
    cached = evaluate_run(
        root / "run", [sample_section], progress=False, feature_cache=str(root / "features")
    )
    fresh = evaluate_run(root / "run", [sample_section], progress=False, feature_cache="none")
    assert np.isfinite(cached["mean"]["pcc_mean"])
    assert cached["mean"]["pcc_mean"] == pytest.approx(fresh["mean"]["pcc_mean"], abs=1e-5)
    # the collagen genes follow the synthetic stroma: a trained model finds them
    assert cached["mean"]["per_gene_pcc"]["COL1A1"] > 0.3


@pytest.mark.parametrize(
    "ablation",
    [{"use_text": False}, {"use_contrastive": False}, {"adaptive_weights": False}, {"kv": "fused"}],
)
def test_ablations_train(sample_section, features: Path, tmp_path: Path, ablation) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.train import train

    cfg = _config(features, epochs=1, model_config={**TINY_DKAN, **ablation})
    train([sample_section], tmp_path / "run", cfg, progress=False, log=lambda _: None)
    model, meta = load_checkpoint(tmp_path / "run")
    for key, value in ablation.items():
        assert getattr(model.config, key) == value
    history = meta["extra"]["history"][0]
    assert ("contrastive" in history) == ablation.get("use_contrastive", True)
    assert np.isfinite(history["loss"])


def test_target_smoothing_averages_array_neighbours() -> None:
    from napari_histoexpress.training.tasks.dkan import smooth_over_neighbours

    xy = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    y = np.array([[0.0], [3.0], [6.0], [1.0], [5.0]])
    out = smooth_over_neighbours(y, xy)
    np.testing.assert_allclose(out[:, 0], [1.5, 3.0, 4.5, 3.0, 3.0])


def test_whole_slide_two_pass_prediction_matches_spot_evaluation(
    trained, sample_section, tmp_path: Path
) -> None:
    """The map predicted on the lattice (pass 1: frozen features of every node; pass 2: the
    global encoder and heads), read at the measured spots, agrees with the spot
    evaluation, and a stopped prediction resumes to the same map."""
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.predict_lattice import predict_lattice
    from napari_histoexpress.io.spatial import spot_centres_px
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.evaluate import predict_section_spots

    root, _ = trained
    model, meta = load_checkpoint(root / "run")
    slide = sample_section.slide
    report = predict_lattice(model, slide, tmp_path / "map.zarr", device="cpu", build_pyramid=False)
    assert report.status == "complete"
    assert not (tmp_path / ".map.zarr.pass1").exists()
    store = DenseMapStore.open(tmp_path / "map.zarr")
    assert store.feature_dim == 6 and store.genes == meta["genes"]
    assert store.attrs["lattice"]["pitch_um"] == pytest.approx(model.lattice_pitch_um, rel=1e-3)
    feats = np.asarray(store.features_level(0).compute(), dtype=np.float64)
    pitch_px = store.attrs["lattice"]["pitch_px"] * (model.working_mpp / slide.mpp)
    xy = spot_centres_px(sample_section.adata)
    rows, cols = (xy[:, 1] // pitch_px).astype(int), (xy[:, 0] // pitch_px).astype(int)
    from_map = feats[rows, cols]
    spots = predict_section_spots(model, meta, sample_section, device="cpu")
    for g in range(3, 6):  # the genes the model learnt (collagens)
        assert np.corrcoef(from_map[:, g], spots[:, g])[0, 1] > 0.8


def test_cli_train_evaluate_predict(tmp_path: Path, capsys) -> None:
    """``histoexpress train/evaluate/predict --model dkan`` on the sample, as a user runs it."""
    from napari_histoexpress.cli import main
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.io.synthetic import sample_paths

    paths = sample_paths()
    run, cache = tmp_path / "run", tmp_path / "features"
    common = ["--device", "cpu", "--feature-cache", str(cache)]
    train = ["train", "--model", "dkan", "--data", str(paths["spots"]), "--genes", "4"]
    config = ["--epochs", "1", "--model-config", json.dumps(TINY_DKAN)]
    code = main([*train, "--out", str(run), *config, *common])
    assert code == 0
    assert main(["evaluate", "--run", str(run), "--data", str(paths["spots"]), *common]) == 0
    assert "pcc" in capsys.readouterr().out.lower()
    out = tmp_path / "map.zarr"
    args = ["predict", "--run", str(run), "--slide", str(paths["image"]), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    store = DenseMapStore.open(out)
    assert store.feature_dim == 4 and store.attrs["provenance"]["prediction"] == "lattice"
    assert bool(store.done_mask.any())


def test_bf16_autocast_training_runs(sample_section, features: Path, tmp_path: Path) -> None:
    """``precision='bf16'`` (what ``auto`` picks on a CUDA GPU), on CPU: the forward pass
    runs under bfloat16 autocast, the losses in float32, and the run trains and predicts."""
    import torch

    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.tasks.dkan import DkanTask
    from napari_histoexpress.training.train import train

    seen: list[torch.dtype] = []
    original = DkanTask.step

    def step(self, model, batch):
        out = original(self, model, batch)
        with self.autocast():
            seen.append(model.section_context(self.sections[batch[0]].nodes).global_tokens.dtype)
        assert all(v.dtype == torch.float32 for v in out.values())
        return out

    cfg = _config(features, epochs=1, precision="bf16")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DkanTask, "step", step)
        train([sample_section], tmp_path / "bf16", cfg, progress=False, log=lambda s: None)
    assert seen and seen[0] == torch.bfloat16
    model, meta = load_checkpoint(tmp_path / "bf16")
    assert meta["config"]["precision"] == "bf16"
    assert all(torch.isfinite(p).all() for p in model.parameters())
