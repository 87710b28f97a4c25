"""The nuclei segmenter ALIGN-ST's nuclei stream reads (``napari_histoexpress.nuclei``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histoexpress import nuclei


def _discs(centres: list[tuple[float, float]], radius: float, size: int = 96) -> np.ndarray:
    """H&E-like uint8 RGB: haematoxylin-blue discs on pink."""
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = (235, 170, 200)  # eosin background
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (60, 40, 150)
    return img


def test_separate_discs_are_counted_with_their_areas() -> None:
    mpp = 0.5
    img = _discs([(20, 20), (20, 70), (70, 45)], radius=8)
    labels = nuclei.segment_hed_watershed(img, mpp)
    stats = nuclei.nuclei_stats(labels, mpp)
    assert stats.count == 3
    area = np.pi * 8**2 * mpp**2  # 50 µm²
    assert stats.median_area_um2 == pytest.approx(area, rel=0.15)


def test_touching_discs_are_split_by_the_watershed() -> None:
    img = _discs([(48, 36), (48, 58)], radius=12)  # overlapping by 2 px
    labels = nuclei.segment_hed_watershed(img, 0.5)
    assert len(np.unique(labels[labels > 0])) == 2


def test_small_objects_are_removed_in_um2() -> None:
    img = _discs([(20, 20)], radius=2)  # 12.6 px = 3 µm² at 0.5 µm/px
    assert nuclei.nuclei_stats(nuclei.segment_hed_watershed(img, 0.5), 0.5).count == 0
    # the same pixels at 2 µm/px are 50 µm²: a nucleus
    assert nuclei.nuclei_stats(nuclei.segment_hed_watershed(img, 2.0), 2.0).count == 1


def test_blank_patch_has_no_nuclei() -> None:
    pink = _discs([], radius=1)
    assert not nuclei.segment_hed_watershed(pink, 0.74).any()
    noise = np.random.default_rng(0).integers(200, 256, (64, 64, 3), dtype=np.uint8)
    assert not nuclei.segment_hed_watershed(noise, 0.74).any()  # the threshold's floor


def test_bad_mpp_and_image_are_refused() -> None:
    with pytest.raises(ValueError, match="mpp"):
        nuclei.segment_hed_watershed(_discs([], 1), 0.0)
    with pytest.raises(ValueError, match="RGB"):
        nuclei.segment_hed_watershed(np.zeros((8, 8), np.uint8), 1.0)


def test_nuclei_grid_is_the_area_fraction() -> None:
    labels = np.zeros((4, 6), np.int32)
    labels[:2, :3] = 1
    np.testing.assert_allclose(nuclei.nuclei_grid(labels, 2), [[1, 0], [0, 0]])
    # a grid that does not divide the side splits pixels fractionally: 3 rows into 2 cells
    labels = np.array([[1], [0], [0]])
    np.testing.assert_allclose(nuclei.nuclei_grid(labels, 1), [[1 / 3]], rtol=1e-6)
    g = nuclei.nuclei_grid(np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]]), 2)
    np.testing.assert_allclose(g.sum() * (9 / 4), 2.0, rtol=1e-6)  # mass kept
    np.testing.assert_allclose(g, [[4 / 9, 0], [0, 4 / 9]], atol=1e-6)


def test_segmenters_plug_in_by_name() -> None:
    assert nuclei.get_segmenter() is nuclei.segment_hed_watershed
    with pytest.raises(nuclei.UnknownSegmenterError, match="hed-watershed"):
        nuclei.get_segmenter("no-such-segmenter")

    def everything(rgb: np.ndarray, mpp: float) -> np.ndarray:
        return np.ones(rgb.shape[:2], np.int32)

    nuclei.register_segmenter("test-everything", everything)
    try:
        assert "test-everything" in nuclei.segmenter_names()
        assert nuclei.get_segmenter("test-everything") is everything
        with pytest.raises(ValueError, match="already"):
            nuclei.register_segmenter("test-everything", everything)
    finally:
        nuclei._REGISTRY.pop("test-everything")


def test_her2st_crop_has_plausible_nuclei(her2st: Path) -> None:
    """A 330 µm crop of her2st C2 at its 0.74 µm/px: breast-cancer tissue holds about
    1,000–8,000 nuclei per mm² of 20–80 µm² (median); the figure of the README
    (``scripts/nuclei_figure.py``) shows the outlines on the nuclei."""
    import pandas as pd

    from napari_histoexpress.io.slides import open_slide, read_region_at_mpp

    slide = open_slide(her2st / "images" / "C2.jpg", mpp=0.74)
    spots = pd.read_csv(her2st / "spots" / "C2_selection.tsv", sep="\t")
    for i in (0, 100):
        centre = (float(spots.pixel_x[i]), float(spots.pixel_y[i]))
        rgb = np.asarray(read_region_at_mpp(slide, centre, (448, 448), 0.74))
        labels = nuclei.segment_hed_watershed(rgb, 0.74)
        stats = nuclei.nuclei_stats(labels, 0.74)
        assert 1_000 < stats.density_per_mm2 < 8_000, stats
        assert 20 < stats.median_area_um2 < 80, stats
        assert 0.05 < stats.nuclear_fraction < 0.5, stats
        # nuclei are where haematoxylin is: much darker in H than the rest
        h = nuclei.haematoxylin(rgb)
        assert h[labels > 0].mean() > 2 * h[labels == 0].mean()
