"""Outputs get the mode a normal write gives (``0666 & ~umask``), not mkstemp's ``0600``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from napari_histoexpress.io.export import (
    current_umask,
    write_csv_atomic,
    write_h5ad_atomic,
    write_png_atomic,
    write_text_atomic,
)


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_writers_respect_the_umask(tmp_path: Path, umask: int) -> None:
    adata = AnnData(X=np.ones((2, 2), np.float32))
    paths = [
        write_h5ad_atomic(adata, tmp_path / "a.h5ad"),
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "a.csv"),
        write_text_atomic("{}", tmp_path / "a.json"),
        write_png_atomic(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png"),
    ]
    for path in paths:
        assert _mode(path) == 0o666 & ~umask, path
    # replacing an existing file gives the same mode
    write_text_atomic("[]", tmp_path / "a.json")
    assert _mode(tmp_path / "a.json") == 0o666 & ~umask


def test_map_store_files_and_folders_respect_the_umask(tmp_path: Path, umask: int) -> None:
    from napari_histoexpress.inference.map_store import DenseMapStore

    store = DenseMapStore.create(
        tmp_path / "m.zarr",
        map_shape=(8, 8),
        feature_dim=2,
        genes=["A"],
        head_W=np.ones((2, 1), np.float32),
        head_b=np.zeros(1, np.float32),
        map_mpp=4.0,
        chunk=8,
    )
    store.write_all(np.ones((8, 8, 2), np.float32))
    entries = [store.path, *store.path.rglob("*")]
    assert any(p.is_file() for p in entries)
    for p in entries:
        assert _mode(p) == (0o777 if p.is_dir() else 0o666) & ~umask, p


def test_cli_outputs_respect_the_umask(tmp_path: Path, umask: int) -> None:
    from napari_histoexpress.cli import main
    from napari_histoexpress.demo import bundled_demo_run
    from napari_histoexpress.io.synthetic import sample_paths

    out = tmp_path / "out.zarr"
    circles = tmp_path / "spots.csv"
    circles.write_text("x_um,y_um,diameter_um\n100,100,55\n")
    args = ["predict", "--run", str(bundled_demo_run()), "--slide",
            str(sample_paths()["image"]), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(["spots", "--map", str(out), "--circles", str(circles),
                 "--out", str(tmp_path / "s.h5ad")]) == 0  # fmt: skip
    assert _mode(tmp_path / "s.h5ad") == 0o666 & ~umask
    assert _mode(out) == 0o777 & ~umask


def test_run_folder_files_respect_the_umask(tmp_path: Path, umask: int) -> None:
    from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(_bundled())
    save_checkpoint(tmp_path / "run", model, meta["config"], meta["genes"], meta["extra"])
    for name in ("config.json", "weights.safetensors"):
        assert _mode(tmp_path / "run" / name) == 0o666 & ~umask, name


def _bundled() -> Path:
    from napari_histoexpress.demo import bundled_demo_run

    return bundled_demo_run()
