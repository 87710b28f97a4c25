"""Every failure a user can cause ends in one line ``error: <file or flag>: <problem>``, exit 2.

Each test runs one sub-command the way a newcomer gets it wrong (issue 9): wrong or missing
inputs, unwritable outputs, genes that do not match, bad numbers. Warnings print as one
``warning: ...`` line; ``--help`` shows defaults and an example.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_histoexpress.cli import build_parser, main
from napari_histoexpress.demo import bundled_demo_run
from napari_histoexpress.io.synthetic import sample_paths


def _one_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """The single stderr line of a failed command (tqdm and warnings aside), checked to
    start with ``error: `` and to contain every needle."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _run(argv: list[str]) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def spots_h5ad() -> Path:
    return sample_paths()["spots"]


@pytest.fixture()
def no_malat1(tmp_path: Path, spots_h5ad: Path) -> Path:
    """The sample's spots without MALAT1 (a gene of the bundled run), image path absolute."""
    adata = ad.read_h5ad(spots_h5ad)
    adata = adata[:, [g for g in adata.var_names if g != "MALAT1"]].copy()
    meta = adata.uns["spatial"]["synthetic"]["metadata"]
    meta["source_image_path"] = str(sample_paths()["image"])
    out = tmp_path / "C2.h5ad"
    adata.write_h5ad(out)
    return out


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_gene_mismatch_names_the_section(no_malat1: Path, capsys) -> None:
    code = _run(["evaluate", "--run", bundled_demo_run(), "--data", no_malat1])
    assert code == 2
    _one_error(capsys, str(no_malat1), "MALAT1", "1 of the 39 genes")


def test_evaluate_bad_run_data_and_json(tmp_path: Path, spots_h5ad: Path, capsys) -> None:
    assert _run(["evaluate", "--run", tmp_path, "--data", spots_h5ad]) == 2
    _one_error(capsys, str(tmp_path), "config.json")
    missing = tmp_path / "C9.h5ad"
    assert _run(["evaluate", "--run", bundled_demo_run(), "--data", missing]) == 2
    _one_error(capsys, str(missing), "not found")
    out = tmp_path / "nofolder" / "m.json"
    assert _run(["evaluate", "--run", bundled_demo_run(), "--data", spots_h5ad, "--json", out]) == 2
    _one_error(capsys, str(out), "does not exist")


def test_evaluate_never_writes_into_the_bundled_run(monkeypatch, spots_h5ad: Path) -> None:
    import napari_histoexpress.training.evaluate as evaluate
    import napari_histoexpress.training.sections as sections

    report = {"run": "x", "model": "pixnet", "sections": {}, "mean": {}}
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: report)
    monkeypatch.setattr(sections, "load_sections", lambda paths: [])
    run = bundled_demo_run()
    assert _run(["evaluate", "--run", run, "--data", spots_h5ad]) == 0
    assert not (run / "metrics.json").exists()


# ------------------------------------------------------------------------------ predict
def test_predict_into_an_unusable_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    slide = sample_paths()["image"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    out = a_file / "C2.zarr"
    assert _run(["predict", "--run", bundled_demo_run(), "--slide", slide, "--out", out]) == 2
    _one_error(capsys, str(out), "not a folder")

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: Path(p) != read_only and real_access(p, m, **k)
    )
    out = read_only / "C2.zarr"
    assert _run(["predict", "--run", bundled_demo_run(), "--slide", slide, "--out", out]) == 2
    _one_error(capsys, str(out), "cannot write")
    assert not out.exists()


def test_an_os_error_deep_down_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """A permission error raised by a library (zarr, h5py) is reported with its file."""
    import napari_histoexpress.inference.predict_run as predict_run

    target = tmp_path / "C2.zarr" / "features" / "c" / "0"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(predict_run, "predict_with_run", refuse)
    code = _run(
        ["predict", "--run", bundled_demo_run(), "--slide", sample_paths()["image"],
         "--out", tmp_path / "C2.zarr"]
    )  # fmt: skip
    assert code == 2
    _one_error(capsys, str(target), "permission denied")


def test_predict_needs_the_slide_mpp_and_says_the_flag(tmp_path: Path, capsys) -> None:
    png = tmp_path / "tissue.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(png)
    out = tmp_path / "t.zarr"
    assert _run(["predict", "--run", bundled_demo_run(), "--slide", png, "--out", out]) == 2
    _one_error(capsys, str(png), "--mpp")


def test_predict_errors_name_no_python_argument(tmp_path: Path, capsys) -> None:
    png = tmp_path / "tissue.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(png)
    out = tmp_path / "t.zarr"
    assert _run(["predict", "--run", bundled_demo_run(), "--slide", png, "--out", out]) == 2
    line = _one_error(capsys, "--mpp")
    assert "mpp=" not in line and "slide_mpp" not in line


def test_predict_bad_tile_size_and_unresumable_store(tmp_path: Path, capsys) -> None:
    slide = sample_paths()["image"]
    out = tmp_path / "s.zarr"
    base = ["predict", "--run", bundled_demo_run(), "--slide", slide, "--out", out]
    assert _run([*base, "--tile-px", "500"]) == 2
    line = _one_error(capsys, "--tile-px 500", "multiple")
    assert "tile_px" not in line
    assert _run([*base, "--tile-px", "512"]) == 0
    capsys.readouterr()
    assert _run([*base, "--tile-px", "256"]) == 2
    line = _one_error(capsys, str(out), "cannot resume", "--restart")
    assert "resume=" not in line
    assert _run([*base, "--tile-px", "256", "--restart"]) == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--tile-px", "0"), ("--batch-size", "-1"), ("--mpp", "inf"), ("--mpp", "abc")],
)
def test_bad_numbers_are_usage_errors(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "--run", "r", "--slide", "s.tif", "--out", "o.zarr", flag, value])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err


# ------------------------------------------------------------------------------ train / cv
def test_train_refuses_bad_inputs_before_any_work(tmp_path: Path, spots_h5ad: Path, capsys) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a section")
    assert _run(["train", "--data", notes, "--out", tmp_path / "run"]) == 2
    _one_error(capsys, str(notes), ".h5ad")
    assert _run(["train", "--data", spots_h5ad, "--genes", "0", "--out", tmp_path / "r"]) == 2
    _one_error(capsys, "--genes 0")
    panel = tmp_path / "panel.txt"
    panel.write_text("ERBB2\nNOTAGENE\n")
    assert _run(["train", "--data", spots_h5ad, "--genes", panel, "--out", tmp_path / "r"]) == 2
    _one_error(capsys, str(panel), "NOTAGENE")
    a_file = tmp_path / "run.txt"
    a_file.write_text("x")
    assert _run(["train", "--data", spots_h5ad, "--out", a_file]) == 2
    _one_error(capsys, str(a_file), "not a folder")
    for flag in ("--epochs", "--lr", "--crops-per-epoch", "--batch-size"):
        with pytest.raises(SystemExit):
            main(["train", "--data", str(spots_h5ad), "--out", "r", flag, "0"])
        assert flag in capsys.readouterr().err


def test_gene_count_and_backbone_are_checked(tmp_path: Path, spots_h5ad: Path, capsys) -> None:
    out = tmp_path / "r"
    assert _run(["train", "--data", spots_h5ad, "--genes", "300", "--out", out]) == 2
    _one_error(capsys, "--genes 300", "share only 39 genes")
    assert _run(["train", "--data", spots_h5ad, "--backbone", "resnet81", "--out", out]) == 2
    _one_error(capsys, "--backbone resnet81", "resnet18")
    assert not out.exists()


def test_default_gene_count_shrinks_to_the_shared_genes(spots_h5ad: Path) -> None:
    from napari_histoexpress.cli import _fit_gene_count, _train_config
    from napari_histoexpress.training.sections import load_section

    args = build_parser().parse_args(["train", "--data", str(spots_h5ad), "--out", "r"])
    config = _train_config(args)
    assert config.n_genes == 250
    with pytest.warns(UserWarning, match="share only 39 genes"):
        fitted = _fit_gene_count(args, config, [load_section(spots_h5ad)])
    assert fitted.n_genes == 39


def test_unavailable_device_names_the_flag(tmp_path: Path, spots_h5ad: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert _run(["train", "--data", spots_h5ad, "--device", "cuda", "--out", tmp_path / "r"]) == 2
    _one_error(capsys, "--device cuda", "not available")


def test_cv_needs_two_groups(tmp_path: Path, spots_h5ad: Path, capsys) -> None:
    code = _run(["cv", "--data", spots_h5ad, "--folds", "by-patient", "--out", tmp_path / "cv"])
    assert code == 2
    _one_error(capsys, "--folds by-patient", "two")


# ------------------------------------------------------------------------------ spots, info, demo
def test_spots_info_and_demo_errors(tmp_path: Path, capsys) -> None:
    circles = tmp_path / "c.csv"
    circles.write_text("x_um,y_um,diameter_um\n10,10,55\n")
    assert (
        _run(["spots", "--map", tmp_path, "--circles", circles, "--out", tmp_path / "o.h5ad"]) == 2
    )
    _one_error(capsys, str(tmp_path))
    for bad in (tmp_path / "missing.tif", tmp_path / "c.csv", tmp_path):
        assert _run(["info", bad]) == 2
        _one_error(capsys, str(bad))
    a_file = tmp_path / "demo.txt"
    a_file.write_text("x")
    assert _run(["demo", "--out", a_file, "--no-train"]) == 2
    _one_error(capsys, str(a_file), "not a folder")


# ------------------------------------------------------------------------------ import st
def _legacy_section(folder: Path, *, missing: int = 0, y_pitch: float = 150.0) -> list[Path]:
    """A 6 x 5 legacy-ST section (PNG, counts, spot table); ``missing`` spots lack counts."""
    rows = [
        (x, y, float(x), float(y), 100.0 + 150.0 * x, 100.0 + y_pitch * y, 1)
        for x in range(1, 7)
        for y in range(1, 6)
    ]
    table = pd.DataFrame(
        rows, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]
    )
    spots = folder / "S_selection.tsv"
    table.to_csv(spots, sep="\t", index=False)
    ids = [f"{x}x{y}" for x, y, *_ in rows][missing:]
    text = "\tA\tB\n" + "".join(f"{i}\t{k % 7}\t{k % 3}\n" for k, i in enumerate(ids))
    counts = folder / "S.tsv.gz"
    with gzip.open(counts, "wt") as fh:
        fh.write(text)
    image = folder / "S.png"
    Image.fromarray(np.full((1100, 1200, 3), 230, np.uint8)).save(image)
    return [image, counts, spots]


def _import_st(paths: list[Path], out: Path, *extra: str) -> int:
    image, counts, spots = paths
    return _run(["import", "st", "--image", image, "--counts", counts, "--spots", spots,
                 "--out", out, *extra])  # fmt: skip


def test_import_refuses_counts_of_another_section(tmp_path: Path, capsys) -> None:
    paths = _legacy_section(tmp_path, missing=20)
    out = tmp_path / "S.h5ad"
    assert _import_st(paths, out) == 2
    line = _one_error(
        capsys, str(paths[1]), str(paths[2]), "20 of its 30", "--allow-missing-counts"
    )
    assert "allow_missing_counts" not in line
    assert not out.exists()
    assert _import_st(paths, out, "--allow-missing-counts") == 0
    err = capsys.readouterr().err
    assert any(ln.startswith("warning: ") and "20 of its 30" in ln for ln in err.splitlines())
    assert ad.read_h5ad(out).n_obs == 10


def test_import_warnings_are_one_clean_line(tmp_path: Path, capsys) -> None:
    # y pitch 10 % larger than x: no single µm/px, so the µm/px stays unknown (a warning)
    paths = _legacy_section(tmp_path, missing=2, y_pitch=165.0)
    assert _import_st(paths, tmp_path / "S.h5ad") == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err and all(ln.startswith("warning: ") for ln in err), err
    assert not any("UserWarning" in ln or "cli.py" in ln or "read_legacy_st(" in ln for ln in err)
    assert any("2 selected spot(s)" in ln and str(paths[2]) in ln for ln in err)
    unknown = [ln for ln in err if "µm/px unknown" in ln]
    assert len(unknown) == 1 and "--mpp" in unknown[0] and "mpp=" not in unknown[0]


def test_import_missing_input_and_output_folder(tmp_path: Path, capsys) -> None:
    paths = _legacy_section(tmp_path)
    missing = tmp_path / "nope.jpg"
    assert _import_st([missing, *paths[1:]], tmp_path / "S.h5ad") == 2
    _one_error(capsys, str(missing), "not found")
    out = tmp_path / "typo" / "S.h5ad"
    assert _import_st(paths, out) == 2
    _one_error(capsys, str(out), "does not exist")


def test_library_log_records_print_as_one_warning_line(monkeypatch, capsys) -> None:
    import napari_histoexpress.describe as describe

    def noisy(path, mpp=None):
        logging.getLogger("somelib").warning("odd tag\nsecond line")
        return ["described"]

    monkeypatch.setattr(describe, "describe_path", noisy)
    assert main(["info", "x.tif"]) == 0
    captured = capsys.readouterr()
    assert "described" in captured.out
    assert "warning: somelib: odd tag" in captured.err.splitlines()


# ------------------------------------------------------------------------------ help
def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def _option_help(text: str, flag: str) -> str:
    """The help of one option in ``--help`` output, its wrapped lines joined."""
    options = text.split("options:", 1)[1].split("example:", 1)[0].splitlines()
    out: list[str] = []
    for line in options:
        if line.startswith("  -"):
            if out:
                break
            if line.split()[0].rstrip(",") == flag:
                out.append(line)
        elif out:
            out.append(line)
    return " ".join(" ".join(out).split())


def test_help_shows_defaults_and_an_example(capsys) -> None:
    predict = _help(["predict"], capsys)
    assert "(default: 512)" in _option_help(predict, "--tile-px")
    assert "tile side" in _option_help(predict, "--tile-px")
    assert "(default: 4)" in _option_help(predict, "--batch-size")
    train = _help(["train"], capsys)
    for flag in ("--epochs", "--lr", "--crops-per-epoch", "--batch-size"):
        text = _option_help(train, flag)
        assert "(default: " in text and len(text.split("(default")[0].split()) > 3, text
    for command in (["demo"], ["info"], ["train"], ["evaluate"], ["cv"], ["predict"], ["spots"],
                    ["import", "visium"], ["import", "st"]):  # fmt: skip
        text = _help(command, capsys)
        assert "example:" in text and f"histoexpress {' '.join(command)} " in text, command
