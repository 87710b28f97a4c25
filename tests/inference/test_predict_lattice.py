"""Spot models on a patch lattice → the dense-map store (predict_lattice, predict_with_run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_lattice import plan_lattice, predict_lattice
from napari_histoexpress.inference.predict_run import predict_with_run
from napari_histoexpress.io.slides import open_slide, read_region_at_mpp
from napari_histoexpress.models.base import InputSpec, LatticeNodes, SpotInputs, SpotModel

#: the tiny ridge of tests/training/test_train.py, on a small ResNet18 (no CV)
RIDGE = {
    "backbone": "resnet18",
    "out_indices": [1, 2],
    "n_components": 8,
    "patch_um": 64.0,
    "input_px": 32,
    "alphas": [1.0],
}
SLIDE_MPP = 0.5  # the synthetic sample's level 0
PATCH_UM = 64.0
PITCH_UM = 32.0  # the default: half the patch


@pytest.fixture(scope="module")
def sample_slide() -> Path:
    from napari_histoexpress.io.synthetic import sample_paths

    return Path(sample_paths()["image"])


@pytest.fixture(scope="module")
def ridge_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.train import TrainConfig, train

    section = load_section(sample_paths()["spots"])
    cfg = TrainConfig(model="ridge", n_genes=4, device="cpu", model_config=dict(RIDGE))
    run = tmp_path_factory.mktemp("runs") / "ridge"
    train([section], run, cfg, progress=False, log=lambda s: None)
    return run


@pytest.fixture(scope="module")
def ridge_store(
    ridge_run: Path, sample_slide: Path, tmp_path_factory: pytest.TempPathFactory
) -> DenseMapStore:
    out = tmp_path_factory.mktemp("maps") / "ridge.zarr"
    report = predict_with_run(ridge_run, sample_slide, out, device="cpu")
    assert report.status == "complete"
    assert report.n_computed + report.n_skipped_background == report.n_tiles == 9  # 3 × 3
    return DenseMapStore.open(out)


def _ridge(ridge_run: Path):
    from napari_histoexpress.models.ridge import RidgeBaseline

    return RidgeBaseline.load(ridge_run)


def _node_patches(slide_path: Path, nodes: np.ndarray, pitch_um: float) -> np.ndarray:
    """The patch centred on each ``(row, col)`` node, read on its own (not from a band)."""
    slide = open_slide(slide_path)
    px = int(PATCH_UM / 2.0)
    out = []
    for i, j in nodes:
        centre = ((j + 0.5) * pitch_um / SLIDE_MPP, (i + 0.5) * pitch_um / SLIDE_MPP)
        out.append(read_region_at_mpp(slide, centre, (px, px), PATCH_UM / px))
    return np.stack(out)


def _tissue_nodes(store: DenseMapStore, n: int, seed: int = 0) -> np.ndarray:
    feats = np.asarray(store.features_level(0))
    rows, cols = np.nonzero(np.isfinite(feats[..., 0]))
    pick = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return np.stack([rows[pick], cols[pick]], axis=1)


# ------------------------------------------------------------------------------------ ridge
def test_ridge_run_writes_a_lattice_map(ridge_store: DenseMapStore, ridge_run: Path) -> None:
    model = _ridge(ridge_run)
    assert ridge_store.genes == model.genes and len(model.genes) == 4
    assert ridge_store.map_mpp == pytest.approx(PITCH_UM)
    assert ridge_store.model_mpp == pytest.approx(2.0)
    assert ridge_store.slide_mpp == pytest.approx(SLIDE_MPP)
    assert ridge_store.map_shape == (48, 48)  # 3072 px · 0.5 µm / 32 µm
    assert ridge_store.feature_dim == model.feature_dim == 8
    W, b = model.gene_head()
    np.testing.assert_allclose(ridge_store.head[0], W, rtol=1e-6)
    np.testing.assert_allclose(ridge_store.head[1], b, rtol=1e-6)
    prov = ridge_store.provenance
    assert prov["model"] == "ridge" and prov["model_kind"] == "spot"
    assert prov["prediction"] == "lattice" and prov["run_dir"] == str(ridge_run.resolve())
    feats = np.asarray(ridge_store.features_level(0))
    assert np.isfinite(feats).all()  # every chunk of the sample holds tissue


def test_node_holds_the_features_of_the_patch_centred_on_it(
    ridge_store: DenseMapStore, ridge_run: Path, sample_slide: Path
) -> None:
    model = _ridge(ridge_run)
    nodes = _tissue_nodes(ridge_store, 12)
    expected = model.transform_features(
        model.encode_patches(_node_patches(sample_slide, nodes, PITCH_UM))
    )
    feats = np.asarray(ridge_store.features_level(0))
    got = feats[nodes[:, 0], nodes[:, 1]]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the heatmap of a gene at a node = the model's own prediction of that node's patch
    pred = model.predict_features(model.encode_patches(_node_patches(sample_slide, nodes, 32.0)))
    gmap = np.asarray(ridge_store.gene_map(model.genes[1]))
    np.testing.assert_allclose(gmap[nodes[:, 0], nodes[:, 1]], pred[:, 1], rtol=1e-4, atol=1e-4)


def test_circle_mean_through_the_head_is_the_mean_of_the_window_predictions(
    ridge_store: DenseMapStore, ridge_run: Path, sample_slide: Path
) -> None:
    from napari_histoexpress.geometry import circle_pixel_weights
    from napari_histoexpress.inference.spots import predict_circles

    model = _ridge(ridge_run)
    feats = np.asarray(ridge_store.features_level(0))
    predicted = np.isfinite(feats[..., 0])
    centres = _tissue_nodes(ridge_store, 3, seed=1)
    circles = pd.DataFrame(
        {
            "x_um": (centres[:, 1] + 0.5) * PITCH_UM - SLIDE_MPP / 2 + np.array([7.0, -3.0, 11.0]),
            "y_um": (centres[:, 0] + 0.5) * PITCH_UM - SLIDE_MPP / 2 + np.array([-5.0, 2.0, 0.0]),
            "diameter_um": [55.0, 120.0, 300.0],
        }
    )
    adata = predict_circles(ridge_store, circles)
    for k, row in circles.iterrows():
        # independently: the circle in lattice-node units, exact area weights per node
        cx = (row.x_um + SLIDE_MPP / 2) / PITCH_UM - 0.5
        cy = (row.y_um + SLIDE_MPP / 2) / PITCH_UM - 0.5
        rr, cc, w = circle_pixel_weights(cx, cy, row.diameter_um / 2 / PITCH_UM, feats.shape[:2])
        keep = predicted[rr, cc]
        rr, cc, w = rr[keep], cc[keep], w[keep]
        nodes = np.stack([rr, cc], axis=1)
        windows = model.predict_features(
            model.encode_patches(_node_patches(sample_slide, nodes, PITCH_UM))
        )  # each node's own patch prediction
        expected = (w[:, None] * windows).sum(axis=0) / w.sum()
        np.testing.assert_allclose(adata.X[int(k)], expected, rtol=1e-4, atol=1e-4)
    assert adata.obs["area_fraction"].between(0.5, 1 + 1e-6).all()


def test_cli_predict_with_a_ridge_run(ridge_run: Path, sample_slide: Path, tmp_path: Path) -> None:
    from napari_histoexpress.cli import main

    out = tmp_path / "x.zarr"
    args = ["predict", "--run", str(ridge_run), "--slide", str(sample_slide), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--pitch-um", "64"]) == 0
    store = DenseMapStore.open(out)
    assert store.status == "complete" and store.map_mpp == pytest.approx(64.0)
    assert store.map_shape == (24, 24)


# ------------------------------------------------------------------------------------ toys
class _MeanRGB(SpotModel):
    """A fast spot model: features = the patch's mean RGB (C = 3), head = identity + 1."""

    def __init__(self, context: bool = False) -> None:
        self.genes = ["R", "G", "B"]
        self.context = context
        self.contexts: list[int] = []

    @classmethod
    def from_config(cls, config: dict) -> _MeanRGB:
        return cls()

    def config_dict(self) -> dict:
        return {}

    @classmethod
    def contract_config(cls) -> dict:
        return {}

    @property
    def feature_dim(self) -> int:
        return 3

    def input_spec(self) -> InputSpec:
        return InputSpec(
            mpp=2.0, mean=(0.0,) * 3, std=(1.0,) * 3, normalizes_input=True, patch_px=8
        )

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        return np.eye(3), np.ones(3)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        return None

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        assert spots.images is not None and spots.positions_um is not None
        return spots.images.mean(dim=(2, 3))

    @property
    def needs_slide_context(self) -> bool:
        return self.context

    def slide_context(self, nodes: LatticeNodes) -> torch.Tensor:
        self.contexts.append(len(nodes))
        return nodes.features - nodes.features.mean(dim=0, keepdim=True)


def test_pitch_is_configurable_and_rounded_to_working_pixels(sample_slide: Path) -> None:
    slide = open_slide(sample_slide)
    plan = plan_lattice(_MeanRGB(), slide)
    assert plan.pitch_um == pytest.approx(8.0) and plan.map_shape == (192, 192)
    plan = plan_lattice(_MeanRGB(), slide, pitch_um=50.0)
    assert (plan.pitch_px, plan.map_mpp, plan.map_shape) == (25, 50.0, (31, 31))
    assert plan_lattice(_MeanRGB(), slide, pitch_um=0.3).pitch_px == 1
    with pytest.raises(ValueError, match="pitch"):
        plan_lattice(_MeanRGB(), slide, pitch_um=-1.0)


def test_stop_then_resume_equals_one_run(sample_slide: Path, tmp_path: Path) -> None:
    kw = dict(pitch_um=32.0, chunk_nodes=8, device="cpu")
    full = predict_lattice(_MeanRGB(), sample_slide, tmp_path / "full.zarr", **kw)
    assert full.status == "complete"
    seen: list[int] = []
    out = tmp_path / "resumed.zarr"
    first = predict_lattice(
        _MeanRGB(), sample_slide, out, progress=lambda d, t: seen.append(d),
        should_stop=lambda: bool(seen) and seen[-1] >= 2, **kw,
    )  # fmt: skip
    assert first.status == "partial" and first.n_computed == 2
    done_before = int(DenseMapStore.open(out).done_mask.sum())
    second = predict_lattice(_MeanRGB(), sample_slide, out, **kw)
    assert second.status == "complete" and second.n_already_done == done_before
    assert second.n_computed == full.n_computed - 2
    a = np.asarray(DenseMapStore.open(tmp_path / "full.zarr").features_level(0))
    b = np.asarray(DenseMapStore.open(out).features_level(0))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(Exception, match="cannot resume"):  # another pitch: not the same map
        predict_lattice(_MeanRGB(), sample_slide, out, pitch_um=48.0, device="cpu")


def test_two_passes_give_the_context_the_whole_slide(sample_slide: Path, tmp_path: Path) -> None:
    kw = dict(pitch_um=32.0, chunk_nodes=8, device="cpu")
    plain = predict_lattice(_MeanRGB(), sample_slide, tmp_path / "plain.zarr", **kw)
    seen: list[int] = []
    model = _MeanRGB(context=True)
    out = tmp_path / "ctx.zarr"
    first = predict_lattice(
        model, sample_slide, out, progress=lambda d, t: seen.append(d),
        should_stop=lambda: bool(seen) and seen[-1] >= 3, **kw,
    )  # fmt: skip
    assert first.status == "partial" and model.contexts == []  # pass 2 never ran
    scratch = out.with_name(f".{out.name}.pass1")
    assert scratch.exists()
    second = predict_lattice(model, sample_slide, out, **kw)
    assert second.status == "complete" and second.n_computed == plain.n_computed
    assert not scratch.exists()
    p1 = np.asarray(DenseMapStore.open(tmp_path / "plain.zarr").features_level(0))
    ctx = np.asarray(DenseMapStore.open(out).features_level(0))
    tissue = np.isfinite(p1[..., 0])
    assert model.contexts == [int(tissue.sum())]  # one call with every tissue node
    expected = p1 - p1[tissue].mean(axis=0)
    np.testing.assert_allclose(ctx[tissue], expected[tissue], atol=1e-5)
    assert np.isnan(ctx[~tissue]).all()
