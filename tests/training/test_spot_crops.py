"""Spot-crop datasets: geometry, augmentation consistency, determinism, batching."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import torch

from napari_histoexpress.expression import expression_matrix
from napari_histoexpress.io.slides import Slide
from napari_histoexpress.training.spot_crops import (
    SpotCropConfig,
    SpotCropDataset,
    collate_spot_crops,
    dihedral_transform,
)

SLIDE_MPP = 0.5  # µm per level-0 px
PITCH_UM, DIAM_UM = 100.0, 50.0
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _colour(i: int) -> np.ndarray:
    return np.array([(37 * i) % 200 + 20, (91 * i) % 200 + 20, (13 * i) % 200 + 20], np.uint8)


def _section(nx: int = 6, ny: int = 5, seed: int = 0) -> tuple[ad.AnnData, Slide]:
    """A white slide with one flat-coloured disk per spot (colour encodes the spot)."""
    pitch, diam = PITCH_UM / SLIDE_MPP, DIAM_UM / SLIDE_MPP
    xs, ys = np.meshgrid(np.arange(nx) * pitch + pitch, np.arange(ny) * pitch + pitch * 0.8)
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.37  # off-grid sub-pixel centres
    h, w = int((ny + 1) * pitch), int((nx + 1) * pitch)
    img = np.full((h, w, 3), 255, np.uint8)
    r = int(diam // 2) + 2
    yy, xx = np.mgrid[-r:r, -r:r] + 0.5
    for i, (x, y) in enumerate(xy):
        x0, y0 = int(x), int(y)
        disk = (xx + x0 - x) ** 2 + (yy + y0 - y) ** 2 <= (diam / 2) ** 2
        img[y0 - r : y0 + r, x0 - r : x0 + r][disk] = _colour(i)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(len(xy), 8)).astype(np.float32)
    adata = ad.AnnData(X=counts)
    adata.var_names = [f"G{i}" for i in range(8)]
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {
        "lib": {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": diam, "microns_per_pixel": SLIDE_MPP},
            "metadata": {"microns_per_pixel": SLIDE_MPP},
        }
    }
    slide = Slide(
        path=Path("synthetic.png"), levels=[da.from_array(img)], mpp=SLIDE_MPP, mpp_source="user"
    )
    return adata, slide


def _dataset(**kw) -> tuple[SpotCropDataset, ad.AnnData]:
    adata, slide = _section()
    cfg = dict(mpp=1.0, crop_um=256.0, jitter_um=40.0, mean=MEAN, std=STD, seed=3)
    cfg.update(kw)
    return SpotCropDataset([(adata, slide)], ["G3", "G0"], SpotCropConfig(**cfg)), adata


def test_dihedral_transform_tracks_points() -> None:
    img = np.zeros((7, 9, 1), np.uint8)
    img[2, 6] = 255  # pixel (row 2, col 6): centre at (x, y) = (6.5, 2.5)
    for k in range(4):
        for flip in (False, True):
            out, xy = dihedral_transform(img, np.array([[6.5, 2.5]]), k, flip)
            r, c = np.argwhere(out[..., 0] == 255)[0]
            np.testing.assert_allclose(xy[0], [c + 0.5, r + 0.5])


def test_crop_geometry_every_visible_spot_supervised() -> None:
    ds, adata = _dataset(augment=True)
    targets = expression_matrix(adata, ["G3", "G0"])
    size = ds.config.size_px
    assert size == 256
    seen_transforms = set()
    n_multi = 0
    for item in range(len(ds)):
        c = ds.crop(item)
        assert c.image.shape == (size, size, 3) and c.image.dtype == np.uint8
        assert c.anchor >= 0 and c.spot_index[c.anchor] == item  # anchor always inside
        r = c.radii
        np.testing.assert_allclose(r, DIAM_UM / 2 / 1.0)
        assert np.all(c.centres_xy - r[:, None] >= -1e-3)
        assert np.all(c.centres_xy + r[:, None] <= size + 1e-3)
        # the colour at each returned centre is that spot's colour (image and coordinates
        # went through the same resampling and dihedral transform)
        for (x, y), s in zip(c.centres_xy, c.spot_index, strict=True):
            np.testing.assert_array_equal(c.image[int(y), int(x)], _colour(int(s)))
        np.testing.assert_array_equal(c.targets, targets[c.spot_index])
        k, flip = c.transform
        n_multi += len(c.spot_index) > 1
        seen_transforms.add((k, flip))
    assert n_multi > 0  # 256 µm crops at 100 µm pitch hold several spots
    assert len(seen_transforms) >= 6  # augmentation draws vary across items


def test_unaugmented_crop_spot_set_is_exact() -> None:
    ds, adata = _dataset(augment=False, jitter_um=0.0)
    xy_all = np.asarray(adata.obsm["spatial"])
    size = ds.config.size_px
    scale = SLIDE_MPP / ds.config.mpp
    r = DIAM_UM / 2 / ds.config.mpp
    for item in range(len(ds)):
        c = ds.crop(item)
        crop_xy = (xy_all - xy_all[item]) * scale + size / 2
        inside = np.all((crop_xy - r >= 0) & (crop_xy + r <= size), axis=1)
        assert set(c.spot_index.tolist()) == set(np.flatnonzero(inside).tolist())
        np.testing.assert_allclose(c.centres_xy, crop_xy[c.spot_index], atol=1e-4)
        # anchor exactly at the centre
        np.testing.assert_allclose(c.centres_xy[c.anchor], [size / 2, size / 2], atol=1e-4)


def test_determinism_and_epochs() -> None:
    ds, _ = _dataset()
    a, b = ds.crop(4), ds.crop(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.centres_xy, b.centres_xy)
    ds2, _ = _dataset()
    np.testing.assert_array_equal(ds2.crop(4).centres_xy, a.centres_xy)
    changed = 0
    for e in range(1, 4):
        ds.set_epoch(e)
        c = ds.crop(4)
        changed += not (
            np.array_equal(c.centres_xy, a.centres_xy) and np.array_equal(c.image, a.image)
        )
    assert changed >= 2
    ds3, _ = _dataset(seed=99)
    assert not np.array_equal(ds3.crop(4).image, a.image) or not np.array_equal(
        ds3.crop(4).centres_xy, a.centres_xy
    )


def test_tensors_and_collate() -> None:
    ds, _ = _dataset()
    item = ds[2]
    img = item["image"]
    assert img.shape == (3, 256, 256) and img.dtype == torch.float32
    # white background normalised with the given mean/std: (1 - 0.5) / 0.25 = 2
    assert torch.isclose(img.max(), torch.tensor(2.0))
    batch = collate_spot_crops([ds[i] for i in (0, 7, 13)])
    ks = [len(ds[i]["radii"]) for i in (0, 7, 13)]
    assert batch["image"].shape == (3, 3, 256, 256)
    assert batch["n_spots"].tolist() == ks
    n = sum(ks)
    assert batch["centres"].shape == (n, 2) and batch["targets"].shape == (n, 2)
    assert batch["batch_index"].tolist() == [i for i, k in enumerate(ks) for _ in range(k)]
    assert batch["section"].shape == (n,)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_spot_crops)
    first = next(iter(loader))
    assert first["image"].shape[0] == 4


def test_invalid_settings() -> None:
    adata, slide = _section()
    with pytest.raises(ValueError):
        SpotCropDataset([(adata, slide)], ["G0"], SpotCropConfig(mpp=0, mean=MEAN, std=STD))


@pytest.mark.shared_data
def test_her2st_crop_has_spots(her2st: Path) -> None:
    from napari_histoexpress.io.slides import open_slide
    from napari_histoexpress.io.spatial import microns_per_pixel, source_image_path
    from napari_histoexpress.io.st_datasets import read_legacy_st

    adata = read_legacy_st(
        her2st / "images" / "C2.jpg",
        her2st / "counts" / "C2.tsv.gz",
        her2st / "spots" / "C2_selection.tsv",
    )
    slide = open_slide(source_image_path(adata), mpp=microns_per_pixel(adata))
    genes = list(adata.var_names[:5])
    ds = SpotCropDataset([(adata, slide)], genes, SpotCropConfig(mpp=2.0, crop_um=512.0))
    assert len(ds) == adata.n_obs
    item = ds[len(ds) // 2]
    assert item["image"].shape == (3, 256, 256)
    k = len(item["radii"])
    assert k >= 2  # 512 µm at ST's 200 µm pitch: the anchor and full neighbours
    # 100 µm spots at 2 µm/px
    assert torch.allclose(item["radii"], torch.full((k,), 25.0), rtol=0.05)
    assert item["targets"].shape == (k, 5)
    # tissue, not white padding, under the spots
    c = ds.crop(len(ds) // 2)
    x, y = c.centres_xy[c.anchor].astype(int)
    assert c.image[y - 10 : y + 10, x - 10 : x + 10].mean() < 235
