"""Small dense models for tests (importable from any test: ``tests/`` is on pytest's
``pythonpath``): :class:`ToyDense`, the DenseModel boilerplate, and :class:`TinyDense`, a
random stride-2 conv net with a 13 px receptive field (so tiling seams would show); and
:data:`TINY_HAGE`, :data:`TINY_DKAN` and :data:`TINY_ALIGN_ST`, the settings of a tiny HAGE,
DKAN and ALIGN-ST; :func:`save_tiny_pixnet_run`, a random-init PixNet run folder;
:func:`random_slide_store`, a random map store over a slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_histoexpress.models.base import DenseModel, InputSpec


def save_tiny_pixnet_run(run: Path, genes: list[str], mpp: float) -> Path:
    """A run folder of a random-init (seed 0) PixNet with an 8-channel decoder at ``mpp``
    µm/px: a real checkpoint, quick to load and to predict with."""
    from napari_histoexpress.models.checkpoint import save_checkpoint
    from napari_histoexpress.models.pixnet import PixNet, PixNetConfig

    torch.manual_seed(0)
    model = PixNet(PixNetConfig(n_genes=len(genes), out_indices=(1, 2), decoder_dim=8)).eval()
    save_checkpoint(run, model, {"note": "test"}, genes, extra={"microns_per_pixel": mpp})
    return run


#: a tiny HAGE config for tests: random-init ResNet18 levels 1-2 on 32 px patches, d = 32
TINY_HAGE = {
    "backbone": "resnet18",
    "pretrained": None,
    "out_indices": [1, 2],
    "patch_um": 64.0,
    "input_px": 32,
    "dim": 32,
    "heads": 2,
    "head_dim": 16,
    "k_expression": 4,
    "min_cluster_members": 2,
    "min_clusters": 2,
}

#: a tiny DKAN config for tests: the same encoder, 2 × 2 patch tokens, d = 32
TINY_DKAN = {
    "backbone": "resnet18",
    "pretrained": None,
    "out_indices": [1, 2],
    "patch_um": 64.0,
    "input_px": 32,
    "token_grid": 2,
    "dim": 32,
    "heads": 2,
}

#: a tiny ALIGN-ST config for tests: the same encoder, an 8 × 8 nuclei grid, d = 32
TINY_ALIGN_ST = {
    "backbone": "resnet18",
    "pretrained": None,
    "out_indices": [1, 2],
    "patch_um": 64.0,
    "input_px": 32,
    "nuclei_grid": 8,
    "mask_channels": [8, 8, 16, 16],
    "mask_strides": [1, 2, 1, 2, 1],
    "dim": 32,
    "embed_dim": 16,
    "heads": 2,
    "max_tokens": 16,
}

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class ToyDense(nn.Module, DenseModel):
    """An unregistered DenseModel for tests: the caller normalises with MEAN/STD, the
    head is ``self.head`` (``nn.Linear``)."""

    MEAN = MEAN
    STD = STD

    @classmethod
    def contract_config(cls) -> dict:
        return {}

    stride = 1
    dim = 1
    receptive_field: float | None = None
    head: nn.Linear

    @classmethod
    def from_config(cls, config):  # type: ignore[override]
        return cls()

    def config_dict(self) -> dict:
        return {}

    @property
    def feature_stride(self) -> int:
        return self.stride

    @property
    def feature_dim(self) -> int:
        return self.dim

    def input_spec(self) -> InputSpec:
        return InputSpec(
            mpp=self.working_mpp, mean=MEAN, std=STD, stride=self.stride,
            input_multiple=self.stride, receptive_field_px=self.receptive_field,
        )  # fmt: skip

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.head.weight.detach().double().numpy().T.copy(),
            self.head.bias.detach().double().numpy().copy(),
        )


class TinyDense(ToyDense):
    """A random conv net with stride 2 and a 13 px receptive field (so seams would show)."""

    stride = 2
    dim = 6
    receptive_field = 13

    def __init__(self, n_genes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, self.feature_dim, 3, padding=1),
        )
        self.head = nn.Linear(self.feature_dim, n_genes)
        self.genes = [f"G{i}" for i in range(n_genes)]
        self.n_tiles_seen = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.n_tiles_seen += x.shape[0]
        return self.body(x)


#: the genes :func:`align_st_sample_run` trains on (the sample's collagens, keratins, ...)
ALIGN_ST_SEEN = ["COL1A1", "COL1A2", "COL3A1", "FN1", "KRT8", "KRT18", "EPCAM", "PTPRC"]


def align_st_sample_run(root, epochs: int = 20):  # type: ignore[no-untyped-def]
    """A tiny ALIGN-ST run on the synthetic sample (``root/run``, trained on
    :data:`ALIGN_ST_SEEN`) and its whole-slide map predicted from the run as a user does
    (``root/map.zarr``); returns the sample's section."""
    from napari_histoexpress.inference.predict_run import predict_with_run
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.config import TrainConfig
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.train import train

    section = load_section(sample_paths()["spots"])
    cfg = TrainConfig.for_model(
        "align-st",
        device="cpu",
        epochs=epochs,
        lr=2e-3,
        feature_cache=str(root / "features"),
        model_config=dict(TINY_ALIGN_ST),
    )
    train([section], root / "run", cfg, genes=ALIGN_ST_SEEN, progress=False, log=lambda _: None)
    predict_with_run(root / "run", sample_paths()["image"], root / "map.zarr", device="cpu")
    return section


def random_slide_store(
    folder: Path,
    slide: dict,
    genes: list[str],
    *,
    map_mpp: float = 8.0,
    c: int = 4,
    provenance: dict | None = None,
    unpredicted_corner: bool = False,
):  # type: ignore[no-untyped-def]
    """A complete random store ``folder/m.zarr`` covering ``slide`` (``{"path", "shape",
    "mpp"}``, kept in its attrs), chunks of 64 px; with ``unpredicted_corner`` the top-left
    5 × 7 map pixels are NaN (never predicted)."""
    from napari_histoexpress.inference.map_store import DenseMapStore

    rng = np.random.default_rng(0)
    h, w = (int(np.ceil(s * slide["mpp"] / map_mpp)) for s in slide["shape"])
    store = DenseMapStore.create(
        folder / "m.zarr", map_shape=(h, w), feature_dim=c, genes=genes,
        head_W=rng.normal(size=(c, len(genes))), head_b=rng.normal(size=len(genes)),
        map_mpp=map_mpp, chunk=64,
        attrs={"slide": slide, "provenance": provenance or {"run_dir": "/runs/r1",
                                                            "model": "pixnet"}},
    )  # fmt: skip
    feats = rng.normal(size=(h, w, c)).astype(np.float32)
    if unpredicted_corner:
        feats[:5, :7] = np.nan
    store.write_all(feats)
    return store
