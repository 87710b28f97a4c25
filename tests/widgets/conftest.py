"""Fixtures of the widget tests: the sample slide and a real dense map predicted on it.

The map comes from a tiny random-init PixNet (ResNet18 stem + layer1–2, decoder 16 channels,
4 µm/px working resolution): real code paths end to end, a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

GENES = ["ERBB2", "KRT19", "PTPRC", "COL1A1", "MKI67", "ACTA2"]


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    from napari_histoexpress.io.synthetic import sample_paths

    return Path(sample_paths()["image"])


@pytest.fixture(scope="session")
def tiny_model():
    import torch

    from napari_histoexpress.models.pixnet import PixNet, PixNetConfig

    torch.manual_seed(0)
    cfg = PixNetConfig(n_genes=len(GENES), out_indices=(1, 2), decoder_dim=16)
    model = PixNet(cfg).eval()
    model.genes = list(GENES)
    return model


@pytest.fixture(scope="session")
def _sample_map_master(tmp_path_factory: pytest.TempPathFactory, sample_slide: Path, tiny_model):
    from napari_histoexpress.inference.predict_slide import predict_slide

    out = tmp_path_factory.mktemp("maps") / "sample.zarr"
    predict_slide(
        tiny_model, sample_slide, out, model_mpp=4.0, device="cpu", genes=GENES,
        tile_px=128, progress=None,
    )  # fmt: skip
    return out


@pytest.fixture
def sample_map(tmp_path: Path, _sample_map_master: Path) -> Path:
    """A complete dense-map store of the sample slide (a fresh copy per test)."""
    out = tmp_path / "sample.zarr"
    shutil.copytree(_sample_map_master, out)
    return out


@pytest.fixture
def slide_copy(tmp_path: Path, sample_slide: Path) -> Path:
    """The sample slide copied into a writable folder (its project folder goes beside it)."""
    out = tmp_path / "slides" / sample_slide.name
    out.parent.mkdir()
    shutil.copy(sample_slide, out)
    return out


@pytest.fixture(autouse=True)
def _isolated_projects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Project folders of read-only slides go to a per-test home, never ~/.cache."""
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path / "histoexpress_home"))
