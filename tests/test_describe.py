"""``histoexpress info`` describes slides, .h5ad files, map stores and run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from napari_histoexpress.cli import main
from napari_histoexpress.demo import bundled_demo_run
from napari_histoexpress.describe import describe_path
from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io.synthetic import sample_paths


def test_h5ad_spots_genes_mpp_library(capsys) -> None:
    path = sample_paths()["spots"]
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    adata = ad.read_h5ad(path)
    assert f"{adata.n_obs:,} spots x {adata.n_vars:,} genes" in text
    assert "raw counts in X" in text
    assert "library synthetic: 0.5 µm/px (synthetic)" in text
    assert "spot diameter 55 µm = 110 px" in text
    assert str(sample_paths()["image"].name) in text and "(missing)" not in text


def test_h5ad_with_a_missing_image_and_no_counts(tmp_path: Path) -> None:
    adata = ad.read_h5ad(sample_paths()["spots"])
    adata.X = adata.X.astype(np.float32) / 3.0
    adata.uns["spatial"]["synthetic"]["metadata"]["source_image_path"] = "/nowhere/x.tif"
    out = tmp_path / "x.h5ad"
    adata.write_h5ad(out)
    text = "\n".join(describe_path(out))
    assert "not raw counts" in text and "/nowhere/x.tif (missing)" in text


def _store(path: Path, done: int):
    from napari_histoexpress.inference.map_store import DenseMapStore

    genes = ["ERBB2", "CD74", "KRT19"]
    store = DenseMapStore.create(
        path,
        map_shape=(64, 96),
        feature_dim=4,
        genes=genes,
        head_W=np.ones((4, 3), np.float32),
        head_b=np.zeros(3, np.float32),
        map_mpp=8.0,
        chunk=32,
        attrs={"provenance": {"model": "pixnet", "run_dir": "/runs/r1"}},
    )
    for k in range(done):  # a 2 x 3 tile grid
        store.mark_done((k // 3, k % 3))
    if done == 6:
        store.set_status("complete")
    return store


def test_map_store_partial_and_complete(tmp_path: Path, capsys) -> None:
    _store(tmp_path / "p.zarr", done=2)
    assert main(["info", str(tmp_path / "p.zarr")]) == 0
    text = capsys.readouterr().out
    assert "dense-map store, partial (4 of 6 tiles pending" in text
    assert "3 genes: ERBB2, CD74, KRT19" in text
    assert "model: pixnet from run /runs/r1" in text
    assert "96 x 64 px, 8 µm/px, 4 features" in text
    _store(tmp_path / "c.zarr", done=6)
    text = "\n".join(describe_path(tmp_path / "c.zarr"))
    assert "dense-map store, complete" in text and "0 pending of 6" in text


def test_run_folder_settings_and_metrics(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(bundled_demo_run(), run)
    meta = json.loads((run / "config.json").read_text())
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "run folder, pixnet (resnet18)" in text
    assert f"{len(meta['genes'])} genes: {meta['genes'][0]}" in text
    cfg = meta["config"]
    assert f"epochs {cfg['epochs']}" in text and f"crops/epoch {cfg['crops_per_epoch']}" in text
    assert "not evaluated" in text
    report = {"sections": {"C5": {"pcc_mean": 0.25, "pcc_heg50": 0.31, "mse": 0.4, "n_spots": 9}}}
    (run / "metrics.json").write_text(json.dumps(report))
    text = "\n".join(describe_path(run))
    assert "C5: pcc_mean 0.250  pcc_heg50 0.310  mse 0.400  (9 spots)" in text
    assert "not evaluated" not in text and "training section" not in text
    report["sections"]["synthetic"] = report["sections"]["C5"]  # the run's training section
    (run / "metrics.json").write_text(json.dumps(report))
    text = "\n".join(describe_path(run))
    assert "synthetic: pcc_mean 0.250  pcc_heg50 0.310  mse 0.400  (9 spots) (a training" in text


def test_slide_and_refusals(tmp_path: Path) -> None:
    lines = describe_path(sample_paths()["image"])
    assert "slide, 3072 x 3072 px, 0.5 µm/px (ome)" in lines[0]
    assert any(line.strip().startswith("level 1:") for line in lines)
    (tmp_path / "empty").mkdir()
    for bad, problem in (
        (tmp_path / "none.h5ad", "not found"),
        (tmp_path / "empty", "not a map store"),
    ):
        with pytest.raises(InputFileError, match=problem) as info:
            describe_path(bad)
        assert str(bad) in str(info.value)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(InputFileError, match="info describes slides"):
        describe_path(notes)
    fake = tmp_path / "fake.h5ad"
    fake.write_text("not hdf5")
    with pytest.raises(InputFileError, match=r"not a readable \.h5ad"):
        describe_path(fake)


def test_run_folder_kind_and_input_spec(tmp_path: Path) -> None:
    """Newer runs record the model kind and input spec; info shows them with the registry's
    one-line description. Older ones (the bundled demo run) say the spec is not recorded."""
    from napari_histoexpress.models.checkpoint import save_checkpoint
    from napari_histoexpress.models.pixnet import PixNet, PixNetConfig
    from napari_histoexpress.models.registry import describe_models

    model = PixNet(PixNetConfig(n_genes=2, out_indices=(1, 2), decoder_dim=8))
    save_checkpoint(tmp_path / "run", model, {}, ["A", "B"], {"microns_per_pixel": 2.0})
    text = "\n".join(describe_path(tmp_path / "run"))
    assert f"kind: dense map — {describe_models()['pixnet']}" in text
    assert "input: 2 µm/px, stride 4, windows multiple of 8 px, RGB normalised by the model" in text
    assert "mean 0.485 0.456 0.406, std 0.229 0.224 0.225" in text
    assert "training:" not in text  # no settings recorded
    old = "\n".join(describe_path(bundled_demo_run()))
    assert "kind: dense map" in old and "input: 4 µm/px (input spec not recorded" in old
