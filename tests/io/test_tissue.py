"""Tissue detection on thumbnails."""

from __future__ import annotations

import numpy as np

from napari_histoexpress.io.tissue import tissue_in_box, tissue_mask


def _he_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array([205, 130, 180], np.float32)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def test_blank_slide_has_no_tissue() -> None:
    assert not tissue_mask(np.full((80, 90, 3), 255, np.uint8)).any()
    rng = np.random.default_rng(0)
    grey_glass = np.clip(240 + rng.normal(0, 3, (80, 90, 1)), 0, 255).astype(np.uint8)
    assert not tissue_mask(np.repeat(grey_glass, 3, axis=2)).any()


def test_half_tissue() -> None:
    img = np.full((100, 120, 3), 250, np.uint8)
    img[20:80, 10:60] = _he_like(60, 50)
    mask = tissue_mask(img)
    assert mask[25:75, 15:55].all()  # the tissue
    assert not mask[:, 70:].any() and not mask[:10].any()  # the glass
    # pale tissue next to dark tissue is kept: the threshold is capped
    pale = np.full((100, 100, 3), 250, np.uint8)
    pale[:, :50] = _he_like(100, 50)
    pale[:, 50:] = [235, 205, 225]  # faint eosin, saturation ~0.13
    assert tissue_mask(pale)[:, 55:95].mean() > 0.95


def test_small_specks_are_removed() -> None:
    img = np.full((200, 200, 3), 255, np.uint8)
    img[100:102, 100:102] = [120, 40, 110]
    assert not tissue_mask(img, min_object_fraction=1e-3).any()


def test_tissue_in_box() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2, 7] = True
    assert tissue_in_box(mask, (0.1, 0.1), (20, 70, 30, 80))
    assert not tissue_in_box(mask, (0.1, 0.1), (0, 0, 20, 60))
    assert not tissue_in_box(mask, (0.1, 0.1), (200, 200, 300, 300))  # outside
