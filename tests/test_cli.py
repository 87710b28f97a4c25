"""The ``histoexpress`` command as scripts use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_histoexpress.cli import main


def test_help_is_fast_and_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "napari_histoexpress.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("demo", "import", "info"):
        assert command in result.stdout


def test_building_the_parser_imports_no_model() -> None:
    """``--model``'s choices come from the registry, asked only when needed: building the
    parser (``histoexpress --help``) imports neither torch nor a model."""
    code = (
        "import sys\n"
        "from napari_histoexpress.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.startswith('timm') or "
        "m.startswith('napari_histoexpress.models')]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_model_choices_and_help_come_from_the_registry(capsys) -> None:
    from napari_histoexpress.cli import build_parser
    from napari_histoexpress.models.registry import describe_models
    from napari_histoexpress.training.tasks import trainable_models

    parser = build_parser()
    for command in ("train", "cv"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        # argparse wraps help at hyphens ("prompt-" / "aligned"): join them back
        text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
        summaries = describe_models()
        for name in trainable_models():
            assert f"{name} — {summaries[name].rstrip('.')}" in text
        assert "(default: pixnet)" in text
    for name in trainable_models():
        args = parser.parse_args(["train", "--data", "a.h5ad", "--out", "r", "--model", name])
        assert args.model == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "a.h5ad", "--out", "r", "--model", "nosuch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err
    assert all(repr(name) in err for name in trainable_models())


def test_import_st_her2st_section(her2st: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "C3.h5ad"
    code = main(
        [
            "import", "st",
            "--image", str(her2st / "images" / "C3.jpg"),
            "--counts", str(her2st / "counts" / "C3.tsv.gz"),
            "--spots", str(her2st / "spots" / "C3_selection.tsv"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "spots" in line and "genes" in line and "µm/px" in line and "dropped" in line
    adata = ad.read_h5ad(out)
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    lib = adata.uns["spatial"]["C3"]
    assert lib["metadata"]["n_dropped_spots"] > 0
    assert lib["scalefactors"]["spot_diameter_fullres"] * lib["metadata"][
        "microns_per_pixel"
    ] == pytest.approx(100)
    # raw counts are kept: integers
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    np.testing.assert_array_equal(x, np.round(x))


def test_import_st_with_user_mpp(her2st: Path, tmp_path: Path) -> None:
    out = tmp_path / "C2.h5ad"
    args = ["import", "st", "--image", str(her2st / "images" / "C2.jpg"),
            "--counts", str(her2st / "counts" / "C2.tsv.gz"),
            "--spots", str(her2st / "spots" / "C2_selection.tsv"),
            "--mpp", "0.75", "--spot-diameter-um", "100", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    meta = ad.read_h5ad(out).uns["spatial"]["C2"]["metadata"]
    assert meta["microns_per_pixel"] == pytest.approx(0.75)
    assert meta["mpp_source"] == "user"


def test_import_visium(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.h5ad"
    assert main(["import", "visium", str(shared_data / "visium_toy"), "--out", str(out)]) == 0
    assert "100 spots" in capsys.readouterr().out
    assert ad.read_h5ad(out).n_obs == 100


def test_import_errors_name_the_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.h5ad"
    code = main(["import", "visium", str(tmp_path), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "spatial" in err
    assert not out.exists()

    bogus = tmp_path / "notes.tif"
    bogus.write_text("not an image")
    assert main(["info", str(bogus)]) == 2
    assert str(bogus) in capsys.readouterr().err


def test_demo_writes_spots_and_png(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-train"]) == 0
    adata = ad.read_h5ad(out / "sample_spots.h5ad")
    assert adata.n_obs > 50 and {"ERBB2", "PTPRC", "COL1A1"} <= set(adata.var_names)
    src = Path(
        adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["metadata"]["source_image_path"]
    )
    assert src.is_absolute() and src.exists()
    from PIL import Image

    with Image.open(out / "sample_spots.png") as png:
        assert png.size[0] > 200 and png.mode == "RGB"
        rgb = np.asarray(png)
    assert rgb.std() > 5  # not a blank picture


def test_demo_trains_predicts_and_writes_heatmap(tmp_path: Path, capsys) -> None:
    from napari_histoexpress.inference.map_store import DenseMapStore

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "ERBB2 dense map vs ground truth: r =" in text and "pcc_mean" in text
    assert (out / "demo_run" / "weights.safetensors").exists()
    assert DenseMapStore.open(out / "sample.zarr").status == "complete"
    from PIL import Image

    with Image.open(out / "ERBB2_heatmap.png") as png:
        assert png.size[0] > 400
    predicted = ad.read_h5ad(out / "predicted_spots.h5ad")
    assert predicted.n_obs == 207 and np.isfinite(predicted.X).all()


def test_train_options_reach_the_config() -> None:
    from napari_histoexpress.cli import _train_config, build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["train", "--data", "a.h5ad", "--out", "run", "--backbone", "vit_tiny_patch16_224",
         "--backbone-kwargs", '{"init_values": 1e-5, "dynamic_img_size": true}',
         "--input-mean", "0.485", "0.456", "0.406", "--input-std", "0.229", "0.224", "0.225",
         "--precision", "bf16"]
    )  # fmt: skip
    cfg = _train_config(args)
    assert cfg.precision == "bf16"
    assert cfg.model_config["backbone_kwargs"] == {"init_values": 1e-5, "dynamic_img_size": True}
    assert cfg.model_config["mean"] == [0.485, 0.456, 0.406]
    assert cfg.model_config["std"] == [0.229, 0.224, 0.225]
    plain = _train_config(parser.parse_args(["train", "--data", "a.h5ad", "--out", "run"]))
    assert plain.precision == "auto" and "backbone_kwargs" not in plain.model_config


@pytest.mark.parametrize("bad", ["{init_values: 1}", "[1, 2]"])
def test_backbone_kwargs_must_be_a_json_object(bad: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--data", "a.h5ad", "--out", "run", "--backbone-kwargs", bad])
    assert "--backbone-kwargs" in capsys.readouterr().err


def test_ridge_on_a_vit_through_the_cli(tmp_path: Path, capsys) -> None:
    """The HEST-style baseline on a UNI-style ViT, trained and evaluated by the command."""
    import json

    from napari_histoexpress.io.synthetic import sample_paths

    spots = str(sample_paths()["spots"])
    run = tmp_path / "ridge_vit"
    code = main(
        ["train", "--model", "ridge", "--data", spots, "--genes", "5", "--out", str(run),
         "--backbone", "vit_tiny_patch16_224",
         "--backbone-kwargs", '{"init_values": 1e-5, "dynamic_img_size": true}',
         "--input-mean", "0.485", "0.456", "0.406", "--input-std", "0.229", "0.224", "0.225"]
    )  # fmt: skip
    assert code == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "ridge"
    built = saved["model_config"]  # what the model is rebuilt from
    assert built["backbone"] == "vit_tiny_patch16_224"
    assert built["backbone_kwargs"] == {"init_values": 1e-5, "dynamic_img_size": True}
    assert built["mean"] == [0.485, 0.456, 0.406]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data", spots, "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["sections"] and all(
        r["n_genes"] == 5 and np.isfinite(r["mse"]) for r in metrics["sections"].values()
    )
    # the evaluation is recorded in the run, and `info` shows it
    assert json.loads((run / "metrics.json").read_text()) == metrics
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "run folder, ridge (vit_tiny_patch16_224)" in text
    name, res = next(iter(metrics["sections"].items()))
    assert f"{name}: pcc_mean {res['pcc_mean']:.3f}" in text


def test_cv_train_config_is_what_the_cv_command_parses() -> None:
    """Benchmarks build their runs through the CLI's parser (``cli.cv_train_config``)."""
    from napari_histoexpress.cli import cv_train_config

    cfg = cv_train_config(["--model", "ridge", "--pretrained", "none", "--genes", "250"])
    assert (cfg.model, cfg.n_genes, cfg.model_config) == ("ridge", 250, {"pretrained": None})
    lite = cv_train_config(["--backbone", "tf_efficientnet_lite0", "--pretrained", "imagenet"])
    assert lite.model_config == {"backbone": "tf_efficientnet_lite0", "pretrained": "imagenet"}
    with pytest.raises(SystemExit):
        cv_train_config(["--epochs", "0"])
    with pytest.raises(SystemExit, match="--genes"):
        cv_train_config(["--genes", "0"])
