"""Stain robustness through training, evaluation and prediction (``TrainConfig.stain``, the
``--stain-augment`` / ``--stain-normalize`` flags): HED augmentation is reproducible and
resumes exactly; a normalised run fits its reference on its training sections and records
it (``config.stain``, ``input.stain``); evaluation and whole-slide prediction re-create the
normaliser with each section's / slide's own stains; the defaults change nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dense_toys import TinyDense
from napari_histoexpress.cli import main
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_slide import predict_slide
from napari_histoexpress.models.base import DenseModel, InputSpec
from napari_histoexpress.stain import StainConfig, StainNormalizer, hed_perturb
from napari_histoexpress.training.config import TrainConfig, default_stain

#: a tiny PixNet run through the CLI: 2 epochs of 2 steps of 2 crops of 256 µm at 4 µm/px
TINY_ARGS = [
    "--genes", "4", "--epochs", "2", "--crops-per-epoch", "4", "--batch-size", "2",
    "--mpp", "4", "--crop-um", "256", "--decoder-dim", "8", "--out-indices", "1", "2", "3", "4",
    "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def spots() -> str:
    from napari_histoexpress.io.synthetic import sample_paths

    return str(sample_paths()["spots"])


@pytest.fixture(scope="module")
def sample_section():
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.sections import load_section

    return load_section(sample_paths()["spots"])


@pytest.fixture(scope="module")
def small_section(sample_section):
    """Every fourth spot of the sample (52 spots), for the slower spot-by-spot fits."""
    section = copy.copy(sample_section)
    section.adata = sample_section.adata[::4].copy()
    return section


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """256 x 256 px of the synthetic H&E sample at 4 µm/px (stained tissue and glass)."""
    from napari_histoexpress.io.slides import open_slide, read_region_at_mpp
    from napari_histoexpress.io.synthetic import sample_paths

    slide = open_slide(sample_paths()["image"])
    try:
        return np.asarray(read_region_at_mpp(slide, (1536, 1536), (256, 256), 4.0))
    finally:
        slide.close()


@pytest.fixture(scope="module")
def normalised_run(spots: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stain") / "macenko"
    argv = ["train", "--data", spots, *TINY_ARGS, "--epochs", "1", "--crops-per-epoch", "2"]
    assert main([*argv, "--stain-normalize", "macenko", "--out", str(run)]) == 0
    return run


def _meta(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "weights.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _shifted(image: np.ndarray) -> np.ndarray:
    """A stain-shifted copy: more haematoxylin, less eosin, a tinted background."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    y = hed_perturb(x, torch.tensor([[1.3, 0.75, 1.0]]), torch.tensor([[0.05, -0.03, 0.02]]))
    return (y[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _predict(model: DenseModel, image: np.ndarray, path: Path, stain, tile_px: int = 64):
    predict_slide(
        model, image, path, model_mpp=None, tile_px=tile_px, halo_px=16, device="cpu",
        dtype="float32", skip_background=False, stain=stain,
    )  # fmt: skip
    store = DenseMapStore.open(path)
    return np.asarray(store.features_level(0).compute()), store


# ------------------------------------------------------------------------------ defaults
def test_defaults_change_nothing() -> None:
    """Off by default: the config's stain is the StainConfig default, the input spec has
    none, and an old input spec (without the field) loads."""
    assert TrainConfig().stain == default_stain() == StainConfig().to_dict()
    assert TrainConfig(stain={}).stain == default_stain()
    assert InputSpec(2.0, (0.5,) * 3, (0.2,) * 3).stain is None  # type: ignore[arg-type]
    old = {"mpp": 2.0, "mean": [0, 0, 0], "std": [1, 1, 1], "normalizes_input": True}
    assert InputSpec.from_dict(old).stain is None
    fitted = {"normalize": "reinhard", "reference": {"method": "reinhard", "target_means": [
        60.0, 20.0, -10.0], "target_stds": [9.0, 4.0, 4.0]}}  # fmt: skip
    spec = InputSpec(2.0, (0.0,) * 3, (1.0,) * 3, stain=StainConfig.from_dict(fitted).to_dict())  # type: ignore[arg-type]
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    hash(spec)  # the dict field is not hashed
    with pytest.raises(ValueError, match="unknown stain settings"):
        TrainConfig(stain={"sigma": 0.1})


def test_cli_flags_reach_the_config_and_errors_name_them(capsys) -> None:
    from napari_histoexpress.cli import _train_config, build_parser

    parser = build_parser()
    for command in ("train", "cv"):
        argv = [command, "--data", "a.h5ad", "--out", "run"]
        assert _train_config(parser.parse_args(argv)).stain == default_stain()
        cfg = _train_config(
            parser.parse_args([*argv, "--stain-augment", "0.05", "--stain-normalize", "reinhard"])
        )
        assert cfg.stain == {
            "augment_sigma": 0.05, "augment_bias": 0.05, "normalize": "reinhard",
            "reference": None,
        }  # fmt: skip
    code = main(["train", "--data", "a.h5ad", "--out", "run", "--stain-augment", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --stain-augment 2.0: the stain augmentation strength must be at "
                   "most 1, not 2.0"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(["train", "--data", "a.h5ad", "--out", "run", "--stain-normalize", "vahadane"])
    assert "--stain-normalize" in capsys.readouterr().err


# ------------------------------------------------------------------------------ augmentation
def test_stain_augment_is_reproducible_and_resumes_identically(
    spots: str, tmp_path: Path, monkeypatch
) -> None:
    """Run ``c`` trains epoch 1 from scratch, is killed, and resumes epoch 2: equal to the
    uninterrupted run ``a`` (the same seed gives the same epoch 1, and the augmentation's
    generator state resumes)."""
    from napari_histoexpress.training import loop

    argv = ["train", "--data", spots, *TINY_ARGS, "--crops-per-epoch", "2"]
    argv = [*argv, "--stain-augment", "0.05", "--out"]
    assert main([*argv, str(tmp_path / "a")]) == 0
    meta = _meta(tmp_path / "a")
    assert meta["config"]["stain"] == meta["input"]["stain"] == {
        "augment_sigma": 0.05, "augment_bias": 0.05, "normalize": "none", "reference": None,
    }  # fmt: skip

    original = loop._save_resume

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_resume", save_then_die)
    assert main([*argv, str(tmp_path / "c")]) == 130  # interrupted after epoch 1
    monkeypatch.setattr(loop, "_save_resume", original)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c" / "resume" / "state.safetensors"), "pt") as f:
        assert "task.stain_generator" in set(f.keys())
    assert main([*argv, str(tmp_path / "c")]) == 0
    assert _same_weights(tmp_path / "a", tmp_path / "c")  # resumed == uninterrupted


def test_augmentation_follows_the_colour_jitter(sample_section) -> None:
    """The batch the model sees is HED-perturbed after the colour jitter (jitter draws
    unchanged: the augmentation has its own generator); off, nothing is drawn."""
    from napari_histoexpress.training.tasks import task_class

    cfg = dict(n_genes=4, crops_per_epoch=2, batch_size=2, mpp=4.0, crop_um=256.0,
               device="cpu", model_config={"backbone": "resnet18", "decoder_dim": 8})  # fmt: skip
    seen: dict[str, torch.Tensor] = {}
    for name, stain in (("off", default_stain()), ("on", {"augment_sigma": 0.2})):
        task = task_class("pixnet")(TrainConfig(**cfg, stain=stain), device=torch.device("cpu"))
        model = task.build([sample_section], ["MALAT1", "B2M", "ACTB", "COL1A1"])
        assert (task.stain_generator is None) == (name == "off")
        batch = next(iter(task.batches(0)))

        def capture(x, name=name):
            seen[name] = x.clone()
            raise StopIteration

        model.features = capture  # type: ignore[method-assign]
        with pytest.raises(StopIteration):
            task.step(model, batch)
        seen[f"{name}_jitter_state"] = task.generator.get_state()
    assert torch.equal(seen["off_jitter_state"], seen["on_jitter_state"])
    assert not torch.equal(seen["off"], seen["on"])
    assert float((seen["off"] - seen["on"]).abs().max()) < 0.5


# ------------------------------------------------------------------------------ normalisation
def test_normalised_run_records_its_reference(normalised_run: Path, sample_section) -> None:
    meta = _meta(normalised_run)
    stain = meta["config"]["stain"]
    assert stain["normalize"] == "macenko" and stain["augment_sigma"] == 0.0
    ref = stain["reference"]
    assert ref["method"] == "macenko" and np.asarray(ref["HERef"]).shape == (3, 2)
    assert "source" not in ref  # the reference only, never a slide's source stains
    assert meta["input"]["stain"] == stain
    # the reference is the training sections' own: fitted again, it is the same
    from napari_histoexpress.training.stain_fit import fit_run_stain

    fitted, normalizers = fit_run_stain(
        StainConfig(normalize="macenko"), [sample_section.pair()], ["s"], mpp=4.0, size_px=64,
        log=lambda s: None,
    )  # fmt: skip
    assert fitted.to_dict() == stain
    assert normalizers[0].has_source  # one estimate of the section's stains


def test_training_crops_are_normalised_as_read(sample_section) -> None:
    """The task's dataset normalises each uint8 crop with its section's normaliser (a
    function of the colour, so it commutes with the flips); a section whose crops hold
    too little tissue falls back to per-crop estimates."""
    from napari_histoexpress.training.spot_crops import SpotCropDataset
    from napari_histoexpress.training.stain_fit import section_normalizer
    from napari_histoexpress.training.tasks import task_class

    cfg = TrainConfig(n_genes=2, mpp=4.0, crop_um=256.0, device="cpu",
                      model_config={"backbone": "resnet18", "decoder_dim": 8},
                      stain={"normalize": "reinhard"})  # fmt: skip
    task = task_class("pixnet")(cfg, device=torch.device("cpu"), log=lambda s: None)
    task.build([sample_section], ["MALAT1", "B2M"])
    assert task.dataset.stain is not None and task.dataset.stain[0].has_source
    fitted = task.fitted_stain()
    assert fitted is not None and fitted.reference is not None
    raw = SpotCropDataset([sample_section.pair()], ["MALAT1", "B2M"], task.dataset.config)
    for item in (0, 100):
        expected = task.dataset.stain[0].apply_numpy(raw.crop(item).image)
        np.testing.assert_array_equal(task.dataset.crop(item).image, expected)
    logs: list[str] = []
    blank = [np.full((64, 64, 3), 245, np.uint8)] * 4
    base = fitted.normalizer()
    assert section_normalizer(base, blank, name="glass", log=logs.append) is base
    assert logs and "glass" in logs[0]


def test_predicting_with_the_run_applies_its_normaliser(
    normalised_run: Path, tmp_path: Path
) -> None:
    from napari_histoexpress.inference.predict_run import predict_with_run
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.models.checkpoint import load_checkpoint

    slide = sample_paths()["image"]
    predict_with_run(normalised_run, slide, tmp_path / "n.zarr", tile_px=128, device="cpu")
    store = DenseMapStore.open(tmp_path / "n.zarr")
    ref = _meta(normalised_run)["config"]["stain"]["reference"]
    assert store.attrs["stain"] == ref  # part of the resume check
    recorded = store.provenance["stain_normalizer"]
    assert {k: v for k, v in recorded.items() if k != "source"} == ref
    assert StainNormalizer.from_dict(recorded).has_source  # the slide's own stains
    assert store.provenance["input"]["stain"]["normalize"] == "macenko"
    # a loaded model carries its stain settings; without them it gives another map
    model, _ = load_checkpoint(normalised_run)
    assert model.input_spec().stain == _meta(normalised_run)["input"]["stain"]
    model.stain = None
    predict_slide(model, slide, tmp_path / "raw.zarr", model_mpp=4.0, tile_px=128, device="cpu")
    raw = DenseMapStore.open(tmp_path / "raw.zarr")
    assert "stain_normalizer" not in raw.provenance and raw.attrs["stain"] is None
    a, b = np.asarray(store.features_level(0)), np.asarray(raw.features_level(0))
    assert a.shape == b.shape and not np.allclose(a, b)


def test_evaluation_normalises_the_held_out_section(
    normalised_run: Path, small_section, monkeypatch
) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training import evaluate, stain_fit

    held_out = copy.copy(small_section)  # under another name
    held_out.name = "held_out"
    model, meta = load_checkpoint(normalised_run)
    calls: list[str] = []
    original = stain_fit.section_normalizer

    def spy(base, crops, *, name="", log=print):
        calls.append(name)
        return original(base, crops, name=name, log=log)

    monkeypatch.setattr(stain_fit, "section_normalizer", spy)
    report = evaluate.evaluate_run(normalised_run, [held_out], device="cpu", progress=False)
    assert calls == ["held_out"]  # its own source stains, from its own crops
    # without the run's stain settings: other predictions, so other metrics
    from napari_histoexpress.expression import expression_matrix
    from napari_histoexpress.metrics import evaluate_predictions

    plain = {**meta, "config": {**meta["config"], "stain": None}, "input": {}}
    without = evaluate.predict_section_spots(model, plain, held_out, device="cpu")
    assert calls == ["held_out"]
    genes = meta["genes"]
    true = expression_matrix(held_out.adata, genes, 1e4)
    res = report["sections"]["held_out"]
    assert np.isfinite(res["mse"])
    assert res["mse"] != pytest.approx(evaluate_predictions(without, true, genes)["mse"], 1e-9)


def test_tiles_are_seamless_and_a_shifted_slide_comes_closer(
    tissue: np.ndarray, tmp_path: Path
) -> None:
    """With the slide's stains fixed once, the tiled map equals the whole normalised image's
    map; a stain-shifted copy of the slide gives a map closer to the original's than it
    does without normalisation."""
    model = TinyDense()
    stain = StainConfig(normalize="macenko").with_reference(tissue[64:192, 64:192]).to_dict()
    tiled, store = _predict(model, tissue, tmp_path / "tiled.zarr", stain)
    whole, whole_store = _predict(model, tissue, tmp_path / "whole.zarr", stain, tile_px=256)
    normalizer = StainNormalizer.from_dict(store.provenance["stain_normalizer"])
    assert normalizer.has_source
    assert whole_store.provenance["stain_normalizer"] == store.provenance["stain_normalizer"]
    # the reference: the whole white-padded image normalised, then the model at once
    pad = 16
    padded = np.full((256 + 2 * pad, 256 + 2 * pad, 3), 255, np.uint8)
    padded[pad:-pad, pad:-pad] = tissue
    x = torch.from_numpy(normalizer.apply_numpy(padded)).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(TinyDense.MEAN).view(1, 3, 1, 1)) / torch.tensor(TinyDense.STD).view(
        1, 3, 1, 1
    )
    with torch.inference_mode():
        ref = model.features(x)[0].numpy()
    c = pad // 2
    ref = np.moveaxis(ref[:, c : c + 128, c : c + 128], 0, -1)
    np.testing.assert_allclose(tiled, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4)

    shifted = _shifted(tissue)
    plain, _ = _predict(model, tissue, tmp_path / "plain.zarr", None)
    plain_shifted, _ = _predict(model, shifted, tmp_path / "plain_shifted.zarr", None)
    norm_shifted, _ = _predict(model, shifted, tmp_path / "norm_shifted.zarr", stain)
    without = np.abs(plain_shifted - plain).mean()
    with_norm = np.abs(norm_shifted - tiled).mean()
    assert with_norm < 0.6 * without


def test_resume_checks_the_stain_reference(tissue: np.ndarray, tmp_path: Path) -> None:
    from napari_histoexpress.errors import StoreMismatchError

    model = TinyDense()
    macenko = StainConfig(normalize="macenko").with_reference(tissue).to_dict()
    reinhard = StainConfig(normalize="reinhard").with_reference(tissue).to_dict()
    _predict(model, tissue, tmp_path / "m.zarr", macenko)
    _predict(model, tissue, tmp_path / "m.zarr", macenko)  # same reference: resumes
    for other in (reinhard, None):
        with pytest.raises(StoreMismatchError, match="stain"):
            _predict(model, tissue, tmp_path / "m.zarr", other)
    with pytest.raises(Exception, match="no fitted reference"):
        _predict(model, tissue, tmp_path / "x.zarr", {"normalize": "macenko"})


# ------------------------------------------------------------------------------ ridge, cv
def test_ridge_normalises_its_patches_and_ignores_augmentation(
    small_section, tmp_path: Path
) -> None:
    from napari_histoexpress.training.evaluate import evaluate_run
    from napari_histoexpress.training.train import train

    base = dict(model="ridge", n_genes=4, device="cpu",
                model_config={"n_components": 8, "patch_um": 256.0, "input_px": 64,
                              "out_indices": [1, 2], "cv_folds": 2, "alphas": [1.0]})  # fmt: skip
    train([small_section], tmp_path / "plain", TrainConfig(**base), progress=False,
          log=lambda s: None)  # fmt: skip
    logs: list[str] = []
    stain = {"normalize": "reinhard", "augment_sigma": 0.05, "augment_bias": 0.05}
    cfg = TrainConfig(**base, stain=stain)
    train([small_section], tmp_path / "norm", cfg, progress=False, log=logs.append)
    assert any("augmentation ignored" in line for line in logs)
    meta = _meta(tmp_path / "norm")
    assert meta["config"]["stain"]["reference"]["method"] == "reinhard"
    assert meta["input"]["stain"] == meta["config"]["stain"]
    assert not _same_weights(tmp_path / "plain", tmp_path / "norm")  # other features
    res = evaluate_run(tmp_path / "norm", [small_section], progress=False)
    assert np.isfinite(res["sections"]["synthetic"]["pcc_mean"])


def test_cv_reuses_a_fold_whose_reference_it_fitted(tmp_path: Path) -> None:
    from napari_histoexpress.training.cross_validation import _same_run

    cfg = TrainConfig(n_genes=3, stain={"normalize": "reinhard"})
    saved = cfg.to_dict()
    saved["stain"] = {**saved["stain"], "reference": {"method": "reinhard"}}  # as fitted
    (tmp_path / "config.json").write_text(json.dumps({"config": saved, "genes": ["A"]}))
    assert _same_run(tmp_path, cfg, ["A"])
    assert not _same_run(tmp_path, TrainConfig(n_genes=3, stain={"normalize": "macenko"}), ["A"])
    assert not _same_run(tmp_path, TrainConfig(n_genes=3), ["A"])
