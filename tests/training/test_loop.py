"""The one training loop: PixNet gives the numbers of the fused loop it replaced, a resumed
run gives the uninterrupted one's, ridge fits through the same entry point, and model names
come from the registry only."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histoexpress.training.config import TrainConfig

#: A tiny PixNet run on the synthetic sample: 2 epochs of 8 crops in batches of 4.
REFERENCE_CONFIG = dict(
    n_genes=6,
    epochs=2,
    crops_per_epoch=8,
    batch_size=4,
    mpp=4.0,
    crop_um=256.0,
    jitter_um=20.0,
    device="cpu",
    # ResNet18 from random init: the encoder the reference numbers were measured with
    model_config={"backbone": "resnet18", "decoder_dim": 16, "out_indices": [1, 2, 3, 4]},
)

# Measured from the code before the one loop (``train_pixnet`` with its fused loop, commit
# c34bcfb) on the 2-core CI machine with ONE torch thread (the thread count changes float
# sums in the 7th digit): the per-epoch mean losses and the sum / sum of |.| of every tensor
# of the final weights.safetensors. The new loop gave the same bits (same SHA-256 of the
# weights). Compared at 1e-4 relative (losses 5e-4: another 2-core Xeon gave 1.4e-4 on
# epoch 2's) so another CPU's rounding (instruction set) passes,
# while any change in what the loop computes (an extra random draw, another lr, another
# order of steps) moves these numbers by far more.
REFERENCE_LOSSES = [1.4539477229118347, 1.3011752367019653]
REFERENCE_WEIGHT_SUM = 9375.843821006834
REFERENCE_WEIGHT_ABS_SUM = 231078.93420531953
REFERENCE_GENES = ["MALAT1", "B2M", "ACTB", "COL1A1", "COL3A1", "COL1A2"]


@pytest.fixture
def one_thread():
    """One torch thread, as the reference numbers were measured with."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_numbers(run: Path) -> tuple[list[float], float, float, dict]:
    from safetensors.torch import load_file

    meta = json.loads((run / "config.json").read_text())
    weights = load_file(str(run / "weights.safetensors"))
    total = sum(float(v.double().sum()) for v in weights.values())
    absolute = sum(float(v.double().abs().sum()) for v in weights.values())
    return [h["loss"] for h in meta["extra"]["history"]], total, absolute, meta


def _assert_reference(run: Path) -> None:
    losses, total, absolute, meta = _run_numbers(run)
    assert meta["genes"] == REFERENCE_GENES
    assert losses == pytest.approx(REFERENCE_LOSSES, rel=5e-4)
    assert total == pytest.approx(REFERENCE_WEIGHT_SUM, rel=1e-4)
    assert absolute == pytest.approx(REFERENCE_WEIGHT_ABS_SUM, rel=1e-4)


def test_pixnet_through_the_loop_gives_the_fused_loops_numbers(
    sample_section, tmp_path: Path, one_thread
) -> None:
    from napari_histoexpress.training.train import train

    run = train(
        [sample_section], tmp_path / "run", TrainConfig(**REFERENCE_CONFIG), progress=False,
        log=lambda s: None,
    )  # fmt: skip
    _assert_reference(run)
    meta = json.loads((run / "config.json").read_text())
    assert list(meta["extra"]) == [
        "normalisation", "microns_per_pixel", "crop_um", "sections", "history",
    ]  # fmt: skip
    assert [list(h) for h in meta["extra"]["history"]] == [["epoch", "loss", "seconds"]] * 2


def test_a_resumed_run_gives_the_uninterrupted_result(
    sample_section, tmp_path: Path, monkeypatch, one_thread
) -> None:
    """Killed right after epoch 1 was saved, then rerun: the same losses and weights as an
    uninterrupted run (the colour-jitter generator and torch's RNG are part of the state;
    before the one loop, a resumed run restarted the jitter stream and differed)."""
    from napari_histoexpress.training import loop
    from napari_histoexpress.training.train import train

    run = tmp_path / "run"
    cfg = TrainConfig(**REFERENCE_CONFIG)
    original = loop._save_resume

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train([sample_section], run, cfg, progress=False, log=lambda s: None)
    monkeypatch.setattr(loop, "_save_resume", original)
    state = json.loads((run / "resume" / "state.json").read_text())
    assert state["epoch"] == 1 and not (run / "config.json").exists()
    logs: list[str] = []
    train([sample_section], run, cfg, progress=False, log=logs.append)
    assert any("resuming" in line and "after epoch 1" in line for line in logs)
    assert not any(line.startswith("epoch 1/2") for line in logs)
    _assert_reference(run)


def test_task_hooks_named_losses_and_epoch_records(sample_section, tmp_path: Path) -> None:
    """A task's extra named losses and its on_epoch_end values land in the history; the
    hooks run once per epoch, in order."""
    from napari_histoexpress.training.loop import run
    from napari_histoexpress.training.tasks import task_class

    calls: list[str] = []
    base = task_class("pixnet")

    class Probe(base):  # type: ignore[misc, valid-type]
        def on_epoch_start(self, epoch):
            calls.append(f"start {epoch}")

        def step(self, model, batch):
            named = dict(super().step(model, batch))
            named["half"] = named["loss"].detach() / 2
            return named

        def on_epoch_end(self, epoch):
            calls.append(f"end {epoch}")
            return {"score": 0.5 + epoch}

    cfg = TrainConfig(**{**REFERENCE_CONFIG, "crops_per_epoch": 4})
    run(Probe, [sample_section], tmp_path / "run", cfg, ["MALAT1", "B2M"], progress=False,
        log=lambda s: None)  # fmt: skip
    history = json.loads((tmp_path / "run" / "config.json").read_text())["extra"]["history"]
    assert calls == ["start 0", "end 0", "start 1", "end 1"]
    assert [list(h) for h in history] == [["epoch", "loss", "half", "score", "seconds"]] * 2
    for h in history:
        assert h["half"] == pytest.approx(h["loss"] / 2)
    assert [h["score"] for h in history] == [0.5, 1.5]


def test_ridge_fits_through_train_into_the_same_checkpoint(sample_section, tmp_path: Path) -> None:
    """The closed-form task: the checkpoint equals the one RidgeBaseline.fit + save writes,
    and evaluation through encode_spots + gene head equals the model's own predict."""
    from safetensors.torch import load_file

    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.models.ridge import RidgeBaseline, RidgeConfig
    from napari_histoexpress.training.evaluate import predict_section_spots
    from napari_histoexpress.training.train import choose_genes, train

    model_config = {"n_components": 8, "patch_um": 64.0, "input_px": 32, "cv_folds": 2}
    cfg = TrainConfig(
        **{
            **REFERENCE_CONFIG,
            "model": "ridge",
            "model_config": {**model_config, "decoder_dim": 16},
        }
    )  # a PixNet setting in model_config is ignored, as before
    run = train([sample_section], tmp_path / "ridge", cfg, progress=False, log=lambda s: None)
    assert not (run / "resume").exists()  # closed form: no epochs, nothing to resume

    genes = choose_genes([sample_section], cfg)
    direct = RidgeBaseline(RidgeConfig(**model_config, target_sum=cfg.target_sum, seed=cfg.seed))
    direct.to("cpu", cfg.precision).fit([sample_section.pair()], genes)
    direct.save(tmp_path / "direct", train_config=cfg.to_dict())

    def meta_of(path: Path) -> dict:
        meta = json.loads((path / "config.json").read_text())
        meta.pop("created")
        return meta

    assert meta_of(run) == meta_of(tmp_path / "direct")
    assert set(meta_of(run)["extra"]) >= {"alpha", "cv_scores", "cv_scheme"}
    ours, theirs = (
        load_file(str(run / "weights.safetensors")),
        load_file(str(tmp_path / "direct" / "weights.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    model, meta = load_checkpoint(run)
    via_kind = predict_section_spots(model, meta, sample_section, device="cpu")
    assert isinstance(model, RidgeBaseline)
    np.testing.assert_allclose(via_kind, model.predict(sample_section.pair()), rtol=1e-5, atol=1e-5)


def test_trainable_models_are_the_registered_models_with_a_task() -> None:
    from napari_histoexpress.models.registry import available_models
    from napari_histoexpress.training import train as train_mod
    from napari_histoexpress.training.config import DEFAULT_MODEL
    from napari_histoexpress.training.loop import TrainingTask
    from napari_histoexpress.training.tasks import task_class, trainable_models

    tasks_dir = Path(train_mod.__file__).parent / "tasks"
    with_task = {p.stem for p in tasks_dir.glob("*.py") if p.stem != "__init__"}
    module_of = {name: name.lower().replace("-", "_") for name in available_models()}
    assert trainable_models() == sorted(n for n, m in module_of.items() if m in with_task)
    assert tuple(trainable_models()) == train_mod.TRAINABLE_MODELS  # derived, not listed
    assert DEFAULT_MODEL in trainable_models() and TrainConfig().model == DEFAULT_MODEL
    for name in trainable_models():
        assert issubclass(task_class(name), TrainingTask)
    assert {task_class(n).closed_form for n in trainable_models()} == {True, False}
    with pytest.raises(KeyError, match="unknown model"):
        task_class("no-such-model")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        train_mod.train([], "unused", TrainConfig(model="nope"))


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_model_names_appear_only_in_the_registry() -> None:
    """No string in training/ or the CLI is a model's name (dispatch goes through the
    registry and the task convention), except the one declared default."""
    import napari_histoexpress
    from napari_histoexpress.models.registry import available_models

    src = Path(napari_histoexpress.__file__).parent
    names = set(available_models())
    files = [*sorted((src / "training").rglob("*.py")), src / "cli.py"]
    found = [
        f"{path.relative_to(src)}:{line}: {value!r}"
        for path in files
        for line, value in _string_constants(path)
        if value in names  # registry names are lower-case; "PixNet" is a type name
    ]
    assert found == ["training/config.py:11: 'pixnet'"], found  # DEFAULT_MODEL
