"""Gene heatmaps → pyramidal, tiled OME-TIFF: what tifffile and napari read back."""

from __future__ import annotations

import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from heatmap_toys import MAP_MPP, SLIDE_MPP, heatmap_store
from napari_histoexpress.errors import InputFileError, MissingResolutionError
from napari_histoexpress.inference import heatmap_export
from napari_histoexpress.inference.heatmap_export import (
    export_heatmap_ome_tiff,
    plan_heatmap_export,
    resolve_genes,
)
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.io.heatmap_tiff import is_heatmap_tiff, open_heatmap_tiff


def _ome(path: Path) -> tuple[list[str], dict[str, str], ET.Element]:
    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
    ns = {"ome": root.tag[1:].split("}")[0]}
    names = [c.get("Name") for c in root.iterfind(".//ome:Channel", ns)]
    ann = {m.get("K"): m.text for m in root.iterfind(".//ome:M", ns)}
    pixels = root.find(".//ome:Pixels", ns)
    assert pixels is not None
    return names, ann, pixels


def _store_levels(store: DenseMapStore, genes: list[str]) -> list[np.ndarray]:
    """The store's gene maps at every level as (k, h, w) float32."""
    return [np.moveaxis(np.asarray(store.gene_maps(genes, k)), 2, 0) for k in range(store.n_levels)]


def test_map_grid_file_holds_the_store_levels(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    out = tmp_path / "ERBB2.ome.tif"
    result = export_heatmap_ome_tiff(store, ["ERBB2", "KRT19"], out, mask=True)
    assert result.path == out and out.is_file()
    assert result.channels == ["ERBB2", "KRT19", "predicted"] and result.mpp == MAP_MPP
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp

    refs = _store_levels(store, ["ERBB2", "KRT19"])
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.is_bigtiff
        series = tif.series[0]
        assert series.axes == "CYX" and series.dtype == np.float32
        assert [lv.shape for lv in series.levels] == [(3, *r.shape[1:]) for r in refs]
        assert len(series.levels) == store.n_levels > 2
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert len(page.subifds) == store.n_levels - 1  # the pyramid in SubIFDs
        x_res = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        assert 1e4 * x_res[1] / x_res[0] == pytest.approx(MAP_MPP)
        for k, lv in enumerate(series.levels):
            data = lv.asarray()
            ref = refs[k]
            background = np.isnan(ref)
            assert background.any() and not background.all()
            # background written as 0 (the default), predicted values as the viewer's
            np.testing.assert_array_equal(data[:2][background], 0.0)
            np.testing.assert_allclose(
                data[:2][~background], ref[~background], rtol=1e-6, atol=1e-6
            )
            np.testing.assert_array_equal(data[2], (~background[0]).astype(np.float32))

    names, ann, pixels = _ome(out)
    assert names == ["ERBB2", "KRT19", "predicted"]
    assert float(pixels.get("PhysicalSizeX")) == MAP_MPP == float(pixels.get("PhysicalSizeY"))
    assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("Type") == "float"
    assert ann["grid"] == "map" and ann["background"] == "zero"
    assert float(ann["slide_mpp"]) == SLIDE_MPP and ann["map_store"] == str(store.path)
    assert ann["units"] == "log1p(counts per 10000)"
    lo, hi = (float(v) for v in ann["contrast_limits.ERBB2"].split())
    coarse = refs[-1][0]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(coarse[np.isfinite(coarse)], [1, 99])))


def test_nan_background_and_one_gene(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    out = tmp_path / "x.ome.tiff"
    export_heatmap_ome_tiff(store, ["COL1A1"], out, background="nan", tile_px=64)
    with tifffile.TiffFile(out) as tif:
        assert (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (64, 64)
        levels = [lv.asarray() for lv in tif.series[0].levels]
    for k, data in enumerate(levels):
        ref = np.asarray(store.gene_map("COL1A1", k))
        assert data.shape == ref.shape  # one channel: tifffile squeezes C
        np.testing.assert_array_equal(np.isnan(data), np.isnan(ref))
        np.testing.assert_allclose(data, ref, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_slide_grid_matches_the_slide_pixel_for_pixel(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    out = tmp_path / "slide.ome.tif"
    result = export_heatmap_ome_tiff(store, ["ERBB2"], out, grid="slide", background="nan")
    slide_shape = store.slide_shape
    assert slide_shape is not None and result.shape == (1, *slide_shape)
    assert result.mpp == SLIDE_MPP
    maps = [np.asarray(store.gene_map("ERBB2", k)) for k in range(store.n_levels)]
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        level0 = series.levels[0].asarray()
        assert level0.shape == slide_shape
        # slide pixel (y, x) holds the map pixel under its centre (16 slide px per map px)
        ys = np.arange(0, slide_shape[0], 7)
        xs = np.arange(0, slide_shape[1], 5)
        want = maps[0][np.ix_(((ys + 0.5) * SLIDE_MPP / MAP_MPP).astype(int),
                              ((xs + 0.5) * SLIDE_MPP / MAP_MPP).astype(int))]  # fmt: skip
        np.testing.assert_allclose(level0[np.ix_(ys, xs)], want, rtol=1e-6, equal_nan=True)
        # level 4 has the map's pixels (8 µm): the map's level 0; level 5 its level 1
        for k, m in ((4, 0), (5, 1)):
            data = series.levels[k].asarray()
            h, w = min(data.shape[0], maps[m].shape[0]), min(data.shape[1], maps[m].shape[1])
            np.testing.assert_allclose(data[:h, :w], maps[m][:h, :w], rtol=1e-6, equal_nan=True)
    _names, ann, pixels = _ome(out)
    assert float(pixels.get("PhysicalSizeX")) == SLIDE_MPP and ann["grid"] == "slide"


def test_memory_stays_flat_and_tiles_are_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4,000 × 4,000 px level 0 (64 MB of float32 per gene) is written with a peak of a
    few bands of tiles, from an iterator (never a whole level)."""
    store = heatmap_store(tmp_path / "m.zarr", map_shape=(250, 250), slide_shape=(4000, 4000))
    seen: list[type] = []
    write = tifffile.TiffWriter.write

    def spy(self, data=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(type(data))
        return write(self, data, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", spy)
    out = tmp_path / "big.ome.tif"
    tracemalloc.start()
    try:
        result = export_heatmap_ome_tiff(store, ["ERBB2"], out, grid="slide")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = 4000 * 4000 * 4
    assert result.shape == (1, 4000, 4000)
    assert peak < full / 4, f"peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB level"
    assert seen and all(not issubclass(t, np.ndarray) for t in seen)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].levels[0].shape == (4000, 4000)


def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    out = tmp_path / "h.ome.tif"
    out.write_bytes(b"the good old file")

    def boom(done: int, total: int) -> None:
        if done == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        export_heatmap_ome_tiff(store, ["ERBB2", "KRT19"], out, progress=boom)
    assert out.read_bytes() == b"the good old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.ome.tif", "m.zarr"]


def test_progress_counts_every_tile(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    calls: list[tuple[int, int]] = []
    export_heatmap_ome_tiff(
        store,
        ["ERBB2"],
        tmp_path / "p.ome.tif",
        tile_px=64,
        progress=lambda d, t: calls.append((d, t)),
    )
    plan = plan_heatmap_export(store, ["ERBB2"], tile_px=64)
    assert calls[-1] == (plan.n_tiles, plan.n_tiles) and len(calls) == plan.n_tiles


def test_genes_are_resolved_or_refused_with_close_matches(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    assert resolve_genes(store, ["her2", "krt19", "ERBB2"]) == ["ERBB2", "KRT19"]
    with pytest.raises(InputFileError, match=r"ERBB3 \(did you mean ERBB2\?\).*3 genes: ERBB2"):
        resolve_genes(store, ["ERBB3", "KRT19"])
    with pytest.raises(InputFileError, match="no genes"):
        resolve_genes(store, [])


def test_bad_outputs_and_missing_slide_info_fail_before_writing(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    with pytest.raises(InputFileError, match=r"ends in \.ome\.tif"):
        export_heatmap_ome_tiff(store, ["ERBB2"], tmp_path / "h.tif")
    with pytest.raises(InputFileError, match="does not exist"):
        export_heatmap_ome_tiff(store, ["ERBB2"], tmp_path / "nope" / "h.ome.tif")
    with pytest.raises(ValueError, match="multiple of 16"):
        export_heatmap_ome_tiff(store, ["ERBB2"], tmp_path / "h.ome.tif", tile_px=100)
    bare = DenseMapStore.create(
        tmp_path / "bare.zarr",
        map_shape=(40, 30),
        feature_dim=2,
        genes=["A"],
        head_W=np.ones((2, 1)),
        head_b=np.zeros(1),
        map_mpp=4.0,
    )
    bare.write_all(np.ones((40, 30, 2), np.float32))
    with pytest.raises(MissingResolutionError, match="map's own grid"):
        export_heatmap_ome_tiff(bare, ["A"], tmp_path / "b.ome.tif", grid="slide")
    result = export_heatmap_ome_tiff(bare, ["A"], tmp_path / "b.ome.tif")
    assert any("not complete" in w for w in result.warnings)
    assert list(tmp_path.glob("*.ome.tif")) == [tmp_path / "b.ome.tif"]


def test_the_plugin_reads_it_back_as_heatmap_layers(tmp_path: Path) -> None:
    """napari's reader of this plugin: one multiscale heatmap layer per gene, in µm, aligned
    as the Genes widget's layer, background transparent (NaN) from the mask channel."""
    from napari_histoexpress import _reader
    from napari_histoexpress._layers import gene_heatmap_layer_data

    store = heatmap_store(tmp_path / "m.zarr")
    out = tmp_path / "h.ome.tif"
    export_heatmap_ome_tiff(store, ["ERBB2", "KRT19"], out, mask=True)
    assert is_heatmap_tiff(out)
    reader = _reader.get_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    assert [kw["name"] for _, kw, _ in layers] == ["ERBB2", "KRT19"]
    ref_data, ref_kw, _ = gene_heatmap_layer_data(store, "ERBB2")
    data, kw, kind = layers[0]
    assert kind == "image" and kw["multiscale"]
    assert kw["scale"] == ref_kw["scale"] == (MAP_MPP, MAP_MPP)
    assert kw["translate"] == pytest.approx(ref_kw["translate"])
    assert kw["contrast_limits"] == pytest.approx(ref_kw["contrast_limits"])
    assert kw["metadata"]["histoexpress"] == "heatmap" and kw["metadata"]["gene"] == "ERBB2"
    assert len(data) == len(ref_data)
    for lv, ref in zip(data, ref_data, strict=True):
        np.testing.assert_allclose(np.asarray(lv), np.asarray(ref), rtol=1e-6, equal_nan=True)

    hm = open_heatmap_tiff(out)
    assert hm.genes == ["ERBB2", "KRT19"] and hm.mpp == MAP_MPP and hm.grid == "map"
    # a slide-grid file sits on the slide's own pixels: no translate
    slide_file = tmp_path / "s.ome.tif"
    export_heatmap_ome_tiff(store, ["ERBB2"], slide_file, grid="slide", background="nan")
    ((_, skw, _),) = _reader.read(str(slide_file))
    assert skw["scale"] == (SLIDE_MPP, SLIDE_MPP) and skw["translate"] == (0.0, 0.0)


def test_an_ordinary_ome_tiff_is_still_a_slide(tmp_path: Path) -> None:
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert not is_heatmap_tiff(path)
    from napari_histoexpress import _reader

    assert _reader._kind(path) == "slide"


def test_level_plan_follows_the_store(tmp_path: Path) -> None:
    store = heatmap_store(tmp_path / "m.zarr")
    plan = heatmap_export.plan_heatmap_export(store, ["ERBB2"])
    assert plan.level_shapes == [
        tuple(store.gene_map("ERBB2", k).shape) for k in range(store.n_levels)
    ]
