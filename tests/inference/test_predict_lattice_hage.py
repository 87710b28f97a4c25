"""A HAGE run on the patch lattice: the store holds HAGE's features and its head, a node is
the prediction of the patch centred on it, and a circle's prediction through the head is
the area-weighted mean of the window predictions (the head is affine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dense_toys import TINY_HAGE
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_run import predict_with_run
from napari_histoexpress.io.slides import open_slide, read_region_at_mpp

SLIDE_MPP = 0.5
PITCH_UM = 32.0  # default: half the 64 µm patch


@pytest.fixture(scope="module")
def hage_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DenseMapStore, Path]:
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.config import TrainConfig
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.train import train

    paths = sample_paths()
    tmp = tmp_path_factory.mktemp("hage")
    cfg = TrainConfig.for_model(
        "hage", n_genes=4, epochs=2, batch_size=32, device="cpu", model_config=dict(TINY_HAGE)
    )
    run = tmp / "run"
    train([load_section(paths["spots"])], run, cfg, progress=False, log=lambda s: None)
    out = tmp / "hage.zarr"
    report = predict_with_run(run, paths["image"], out, device="cpu")
    assert report.status == "complete"
    return run, DenseMapStore.open(out), Path(paths["image"])


def _window_predictions(model, slide_path: Path, nodes: np.ndarray) -> np.ndarray:
    """Each node's own patch (read alone) through HAGE's forward pass."""
    slide = open_slide(slide_path)
    patches = []
    for i, j in nodes:
        centre = ((j + 0.5) * PITCH_UM / SLIDE_MPP, (i + 0.5) * PITCH_UM / SLIDE_MPP)
        patches.append(read_region_at_mpp(slide, centre, (32, 32), 2.0))
    x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model(model.encode_images(x)).double().numpy()


def test_hage_map_is_the_window_predictions(hage_store) -> None:
    from napari_histoexpress.geometry import circle_pixel_weights
    from napari_histoexpress.inference.spots import predict_circles
    from napari_histoexpress.models.checkpoint import load_checkpoint

    run, store, slide_path = hage_store
    model, _ = load_checkpoint(run)
    model.eval()
    assert store.provenance["model"] == "hage" and store.provenance["model_kind"] == "spot"
    assert store.feature_dim == 16 and store.map_mpp == pytest.approx(PITCH_UM)
    W, _ = model.gene_head()
    np.testing.assert_allclose(store.head[0], W, rtol=1e-6)

    feats = np.asarray(store.features_level(0))
    predicted = np.isfinite(feats[..., 0])
    rows, cols = np.nonzero(predicted)
    pick = np.random.default_rng(0).choice(len(rows), size=6, replace=False)
    nodes = np.stack([rows[pick], cols[pick]], axis=1)
    gmap = np.asarray(store.gene_map(model.genes[2]))
    own = _window_predictions(model, slide_path, nodes)
    np.testing.assert_allclose(gmap[nodes[:, 0], nodes[:, 1]], own[:, 2], rtol=1e-4, atol=1e-4)

    centres = nodes[:2]
    circles = pd.DataFrame(
        {
            "x_um": (centres[:, 1] + 0.5) * PITCH_UM - SLIDE_MPP / 2 + np.array([5.0, -4.0]),
            "y_um": (centres[:, 0] + 0.5) * PITCH_UM - SLIDE_MPP / 2 + np.array([-3.0, 6.0]),
            "diameter_um": [55.0, 150.0],
        }
    )
    adata = predict_circles(store, circles)
    for k, row in circles.iterrows():
        cx = (row.x_um + SLIDE_MPP / 2) / PITCH_UM - 0.5
        cy = (row.y_um + SLIDE_MPP / 2) / PITCH_UM - 0.5
        rr, cc, w = circle_pixel_weights(cx, cy, row.diameter_um / 2 / PITCH_UM, feats.shape[:2])
        keep = predicted[rr, cc]
        rr, cc, w = rr[keep], cc[keep], w[keep]
        windows = _window_predictions(model, slide_path, np.stack([rr, cc], axis=1))
        expected = (w[:, None] * windows).sum(axis=0) / w.sum()
        np.testing.assert_allclose(adata.X[int(k)], expected, rtol=1e-4, atol=1e-4)
