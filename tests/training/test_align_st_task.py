"""ALIGN-ST trained through the one loop on the synthetic sample: the paper's defaults from
the task, the losses it records, the spot pitch and token sequences it keeps, the
ablations, cached evaluation, and whole-slide prediction through the two-pass lattice
predictor with the slide's own head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dense_toys import TINY_ALIGN_ST
from napari_histoexpress.training.config import TrainConfig


def _config(cache: Path, **kw) -> TrainConfig:
    given = {
        "n_genes": 6,
        "epochs": 40,
        "lr": 2e-3,
        "device": "cpu",
        "feature_cache": str(cache),
        "model_config": dict(TINY_ALIGN_ST),
    }
    given.update(kw)
    return TrainConfig.for_model("align-st", **given)


@pytest.fixture(scope="module")
def trained(sample_section, tmp_path_factory):
    from napari_histoexpress.training.train import train

    root = tmp_path_factory.mktemp("align_st")
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
    cfg = TrainConfig.for_model("align-st")
    assert (cfg.epochs, cfg.lr, cfg.weight_decay) == (200, 5e-4, 1e-4)
    assert cfg.lr_schedule == "constant"


def test_spot_pitch_is_the_median_neighbour_distance(sample_section) -> None:
    from napari_histoexpress.io.spatial import spot_centres_px
    from napari_histoexpress.training.tasks.align_st import spot_pitch_um

    pair = sample_section.pair()
    xy = spot_centres_px(pair[0])
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    expect = float(np.median(d.min(1))) * float(pair[1].mpp)
    assert spot_pitch_um([pair]) == pytest.approx(expect, rel=1e-9)


def test_train_records_the_losses_and_evaluates(trained, sample_section) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.evaluate import evaluate_run
    from napari_histoexpress.training.tasks.align_st import spot_pitch_um

    root, logs = trained
    meta = json.loads((root / "run" / "config.json").read_text())
    assert meta["model"] == "align-st" and len(meta["genes"]) == 6
    history = meta["extra"]["history"]
    assert len(history) == 40 and {"mse", "pcc"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    assert meta["extra"]["training_spots"] == 207
    assert meta["extra"]["gene_tokens"]["encoder"] and not meta["extra"]["gene_tokens"]["missing"]
    model, _ = load_checkpoint(root / "run")
    assert model.lattice_pitch_um == pytest.approx(spot_pitch_um([sample_section.pair()]))
    assert bool(model.gene_token_mask.any(1).all())  # every gene has its description tokens
    assert any("training spots" in line for line in logs)
    cached = evaluate_run(
        root / "run", [sample_section], progress=False, feature_cache=str(root / "features")
    )
    fresh = evaluate_run(root / "run", [sample_section], progress=False, feature_cache="none")
    assert cached["mean"]["pcc_mean"] == pytest.approx(fresh["mean"]["pcc_mean"], abs=1e-5)
    # the collagen genes follow the synthetic stroma: a trained model finds them
    assert cached["mean"]["per_gene_pcc"]["COL1A1"] > 0.3


@pytest.mark.parametrize(
    "ablation",
    [
        {"use_nuclei": False},
        {"use_prompts": False},
        {"use_asig": False},
        {"alpha": 0.0},
        {"genes_per_step": 3},
    ],
)
def test_ablations_train(sample_section, features: Path, tmp_path: Path, ablation) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.train import train

    cfg = _config(features, epochs=1, model_config={**TINY_ALIGN_ST, **ablation})
    train([sample_section], tmp_path / "run", cfg, progress=False, log=lambda _: None)
    model, meta = load_checkpoint(tmp_path / "run")
    for key, value in ablation.items():
        assert getattr(model.config, key) == value
    assert np.isfinite(meta["extra"]["history"][0]["loss"])


def test_whole_slide_two_pass_prediction_with_the_slides_head(
    trained, sample_section, tmp_path: Path
) -> None:
    """The map predicted on a lattice at the training spot pitch (pass 1: frozen features +
    nuclei of every node; pass 2: the image stream, the patch graph and this slide's gene
    head) agrees at the measured spots with the spot evaluation (whose graph is over the
    spots), and its head is the slide's, not the patch-free one."""
    from napari_histoexpress.inference.measured_vs_predicted import compare
    from napari_histoexpress.inference.predict_lattice import predict_lattice
    from napari_histoexpress.models.checkpoint import load_checkpoint

    root, _ = trained
    model, meta = load_checkpoint(root / "run")
    report = predict_lattice(
        model, sample_section.slide, tmp_path / "map.zarr", device="cpu", build_pyramid=False
    )
    assert report.status == "complete"
    from napari_histoexpress.inference.map_store import DenseMapStore

    store = DenseMapStore.open(tmp_path / "map.zarr")
    assert store.feature_dim == model.feature_dim and store.genes == meta["genes"]
    assert store.attrs["lattice"]["pitch_um"] == pytest.approx(model.lattice_pitch_um, rel=1e-3)
    W, b = store.head
    assert not np.allclose(W, model.gene_head()[0], atol=1e-4)  # the slide's prompts
    assert not b.any()
    result = compare(store, sample_section.adata)
    assert result.pcc_of("COL1A1") > 0.3

    # a finer map: half the training pitch, four offset lattices in one head
    fine = predict_lattice(
        model,
        sample_section.slide,
        tmp_path / "fine.zarr",
        device="cpu",
        build_pyramid=False,
        pitch_um=model.lattice_pitch_um / 2,
    )
    assert fine.status == "complete"
    fine_store = DenseMapStore.open(tmp_path / "fine.zarr")
    assert fine_store.map_shape[0] >= 2 * store.map_shape[0] - 1
    assert compare(fine_store, sample_section.adata).pcc_of("COL1A1") > 0.3
    with pytest.raises(ValueError, match="divided by a whole number"):
        predict_lattice(
            model,
            sample_section.slide,
            tmp_path / "odd.zarr",
            device="cpu",
            pitch_um=model.lattice_pitch_um / 1.5,
        )


def test_cli_train_evaluate_predict(tmp_path: Path, capsys) -> None:
    """``histoexpress train/evaluate/predict --model align-st`` on the sample, as a user runs
    it."""
    from napari_histoexpress.cli import main
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.io.synthetic import sample_paths

    paths = sample_paths()
    run, cache = tmp_path / "run", tmp_path / "features"
    common = ["--device", "cpu", "--feature-cache", str(cache)]
    train = ["train", "--model", "align-st", "--data", str(paths["spots"]), "--genes", "4"]
    config = ["--epochs", "1", "--model-config", json.dumps(TINY_ALIGN_ST)]
    assert main([*train, "--out", str(run), *config, *common]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(paths["spots"]), *common]) == 0
    assert "pcc" in capsys.readouterr().out.lower()
    out = tmp_path / "map.zarr"
    args = ["predict", "--run", str(run), "--slide", str(paths["image"]), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    store = DenseMapStore.open(out)
    assert store.feature_dim == TINY_ALIGN_ST["embed_dim"]
    assert store.attrs["provenance"]["prediction"] == "lattice"
    assert bool(store.done_mask.any())


def test_bf16_autocast_training_runs(sample_section, features: Path, tmp_path: Path) -> None:
    """``precision='bf16'`` on CPU: the forward pass under bfloat16 autocast, the losses in
    float32; the run trains and its weights are finite."""
    import torch

    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.tasks.align_st import AlignStTask
    from napari_histoexpress.training.train import train

    seen: list[torch.dtype] = []
    original = AlignStTask.step

    def step(self, model, batch):
        out = original(self, model, batch)
        sec = self.sections[batch[0]]
        with self.autocast():
            seen.append(model.node_inputs(sec.raw).dtype)
        assert all(v.dtype == torch.float32 for v in out.values())
        return out

    cfg = _config(features, epochs=1, precision="bf16")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AlignStTask, "step", step)
        train([sample_section], tmp_path / "bf16", cfg, progress=False, log=lambda s: None)
    assert seen and seen[0] == torch.bfloat16
    model, _ = load_checkpoint(tmp_path / "bf16")
    assert all(torch.isfinite(p).all() for p in model.parameters())
