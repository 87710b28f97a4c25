"""PixNet's encoder learning rate (``TrainConfig.encoder_lr_scale``): 0 freezes the encoder
(weights and BatchNorm statistics unchanged, the decoder still learns), 0.1 gives the
encoder group a tenth of the scheduled lr at every step, and 1 (default) keeps the one
Adam group of the paper (bit-identity with the reference run: ``test_loop.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_histoexpress.training.config import TrainConfig, learning_rate

#: 2 epochs of 2 steps (4 crops in batches of 2) on the synthetic sample, a small PixNet.
TINY = dict(
    n_genes=4,
    epochs=2,
    crops_per_epoch=4,
    batch_size=2,
    mpp=4.0,
    crop_um=256.0,
    jitter_um=20.0,
    device="cpu",
    model_config={"backbone": "resnet18", "decoder_dim": 8, "out_indices": [1, 2, 3, 4]},
)
GENES = ["MALAT1", "B2M", "ACTB", "COL1A1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "weights.safetensors"))


def test_config_checks_the_scale() -> None:
    assert TrainConfig().encoder_lr_scale == 1.0
    assert TrainConfig(encoder_lr_scale=0).encoder_lr_scale == 0.0
    saved = TrainConfig(encoder_lr_scale=0.1).to_dict()
    assert saved["encoder_lr_scale"] == 0.1
    assert TrainConfig.from_dict(saved).encoder_lr_scale == 0.1
    for bad in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="encoder_lr_scale"):
            TrainConfig(encoder_lr_scale=bad)  # type: ignore[arg-type]


def test_scale_zero_freezes_the_encoder(sample_section, tmp_path: Path) -> None:
    """The encoder's weights and BatchNorm buffers end exactly as built, the decoder and
    head do not, and the encoder was in eval mode at every step."""
    from napari_histoexpress.training.loop import run
    from napari_histoexpress.training.tasks import task_class

    built: dict[str, torch.Tensor] = {}
    modes: list[tuple[bool, bool]] = []
    base = task_class("pixnet")

    class Probe(base):  # type: ignore[misc, valid-type]
        def build(self, sections, genes):
            model = super().build(sections, genes)
            built.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            return model

        def step(self, model, batch):
            modes.append((model.training, model.encoder.training))
            return super().step(model, batch)

    cfg = TrainConfig(**{**TINY, "encoder_lr_scale": 0.0})
    out = run(Probe, [sample_section], tmp_path / "run", cfg, GENES, progress=False,
              log=lambda s: None)  # fmt: skip
    final = _weights(out)
    encoder = [k for k in final if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)  # BatchNorm statistics are checked too
    for key in encoder:
        assert torch.equal(final[key], built[key]), key
    others = [k for k in final if not k.startswith("encoder.")]
    assert others and any(not torch.equal(final[k], built[k]) for k in others)
    assert modes == [(True, False)] * 4


def test_scale_gives_the_encoder_its_share_of_the_lr_at_every_step(
    sample_section, tmp_path: Path
) -> None:
    """With a cosine schedule (a different lr at each step) the encoder group gets 0.1 of
    the scheduled lr and the rest the scheduled lr itself; the groups split the model."""
    from napari_histoexpress.training.loop import run
    from napari_histoexpress.training.tasks import task_class

    lrs: list[tuple[float, float]] = []
    holder: dict[str, torch.optim.Optimizer] = {}
    base = task_class("pixnet")

    class Probe(base):  # type: ignore[misc, valid-type]
        def optimizer(self, model):
            opt = super().optimizer(model)
            holder["opt"] = opt
            enc = {id(p) for p in model.encoder.parameters()}
            groups = {g["name"]: g for g in opt.param_groups}
            assert {id(p) for p in groups["encoder"]["params"]} == enc
            n_rest = sum(1 for p in model.parameters() if id(p) not in enc)
            assert len(groups["decoder"]["params"]) == n_rest
            return opt

        def step(self, model, batch):
            groups = {g["name"]: g for g in holder["opt"].param_groups}
            lrs.append((groups["encoder"]["lr"], groups["decoder"]["lr"]))
            return super().step(model, batch)

    cfg = TrainConfig(**{**TINY, "encoder_lr_scale": 0.1, "lr_schedule": "cosine"})
    run(Probe, [sample_section], tmp_path / "run", cfg, GENES, progress=False,
        log=lambda s: None)  # fmt: skip
    expected = [learning_rate(cfg.lr, s, 4, "cosine", cfg.warmup_fraction) for s in range(4)]
    assert [dec for _, dec in lrs] == expected
    assert len(set(expected)) == 3  # warm-up, peak, decay
    for enc, dec in lrs:
        assert enc == pytest.approx(0.1 * dec, rel=1e-12)


def test_default_scale_keeps_the_one_group(sample_section) -> None:
    from napari_histoexpress.training.tasks import task_class

    task = task_class("pixnet")(TrainConfig(**TINY), device=torch.device("cpu"))
    model = task.build([sample_section], GENES)
    opt = task.optimizer(model)
    assert len(opt.param_groups) == 1 and "lr_scale" not in opt.param_groups[0]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("command", ["train", "cv"])
def test_cli_flag_reaches_the_config(command: str, capsys) -> None:
    from napari_histoexpress.cli import _train_config, build_parser, main

    parser = build_parser()
    argv = [command, "--data", "a.h5ad", "--out", "run"]
    assert _train_config(parser.parse_args(argv)).encoder_lr_scale == 1.0
    cfg = _train_config(parser.parse_args([*argv, "--encoder-lr-scale", "0.1"]))
    assert cfg.encoder_lr_scale == 0.1
    frozen = _train_config(parser.parse_args([*argv, "--encoder-lr-scale", "0"]))
    assert frozen.encoder_lr_scale == 0
    with pytest.raises(SystemExit):
        main([*argv, "--encoder-lr-scale", "-1"])
    assert "--encoder-lr-scale" in capsys.readouterr().err
