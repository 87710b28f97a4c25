"""Tests of the slide reader: every format is written by the test itself (tifffile / PIL).

NDPI cannot be written by tifffile (its 64-bit offset layout), so the NDPI µm/px rule is tested
on the parsed-metadata level (``tiff_mpp`` with an object that tifffile would report as NDPI)
and on a TIFF carrying the same resolution tags (pixels per centimetre).
"""

from __future__ import annotations

import itertools
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_histoexpress.errors import InputFileError, MissingResolutionError
from napari_histoexpress.io._tiff_metadata import ome_mpp, resolution_mpp, svs_mpp, tiff_mpp
from napari_histoexpress.io.slides import (
    MIN_LEVEL_SIDE,
    SLIDE_SUFFIXES,
    Slide,
    is_slide_path,
    open_slide,
    read_region,
    read_region_at_mpp,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _halve(a: np.ndarray) -> np.ndarray:
    """Reference 2×2 area mean, rounded half up, odd last row/column dropped."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    s = a[:h, :w].astype(np.uint16).reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def _check_levels(slide: Slide) -> None:
    assert len(slide.levels) >= 1
    for level in slide.levels:
        assert level.ndim == 3 and level.shape[2] == 3 and level.dtype == np.uint8
    shapes = [lvl.shape[:2] for lvl in slide.levels]
    for (h0, w0), (h1, w1) in itertools.pairwise(shapes):
        assert h1 < h0 and w1 < w0
    assert min(shapes[-1]) < MIN_LEVEL_SIDE
    ds = slide.downsamples
    assert ds[0] == 1.0 and all(b > a for a, b in itertools.pairwise(ds))


def _write_svs_like(path: Path, base: np.ndarray, level1: np.ndarray, mpp: float) -> None:
    """Aperio layout: tiled baseline, stripped thumbnail, tiled level, label, macro."""
    h, w = base.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) J2K/YUV16 Q=70"
        f"|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|MPP = {mpp}"
    )
    with tifffile.TiffWriter(path) as tw:
        # metadata=None: no tifffile "shaped" JSON description, so tifffile sees an SVS file
        common = {"photometric": "rgb", "metadata": None}
        tw.write(base, tile=(256, 256), description=desc, compression="zlib", **common)
        tw.write(base[::8, ::8], description="Aperio thumbnail", **common)
        tw.write(level1, tile=(256, 256), description=desc, compression="zlib", **common)
        tw.write(_rgb(60, 80, 5), subfiletype=1, description="label 80x60", **common)
        tw.write(_rgb(60, 160, 6), subfiletype=9, description="macro 160x60", **common)


# ---- suffixes ------------------------------------------------------------------------------


def test_slide_suffixes() -> None:
    assert ".svs" in SLIDE_SUFFIXES and ".ome.tiff" in SLIDE_SUFFIXES
    for name in ["a.svs", "b.TIF", "c.ome.tiff", "d.ndpi", "e.JPG", "f.jpeg", "g.png", "h.tiff"]:
        assert is_slide_path(name)
    for name in ["a.h5ad", "b.txt", "c.bmp", "tif", "d.tif.gz"]:
        assert not is_slide_path(name)


# ---- formats and µm/px ---------------------------------------------------------------------


def test_svs_pyramid_and_mpp(tmp_path: Path) -> None:
    base = _rgb(1500, 2100, 1)
    level1 = _rgb(375, 525, 2)  # distinct content: proves level 1 is read from the file
    path = tmp_path / "slide.svs"
    _write_svs_like(path, base, level1, 0.4990)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "svs"
        assert slide.shape == (1500, 2100)
        assert [lvl.shape for lvl in slide.levels] == [(1500, 2100, 3), (375, 525, 3)]
        assert slide.downsamples == [1.0, 4.0]
        assert slide.level_mpp(1) == pytest.approx(4 * 0.499)
        np.testing.assert_array_equal(slide.levels[1].compute(), level1)
        np.testing.assert_array_equal(
            read_region(slide, 0, 300, 200, 64, 32), base[200:232, 300:364]
        )
        _check_levels(slide)


def test_user_mpp_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "slide.svs"
    _write_svs_like(path, _rgb(600, 700), _rgb(150, 175), 0.5)
    slide = open_slide(path, mpp=0.25)
    assert slide.mpp == 0.25 and slide.mpp_source == "user"
    assert slide.level_mpp(1) == pytest.approx(1.0)
    for bad in (0, -1.0, float("nan"), "abc"):
        with pytest.raises(InputFileError, match="mpp"):
            open_slide(path, mpp=bad)


@pytest.mark.parametrize(
    ("size", "unit", "expected"),
    [
        (0.5, "µm", 0.5),
        (250.0, "nm", 0.25),
        (0.0005, "mm", 0.5),
        (5e-5, "cm", 0.5),
        (0.3, None, 0.3),
    ],
)
def test_ome_physical_size_units(
    tmp_path: Path, size: float, unit: str | None, expected: float
) -> None:
    base = _rgb(1100, 1200, 3)
    metadata: dict[str, object] = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:
        metadata["PhysicalSizeXUnit"] = unit
        metadata["PhysicalSizeYUnit"] = unit
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(base, tile=(256, 256), subifds=1, metadata=metadata, photometric="rgb")
        tw.write(base[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    slide = open_slide(path)
    assert slide.mpp_source == "ome"
    assert slide.mpp == pytest.approx(expected)
    # The SubIFD level is used (strided copy, not an area mean: proves it comes from the file).
    assert [lvl.shape for lvl in slide.levels] == [(1100, 1200, 3), (550, 600, 3)]
    np.testing.assert_array_equal(slide.levels[1].compute(), base[::2, ::2])


def test_main_image_is_the_largest_series(tmp_path: Path) -> None:
    """A small label image stored first (own series) does not become level 0."""
    label, base = _rgb(100, 300, 1), _rgb(1200, 1100, 2)
    path = tmp_path / "label_first.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(label, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 50.0})
        tw.write(
            base, photometric="rgb", tile=(256, 256), metadata={"axes": "YXS", "PhysicalSizeX": 0.5}
        )
    slide = open_slide(path)
    assert slide.shape == (1200, 1100)
    assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "ome"  # the main image's
    np.testing.assert_array_equal(read_region(slide, 0, 0, 0, 50, 40), base[:40, :50])


def test_flat_striped_tiff_cm_resolution_and_computed_pyramid(tmp_path: Path) -> None:
    base = _rgb(2300, 2500, 4)
    path = tmp_path / "flat.tif"
    # 0.5 µm/px = 20,000 px/cm
    tifffile.imwrite(
        path,
        base,
        photometric="rgb",
        rowsperstrip=37,
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages.first.is_tiled
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "tiff-resolution"
    _check_levels(slide)
    assert [lvl.shape[:2] for lvl in slide.levels] == [(2300, 2500), (1150, 1250), (575, 625)]
    np.testing.assert_array_equal(slide.levels[0].compute(), base)
    np.testing.assert_array_equal(slide.levels[1].compute(), _halve(base))
    np.testing.assert_array_equal(slide.levels[2].compute(), _halve(_halve(base)))


def test_flat_tiled_tiff_inch_resolution(tmp_path: Path) -> None:
    base = _rgb(900, 1000, 5)
    path = tmp_path / "flat_tiled.tiff"
    tifffile.imwrite(
        path,
        base,
        photometric="rgb",
        tile=(128, 128),
        compression="zlib",
        resolution=(25400 / 0.25, 25400 / 0.25),
        resolutionunit="INCH",
    )
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "tiff-resolution"
    assert len(slide.levels) == 1  # smaller side already < MIN_LEVEL_SIDE
    np.testing.assert_array_equal(read_region(slide, 0, 100, 50, 300, 200), base[50:250, 100:400])


@pytest.mark.parametrize(
    ("resolution", "unit"),
    [((72, 72), "INCH"), ((96, 96), "INCH"), ((20000, 20000), "NONE"), (None, None)],
)
def test_tiff_resolution_that_is_not_physical_is_unknown(
    tmp_path: Path, resolution: tuple[int, int] | None, unit: str | None
) -> None:
    path = tmp_path / "x.tif"
    kwargs = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
    tifffile.imwrite(path, _rgb(64, 64), photometric="rgb", **kwargs)
    slide = open_slide(path)
    assert slide.mpp is None and slide.mpp_source == "unknown"
    assert slide.level_mpp(0) is None


def test_ndpi_resolution_rule() -> None:
    """NDPI: tifffile cannot write one; the rule is checked on what tifffile parses from one
    (is_ndpi, XResolution in px/cm, ResolutionUnit CENTIMETER)."""
    tags = {
        "XResolution": SimpleNamespace(value=(43478, 1)),  # 0.23 µm/px
        "ResolutionUnit": SimpleNamespace(value=3),
    }
    fake = SimpleNamespace(
        is_svs=False,
        is_ome=False,
        is_ndpi=True,
        ome_metadata=None,
        pages=SimpleNamespace(first=SimpleNamespace(tags=tags, description="")),
    )
    mpp, source = tiff_mpp(fake)  # type: ignore[arg-type]
    assert source == "ndpi" and mpp == pytest.approx(1e4 / 43478)


def test_ndpi_like_tiff_with_ndpi_tags(tmp_path: Path) -> None:
    """A TIFF with NDPI-style tags (JPEG, px/cm) and a 4× multi-page pyramid opens with the
    right µm/px and levels (tifffile reports it as a plain TIFF, hence 'tiff-resolution')."""
    base = np.full((1200, 1300, 3), 180, np.uint8)
    path = tmp_path / "ndpi_like.tif"
    with tifffile.TiffWriter(path) as tw:
        for k, arr in enumerate([base, base[::4, ::4]]):
            mpp = 0.46 * 4**k
            tw.write(
                arr,
                photometric="rgb",
                compression="jpeg",
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                extratags=[(65421, 11, 1, 20.0, True)],
            )
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.46)
    assert [lvl.shape[:2] for lvl in slide.levels] == [(1200, 1300), (300, 325)]
    assert np.abs(read_region(slide, 1, 0, 0, 10, 10).astype(int) - 180).max() <= 2


def test_metadata_parsers() -> None:
    assert svs_mpp("Aperio Image Library|AppMag = 40|MPP = 0.2527|Left = 1") == pytest.approx(
        0.2527
    )
    assert svs_mpp("Aperio Image Library|AppMag = 40") is None
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
        '<Pixels PhysicalSizeX="{}" {} SizeX="1" SizeY="1" /></Image></OME>'
    )
    assert ome_mpp(xml.format(0.3, "")) == pytest.approx(0.3)
    assert ome_mpp(xml.format(300, 'PhysicalSizeXUnit="nm"')) == pytest.approx(0.3)
    assert ome_mpp(xml.format(0.3, 'PhysicalSizeXUnit="pixel"')) is None
    assert ome_mpp('<OME><Image><Pixels SizeX="1"/></Image></OME>') is None
    page = SimpleNamespace(
        tags={
            "XResolution": SimpleNamespace(value=(40000, 1)),
            "ResolutionUnit": SimpleNamespace(value=3),
        }
    )
    assert resolution_mpp(page) == pytest.approx(0.25)


def test_grayscale_rgba_planar_and_16bit_tiffs(tmp_path: Path) -> None:
    gray = _rgb(80, 90)[..., 0]
    tifffile.imwrite(tmp_path / "gray.tif", gray)
    np.testing.assert_array_equal(
        open_slide(tmp_path / "gray.tif").levels[0].compute(), np.stack([gray] * 3, -1)
    )

    rgb = _rgb(80, 90, 1)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(open_slide(tmp_path / "planar.tif").levels[0].compute(), rgb)

    rgba = np.concatenate([rgb, np.zeros((80, 90, 1), np.uint8)], axis=2)
    rgba[:40, :, 3] = 255
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    out = open_slide(tmp_path / "rgba.tif").levels[0].compute()
    np.testing.assert_array_equal(out[:40], rgb[:40])
    assert (out[40:] == 255).all()  # transparent → white background

    tifffile.imwrite(tmp_path / "u16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_array_equal(open_slide(tmp_path / "u16.tif").levels[0].compute(), rgb)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_plain_images_lazy_and_mpp_unknown(tmp_path: Path, suffix: str) -> None:
    yy, xx = np.mgrid[0:2100, 0:2300]
    base = np.stack([yy % 256, xx % 256, (yy // 9) % 256], -1).astype(np.uint8)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(base).save(
        path, dpi=(300, 300), **({"quality": 95} if suffix == ".jpg" else {})
    )
    slide = open_slide(path)
    assert slide.mpp is None and slide.mpp_source == "unknown"  # DPI in the file is not trusted
    assert slide.shape == (2100, 2300)
    _check_levels(slide)
    assert [lvl.shape[:2] for lvl in slide.levels] == [(2100, 2300), (1050, 1150), (525, 575)]
    level0 = slide.levels[0].compute()
    if suffix == ".png":
        np.testing.assert_array_equal(level0, base)
    np.testing.assert_array_equal(slide.levels[2].compute(), _halve(_halve(level0)))
    with pytest.raises(MissingResolutionError, match=str(path.name)):
        read_region_at_mpp(slide, (100, 100), (32, 32), 1.0)


def test_plain_gray_and_rgba_png(tmp_path: Path) -> None:
    gray = _rgb(50, 60)[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(
        open_slide(tmp_path / "g.png").levels[0].compute(), np.stack([gray] * 3, -1)
    )
    rgba = np.concatenate([_rgb(50, 60, 1), np.full((50, 60, 1), 0, np.uint8)], axis=2)
    rgba[:, :30, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = open_slide(tmp_path / "a.png").levels[0].compute()
    np.testing.assert_array_equal(out[:, :30], rgba[:, :30, :3])
    assert (out[:, 30:] == 255).all()


def test_plain_image_decoded_once_and_pil_limit_is_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_histoexpress.io import slides as slides_module

    base = _rgb(1100, 1300, 3)
    path = tmp_path / "big.png"
    Image.fromarray(base).save(path, compress_level=1)
    # a limit far below the image size: PIL alone would refuse this file
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError), Image.open(path):
        pass
    decodes: list[Path] = []
    original = slides_module._LazyDecodedImage._decode

    def counting_decode(self):  # type: ignore[no-untyped-def]
        decodes.append(self.path)
        return original(self)

    monkeypatch.setattr(slides_module._LazyDecodedImage, "_decode", counting_decode)
    slide = open_slide(path, mpp=0.5)
    assert decodes == []  # nothing decoded at open time
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit was raised only inside open_slide
    np.testing.assert_array_equal(read_region(slide, 0, 10, 20, 30, 40), base[20:60, 10:40])
    np.testing.assert_array_equal(slide.levels[1].compute(), _halve(base))
    read_region_at_mpp(slide, (600, 500), (64, 64), 2.0)
    assert decodes == [path]  # one decode, shared by all levels and reads
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_16bit_png(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).integers(0, 65536, (40, 50), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    out = open_slide(tmp_path / "g16.png").levels[0].compute()
    expected = ((gray.astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(out, np.stack([expected] * 3, -1))


def test_levels_support_numpy_style_indexing(tmp_path: Path) -> None:
    base = _rgb(300, 400, 8)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, base, photometric="rgb", tile=(64, 64))
    level = open_slide(path).levels[0]
    np.testing.assert_array_equal(level[5].compute(), base[5])
    np.testing.assert_array_equal(level[:, 7].compute(), base[:, 7])
    np.testing.assert_array_equal(level[[1, 5, 9], 3:9].compute(), base[[1, 5, 9], 3:9])
    np.testing.assert_array_equal(level[3:9, [4, 2, 300]].compute(), base[3:9, [4, 2, 300]])
    np.testing.assert_array_equal(level[::3, ::5, 1].compute(), base[::3, ::5, 1])
    np.testing.assert_array_equal(level[-2:, -3:].compute(), base[-2:, -3:])


def test_her2st_jpeg(her2st: Path) -> None:
    path = her2st / "images" / "C2.jpg"
    pil_limit = Image.MAX_IMAGE_PIXELS
    t0 = time.perf_counter()
    slide = open_slide(path)
    assert time.perf_counter() - t0 < 2.0  # header only: no decode at open time
    h, w = slide.shape
    assert 9_800 <= h <= 10_100 and 9_100 <= w <= 9_500
    assert slide.mpp is None and slide.mpp_source == "unknown"
    _check_levels(slide)
    assert len(slide.levels) == 5
    slide = open_slide(path, mpp=0.74)
    patch = read_region_at_mpp(slide, (w / 2, h / 2), (224, 224), 1.48)
    assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    assert patch.std() > 1.0  # real image content, not the white padding
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # PIL's global limit is left alone
    # the same area read from level 1 directly (exact 2× of level 0, aligned)
    cx, cy = 2 * (w // 4), 2 * (h // 4)
    patch = read_region_at_mpp(slide, (cx, cy), (100, 100), 1.48)
    ref = read_region(slide, 1, cx // 2 - 50, cy // 2 - 50, 100, 100)
    assert np.abs(patch.astype(int) - ref.astype(int)).max() <= 1


# ---- reading regions -----------------------------------------------------------------------


def test_read_region_clips_and_pads_white(tmp_path: Path) -> None:
    base = _rgb(100, 120)
    tifffile.imwrite(tmp_path / "s.tif", base, photometric="rgb")
    slide = open_slide(tmp_path / "s.tif")
    out = read_region(slide, 0, -10, 90, 30, 20)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out[:10, 10:], base[90:100, 0:20])
    assert (out[:, :10] == 255).all() and (out[10:] == 255).all()
    assert (read_region(slide, 0, 500, 500, 8, 8) == 255).all()
    with pytest.raises(IndexError):
        read_region(slide, 3, 0, 0, 1, 1)


def test_read_region_at_mpp_matches_downsample(tmp_path: Path) -> None:
    base = _rgb(1200, 1300, 7)
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, base, photometric="rgb", tile=(256, 256))
    slide = open_slide(path, mpp=0.5)
    # same resolution → exact crop (centre between pixels 400/401 → 400-200 ... 600)
    out = read_region_at_mpp(slide, (500, 400), (64, 48), 0.5)
    np.testing.assert_array_equal(out, base[376:424, 468:532])
    # 2× the µm/px → 2×2 area mean of level 0
    out = read_region_at_mpp(slide, (600, 500), (100, 80), 1.0)
    ref = _halve(base[500 - 80 : 500 + 80, 600 - 100 : 600 + 100])
    assert out.shape == (80, 100, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    # 4× → 4×4 mean
    out = read_region_at_mpp(slide, (600, 600), (50, 40), 2.0)
    ref = base[600 - 80 : 600 + 80, 600 - 100 : 600 + 100].astype(float)
    ref = ref.reshape(40, 4, 50, 4, 3).mean(axis=(1, 3))
    assert np.abs(out - ref).max() <= 1.0
    # finer than level 0 → enlarged: each source pixel covers 2×2 output pixels
    out = read_region_at_mpp(slide, (600, 600), (40, 40), 0.25)
    assert out.shape == (40, 40, 3)
    assert np.abs(out[1::2, 1::2].astype(int) - base[590:610, 590:610]).mean() < 40
    # out of bounds → white
    out = read_region_at_mpp(slide, (0, 0), (20, 20), 1.0)
    assert (out[:10, :10] == 255).all() and not (out[10:, 10:] == 255).all()


def test_read_region_at_mpp_picks_coarsest_fine_enough_level(tmp_path: Path) -> None:
    base = np.full((1024, 1024, 3), 10, np.uint8)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), subifds=2, photometric="rgb")
        tw.write(
            np.full((512, 512, 3), 100, np.uint8), tile=(256, 256), subfiletype=1, photometric="rgb"
        )
        tw.write(
            np.full((256, 256, 3), 200, np.uint8), tile=(256, 256), subfiletype=1, photometric="rgb"
        )
    slide = open_slide(path, mpp=0.5)
    assert slide.downsamples == [1.0, 2.0, 4.0]
    centre = (512.0, 512.0)
    assert (read_region_at_mpp(slide, centre, (16, 16), 0.9) == 10).all()  # 1.8× → level 0
    assert (read_region_at_mpp(slide, centre, (16, 16), 1.0) == 100).all()  # 2× → level 1
    assert (read_region_at_mpp(slide, centre, (16, 16), 1.9) == 100).all()  # 3.8× → level 1
    assert (read_region_at_mpp(slide, centre, (16, 16), 2.0) == 200).all()  # 4× → level 2
    assert (read_region_at_mpp(slide, centre, (16, 16), 8.0) == 200).all()


# ---- errors --------------------------------------------------------------------------------


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found") as info:
        open_slide(tmp_path / "nope.svs")
    assert info.value.path.endswith("nope.svs")


def test_error_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.bmp"
    Image.fromarray(_rgb(8, 8)).save(path)
    with pytest.raises(InputFileError, match="unsupported"):
        open_slide(path)


@pytest.mark.parametrize("name", ["fake.tif", "fake.svs", "fake.jpg", "fake.png", "fake.ome.tiff"])
def test_error_text_file_renamed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("sample\tgene\nA\t1\n" * 50)
    with pytest.raises(InputFileError, match="not a readable") as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_error_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.tif").write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        open_slide(tmp_path / "e.tif")


def test_error_truncated_pyramidal_tiff(tmp_path: Path) -> None:
    base = _rgb(1024, 1024, 9)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(256, 256), subifds=1, photometric="rgb", compression="zlib")
        tw.write(
            base[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib"
        )
    open_slide(path).close()  # intact file opens
    data = path.read_bytes()
    for fraction in (0.5, 0.95):
        cut = tmp_path / f"cut{fraction}.tif"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(InputFileError, match="truncated") as info:
            open_slide(cut)
        assert str(cut) in str(info.value)


def test_truncated_tiff_is_reported_without_tifffile_noise(tmp_path: Path, caplog) -> None:
    """tifffile logs "corrupted tag list" lines for a cut file; the clean error says it all."""
    import logging

    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        for k in range(4):  # several pages: tifffile logs one line per unreadable page
            tw.write(_rgb(512 >> k, 512 >> k, k), tile=(64, 64), photometric="rgb")
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.DEBUG), pytest.raises(InputFileError):
        open_slide(cut)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.text


def test_tifffile_records_pass_when_the_file_opens(caplog) -> None:
    import logging

    from napari_histoexpress.io.slides import _tifffile_log_held

    with caplog.at_level(logging.WARNING, logger="tifffile"):
        with _tifffile_log_held():
            logging.getLogger("tifffile").warning("odd but readable")
        assert "odd but readable" in caplog.text
        caplog.clear()
        with pytest.raises(InputFileError), _tifffile_log_held():
            logging.getLogger("tifffile").warning("noise before our error")
            raise InputFileError("x.tif", "truncated TIFF")
        assert "noise" not in caplog.text


def test_missing_resolution_names_no_argument(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    with open_slide(path) as slide, pytest.raises(MissingResolutionError) as info:
        read_region_at_mpp(slide, (10, 10), (8, 8), 1.0)
    assert info.value.setting == "mpp" and "mpp=" not in str(info.value)
    with pytest.raises(InputFileError, match="positive") as bad:
        open_slide(path, mpp=0)
    assert bad.value.setting == "mpp" and "mpp must" not in str(bad.value)


def test_error_truncated_jpeg_and_png(tmp_path: Path) -> None:
    for suffix in (".jpg", ".png"):
        path = tmp_path / f"full{suffix}"
        Image.fromarray(_rgb(300, 300)).save(path)
        data = path.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputFileError, match="truncated"):
            open_slide(cut)


def test_error_zero_size_tiff(tmp_path: Path) -> None:
    path = tmp_path / "zero.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(path, np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(InputFileError, match=r"zero-size|no image|not a readable"):
        open_slide(path)


def test_error_unsupported_colour_space(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, _rgb(16, 16, 1)[..., [0, 1, 2, 0]], photometric="separated")
    with pytest.raises(InputFileError, match="colour space"):
        open_slide(path)


# ---- a 50,000 × 50,000 pyramid stays lazy --------------------------------------------------


def test_huge_tiled_pyramid_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50,000² RGB (7.5 GB decoded) written from one pre-compressed 512² tile repeated.

    open_slide, a level-0 region, a region at a coarser µm/px and the whole coarsest level must
    decode only the tiles they touch: counted through the zarr store, and bounded by the
    tracemalloc peak.
    """
    from tifffile.zarr import ZarrTiffStore

    tile_side, n = 512, 50_000
    yy, xx = np.mgrid[0:tile_side, 0:tile_side]
    tile = np.stack([(yy // 64) * 32, (xx // 2) % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    encoded = imagecodecs.zlib_encode(tile)
    sizes = [n]
    while sizes[-1] >= MIN_LEVEL_SIDE:
        sizes.append(sizes[-1] // 2)

    def tiles(side: int):
        for _ in range((-(-side // tile_side)) ** 2):
            yield encoded

    path = tmp_path / "huge.tif"
    common = {
        "dtype": np.uint8,
        "tile": (tile_side, tile_side),
        "compression": "zlib",
        "photometric": "rgb",
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(n),
            shape=(n, n, 3),
            subifds=len(sizes) - 1,
            resolution=(40000, 40000),
            resolutionunit="CENTIMETER",
            **common,
        )
        for side in sizes[1:]:
            tw.write(tiles(side), shape=(side, side, 3), subfiletype=1, **common)
    assert path.stat().st_size < 200e6

    reads: list[str] = []
    original_get = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            reads.append(key)
        return await original_get(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)

    tracemalloc.start()
    try:
        slide = open_slide(path)
        assert slide.shape == (n, n) and slide.mpp == pytest.approx(0.25)
        assert [lvl.shape[0] for lvl in slide.levels] == sizes
        assert slide.levels[0].nbytes == n * n * 3
        reads_after_open = len(reads)
        region = read_region(slide, 0, 1000, 700, 600, 300)
        expected = np.tile(tile, (2, 3, 1))[700 - 512 : 1000 - 512, 1000 - 512 : 1600 - 512]
        np.testing.assert_array_equal(region, expected)
        patch = read_region_at_mpp(slide, (25_000.0, 25_000.0), (224, 224), 1.0)
        assert patch.shape == (224, 224, 3)
        coarsest = slide.levels[-1].compute()
        assert coarsest.shape == (sizes[-1], sizes[-1], 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        slide.close()
    assert reads_after_open == 0
    level0_reads = [k for k in reads if k.startswith("0/")]
    assert 0 < len(level0_reads) <= 4  # the region spans 2 × 2 tiles of level 0
    # region (≤ 4 tiles) + 224 px at 4× on level 2 (≤ 4 tiles) + the coarsest level (4 tiles)
    assert len(reads) <= 16
    assert peak < 300e6, f"peak traced memory {peak / 1e6:.0f} MB"
