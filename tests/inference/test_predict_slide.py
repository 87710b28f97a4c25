"""Whole-slide tiled dense inference: seamless tiles, background skipping, resume, memory."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from dense_toys import MEAN, STD, TinyDense, ToyDense
from napari_histoexpress.errors import InputFileError, MissingResolutionError
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_slide import predict_slide


def tissue_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Pink/purple textured RGB uint8 image (saturated everywhere: all tissue)."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 170], dtype=np.float32)
    noise = rng.normal(0, 30, size=(h, w, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    wave = (20 * np.sin(xx / 7.0) * np.cos(yy / 11.0))[..., None]
    return np.clip(base + noise + wave, 0, 255).astype(np.uint8)


def whole_image_features(model: TinyDense, img: np.ndarray, pad: int = 32) -> np.ndarray:
    """The reference: the model on the whole (white-padded) image at once, (H_map, W_map, C)."""
    s = model.feature_stride
    h, w = img.shape[:2]
    hm, wm = -(-h // s), -(-w // s)
    padded = np.full((hm * s + 2 * pad, wm * s + 2 * pad, 3), 255, np.uint8)
    padded[pad : pad + h, pad : pad + w] = img
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        y = model.features(x)[0].numpy()
    c = pad // s
    return np.moveaxis(y[:, c : c + hm, c : c + wm], 0, -1)


def read_features(path: Path) -> np.ndarray:
    return np.asarray(DenseMapStore.open(path).features_level(0).compute())


def test_tiled_map_equals_whole_image_map(tmp_path: Path) -> None:
    model = TinyDense()
    img = tissue_like(500, 600)
    ref = whole_image_features(model, img)
    kw = dict(model_mpp=None, tile_px=128, device="cpu", dtype="float32", batch_size=3)
    rep = predict_slide(model, img, tmp_path / "a.zarr", halo_px=32, skip_background=False, **kw)
    assert rep.n_tiles == 4 * 5 and rep.n_computed == 20 and rep.status == "complete"
    tiled = read_features(tmp_path / "a.zarr")
    assert tiled.shape == ref.shape == (250, 300, 6)
    np.testing.assert_allclose(tiled, ref, rtol=1e-4, atol=1e-4)

    # without halo the tile borders see zero padding: the maps differ along the seams
    predict_slide(model, img, tmp_path / "b.zarr", halo_px=0, skip_background=False, **kw)
    no_halo = read_features(tmp_path / "b.zarr")
    err = np.abs(no_halo - ref).max(axis=2)
    assert err.max() > 1e-2
    # ... and only there: a 13 px receptive field reaches 3 map px (stride 2) across a seam
    far_y = np.abs((np.arange(250) + 32) % 64 - 32) > 4
    far_x = np.abs((np.arange(300) + 32) % 64 - 32) > 4
    assert err[np.ix_(far_y, far_x)].max() < 1e-4
    assert err[np.ix_(~far_y, far_x)].max() > 1e-2


def test_tiled_resampled_slide_matches_whole_image(tmp_path: Path) -> None:
    """A TIFF at 0.25 µm/px run at 0.5 µm/px: windows are resampled on one global grid."""
    img = tissue_like(400, 520, seed=1)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, img, tile=(128, 128), resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER", photometric="rgb")  # fmt: skip
    model = TinyDense()
    rep = predict_slide(
        model, path, tmp_path / "m.zarr", model_mpp=0.5, tile_px=64, halo_px=16,
        device="cpu", dtype="float32", skip_background=False,
    )  # fmt: skip
    store = DenseMapStore.open(tmp_path / "m.zarr")
    assert store.map_mpp == pytest.approx(1.0)
    assert store.attrs["slide"]["mpp"] == pytest.approx(0.25)
    assert store.map_shape == (100, 130) and rep.n_tiles == 4 * 5
    # the reference: the whole slide downsampled 2x (box mean, as read_region_at_mpp does)
    half = img.reshape(200, 2, 260, 2, 3).astype(np.float32).mean(axis=(1, 3))
    half = np.floor(half + 0.5).astype(np.uint8)
    ref = whole_image_features(model, half)
    got = np.asarray(store.features_level(0).compute())
    # PIL rounds its box means slightly differently from ours: compare loosely, but far
    # below the no-halo seam error checked above
    assert np.abs(got - ref).mean() < 2e-3
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999


def test_background_tiles_are_skipped_and_flagged(tmp_path: Path) -> None:
    img = np.full((256, 512, 3), 255, np.uint8)
    img[:, :200] = tissue_like(256, 200)  # tissue in tile columns 0 and 1 (of 4 x 128 px)
    model = TinyDense()
    seen: list[tuple[int, int]] = []
    rep = predict_slide(
        model, img, tmp_path / "m.zarr", model_mpp=None, tile_px=128, halo_px=16,
        device="cpu", batch_size=2, progress=lambda d, t: seen.append((d, t)),
    )  # fmt: skip
    store = DenseMapStore.open(tmp_path / "m.zarr")
    assert rep.n_tiles == 8
    assert rep.n_skipped_background == 4 and rep.n_computed == 4
    assert "4 background" in rep.summary()
    assert model.n_tiles_seen == 4  # background tiles never reached the model
    # progress counts the tissue tiles only: it starts at 0 %, not at the skipped half
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    np.testing.assert_array_equal(store.coverage, [[1, 1, 2, 2], [1, 1, 2, 2]])
    assert store.done_mask.all() and store.status == "complete"
    feats = np.asarray(store.features_level(0).compute())
    assert np.isnan(feats[:, 128:]).all()  # never computed: missing, not the fill value
    assert np.isfinite(feats[:, :128]).all() and np.abs(feats[:, :64]).sum() > 0
    coarse = np.asarray(store.gene_map(0, level=store.n_levels - 1).compute())
    assert np.isnan(coarse[:, -1]).all() and np.isfinite(coarse[:, 0]).all()
    assert store.tissue is not None and store.tissue[:, : store.tissue.shape[1] // 3].mean() > 0.9


def test_resume_after_stop_computes_only_the_rest(tmp_path: Path) -> None:
    img = tissue_like(300, 300, seed=3)
    kw = dict(model_mpp=None, tile_px=64, halo_px=16, device="cpu", dtype="float32",
              batch_size=1, skip_background=False)  # fmt: skip
    full = predict_slide(TinyDense(), img, tmp_path / "full.zarr", **kw)
    assert full.n_tiles == 25

    calls = {"n": 0}

    def stop_after_7() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    part = predict_slide(TinyDense(), img, tmp_path / "r.zarr", should_stop=stop_after_7, **kw)
    store = DenseMapStore.open(tmp_path / "r.zarr")
    assert part.n_computed == 7 and part.status == "partial" and store.status == "partial"
    assert int(store.done_mask.sum()) == 7
    assert store.attrs["pyramid_levels"] == 0

    model = TinyDense()
    rest = predict_slide(model, img, tmp_path / "r.zarr", **kw)
    assert rest.n_already_done == 7 and rest.n_computed == 18 and model.n_tiles_seen == 18
    assert rest.status == "complete"
    np.testing.assert_allclose(
        read_features(tmp_path / "r.zarr"), read_features(tmp_path / "full.zarr"), atol=1e-6
    )


def test_kill_from_progress_callback_then_resume(tmp_path: Path) -> None:
    img = tissue_like(256, 192, seed=4)
    kw = dict(model_mpp=None, tile_px=64, halo_px=16, device="cpu", batch_size=2,
              skip_background=False)  # fmt: skip

    def boom(done: int, total: int) -> None:
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_slide(TinyDense(), img, tmp_path / "k.zarr", progress=boom, **kw)
    store = DenseMapStore.open(tmp_path / "k.zarr")
    assert store.status == "partial" and int(store.done_mask.sum()) == 5
    seen: list[tuple[int, int]] = []
    rep = predict_slide(
        TinyDense(), img, tmp_path / "k.zarr", progress=lambda d, t: seen.append((d, t)), **kw
    )
    assert rep.n_computed == 12 - 5 and rep.status == "complete"
    assert rep.n_already_done == 5
    # the resumed run counts the tiles it computes: 0 of 7 first, 7 of 7 at the end
    assert seen[0] == (0, 7) and seen[-1] == (7, 7) and len(seen) == 8


def test_resume_refuses_a_different_model_or_geometry(tmp_path: Path) -> None:
    img = tissue_like(128, 128)
    kw = dict(model_mpp=None, device="cpu", skip_background=False, halo_px=16)
    out = tmp_path / "m.zarr"
    predict_slide(TinyDense(seed=0), img, out, tile_px=64, should_stop=lambda: True, **kw)
    with pytest.raises(InputFileError, match="head weights"):
        predict_slide(TinyDense(seed=1), img, out, tile_px=64, **kw)
    with pytest.raises(InputFileError, match="tile_px") as info:
        predict_slide(TinyDense(seed=0), img, out, tile_px=32, **kw)
    assert info.value.setting == "restart" and "starting over replaces it" in str(info.value)
    assert "resume=" not in str(info.value)  # no Python argument in a user message
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    with pytest.raises(InputFileError, match="cannot resume this map store") as info:
        predict_slide(TinyDense(seed=0), img, broken, tile_px=64, **kw)
    assert info.value.setting == "restart" and "resume=" not in str(info.value)
    rep = predict_slide(TinyDense(seed=1), img, out, tile_px=64, resume=False, **kw)
    assert rep.n_computed == 4 and rep.status == "complete"


def test_unknown_resolution_is_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(MissingResolutionError, match="µm/px is unknown") as info:
        predict_slide(TinyDense(), tissue_like(64, 64), tmp_path / "m.zarr", model_mpp=0.5)
    # the CLI and the widgets add their own hint (--mpp, the µm/px field) from .setting
    assert info.value.setting == "mpp"
    assert "slide_mpp" not in str(info.value) and "mpp=" not in str(info.value)


def test_provenance_and_attrs(tmp_path: Path) -> None:
    img = tissue_like(100, 100)
    predict_slide(
        TinyDense(), img, tmp_path / "m.zarr", model_mpp=1.0, slide_mpp=0.5, tile_px=32,
        halo_px=None, device="cpu", provenance={"run_dir": "/runs/x"},
    )  # fmt: skip
    a = DenseMapStore.open(tmp_path / "m.zarr").attrs
    assert a["halo_px"] == 8  # ceil(13 / 2) = 7, rounded up to the stride
    assert a["model_mpp"] == 1.0 and a["map_mpp"] == 2.0 and a["stride"] == 2
    assert a["map_shape"] == [25, 25] and a["working_shape"] == [50, 50]
    assert a["provenance"]["run_dir"] == "/runs/x"
    assert a["provenance"]["model_name"] == "TinyDense" and a["provenance"]["torch_version"]
    assert a["genes"] == [f"G{i}" for i in range(5)]


class PatchDense(ToyDense):
    """A cheap stride-4 dense model (patchify conv + 3x3 conv) for the memory test."""

    stride = 4
    dim = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((8, 2)), np.zeros(2)


def _peak_predicting(tmp_path: Path, side: int) -> tuple[int, int]:
    """Write a side x side tiled TIFF tile by tile, predict it; traced peak and tiles."""
    path = tmp_path / f"slide{side}.tif"
    tile = tissue_like(256, 256, seed=5)
    n_file_tiles = (-(-side // 256)) ** 2
    tifffile.imwrite(path, (tile for _ in range(n_file_tiles)), shape=(side, side, 3),
                     dtype=np.uint8, tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip
    gc.collect()
    tracemalloc.start()
    try:
        rep = predict_slide(
            PatchDense(), path, tmp_path / f"m{side}.zarr", model_mpp=0.5, tile_px=1024,
            halo_px=32, device="cpu", batch_size=1, dtype="float32", build_pyramid=False,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.status == "complete"
    return peak, rep.n_computed


def test_memory_stays_bounded_on_a_larger_slide(tmp_path: Path) -> None:
    """2000 px vs 4000 px slides (4x the pixels, tiles and map): the traced peak (numpy, zarr
    and Python allocations) barely grows and stays far below the slide or the map.

    What remains is per-window: a window crossing the 2048 px dask chunks of the bigger slide
    is assembled from up to four pieces (a few MB here, whatever the slide size)."""
    small, n_small = _peak_predicting(tmp_path, 2000)
    big, n_big = _peak_predicting(tmp_path, 4000)
    assert (n_small, n_big) == (4, 16)
    slide_small, slide_big = 2000 * 2000 * 3, 4000 * 4000 * 3  # 12 MB, 48 MB
    map_big = 1000 * 1000 * 8 * 4  # 32 MB of float32 features
    msg = f"peak {small / 1e6:.1f} MB -> {big / 1e6:.1f} MB"
    # proportional growth would add >= 36 MB (the slide) + 24 MB (the map); allow the few MB
    # of per-window assembly (measured 4-6 MB depending on allocator/scheduler timing)
    assert big - small < 0.3 * (slide_big - slide_small), msg
    assert big < 0.5 * slide_big and big < 0.75 * map_big, msg


def test_runs_the_package_pixnet(tmp_path: Path) -> None:
    """PixNet through its input spec (self-normalising features, windows on the encoder's
    32 px grid) and gene head (W as (C, G))."""
    pixnet = pytest.importorskip("napari_histoexpress.models.pixnet")
    model = pixnet.PixNet(pixnet.PixNetConfig(n_genes=3, decoder_dim=8))
    img = tissue_like(96, 128, seed=7)
    rep = predict_slide(
        model, img, tmp_path / "p.zarr", model_mpp=None, tile_px=64, halo_px=32,
        device="cpu", dtype="float32", skip_background=False,
    )  # fmt: skip
    store = DenseMapStore.open(tmp_path / "p.zarr")
    s = model.output_stride
    assert rep.status == "complete" and store.map_shape == (96 // s, 128 // s)
    assert store.attrs["input_multiple"] == 32  # resnet18's total downsampling
    feats = np.asarray(store.features_level(0).compute())
    with torch.inference_mode():  # the head applied by torch equals the store's gene map
        ref = model.head(torch.from_numpy(np.moveaxis(feats, -1, 0))[None])[0, 2].numpy()
    np.testing.assert_allclose(store.gene_map(2).compute(), ref, rtol=1e-4, atol=1e-5)
    # the window was normalised once (by PixNet), not twice: compare one tile with PixNet
    x = np.full((128, 128, 3), 255, np.uint8)  # tile (0, 0): window rows/cols -32..96
    x[32:, 32:] = img[:96, :96]
    with torch.inference_mode():
        direct = model.features(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0)
    c = 32 // s
    expected = np.moveaxis(direct[0, :, c : c + 64 // s, c : c + 64 // s].numpy(), 0, -1)
    np.testing.assert_allclose(feats[: 64 // s, : 64 // s], expected, rtol=1e-4, atol=1e-4)


def test_mixed_precision_path_matches_float32(tmp_path: Path) -> None:
    """The autocast path (bf16 on CUDA by default) run as CPU bf16: the convolutions really
    run in bfloat16, the stored map stays float32-valued and within bf16 error of float32,
    and the store records the precision used."""
    pixnet = pytest.importorskip("napari_histoexpress.models.pixnet")
    model = pixnet.PixNet(pixnet.PixNetConfig(n_genes=3, decoder_dim=8))
    img = tissue_like(96, 128, seed=3)
    seen: list[torch.dtype] = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    kw = dict(model_mpp=None, tile_px=64, halo_px=32, device="cpu", dtype="float32",
              skip_background=False)  # fmt: skip
    predict_slide(model, img, tmp_path / "fp32.zarr", precision="fp32", **kw)
    assert set(seen) == {torch.float32}
    seen.clear()
    predict_slide(model, img, tmp_path / "bf16.zarr", precision="bf16", **kw)
    handle.remove()
    assert set(seen) == {torch.bfloat16}
    ref, mixed = read_features(tmp_path / "fp32.zarr"), read_features(tmp_path / "bf16.zarr")
    assert mixed.dtype == np.float32 and np.isfinite(mixed).all()
    rel = np.abs(mixed - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.05, rel  # bf16 has 8 mantissa bits: different, but close
    assert np.corrcoef(mixed.ravel(), ref.ravel())[0, 1] > 0.999
    prov = DenseMapStore.open(tmp_path / "bf16.zarr").attrs["provenance"]
    assert prov["autocast"] == "torch.bfloat16" and prov["device"] == "cpu"
    prov = DenseMapStore.open(tmp_path / "fp32.zarr").attrs["provenance"]
    assert prov["autocast"] == "float32"
    with pytest.raises(ValueError, match="precision"):
        predict_slide(model, img, tmp_path / "x.zarr", precision="half", **kw)


def test_a_model_without_the_dense_interface_is_refused(tmp_path: Path) -> None:
    """Duck-typed models are not probed: predict_slide takes a DenseModel only."""

    class Duck(nn.Module):
        feature_stride = 2
        feature_dim = 6

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1, ::2, ::2].repeat(1, 6, 1, 1)

    with pytest.raises(TypeError, match="Duck is not a DenseModel"):
        predict_slide(Duck(), tissue_like(64, 64), tmp_path / "m.zarr", model_mpp=None)
    assert not (tmp_path / "m.zarr").exists()


def test_steps_compose_like_predict_slide(tmp_path: Path) -> None:
    """The named steps (plan, store, background, tiles, finish) give predict_slide's map."""
    import time

    from napari_histoexpress.inference import predict_slide as ps

    img = tissue_like(160, 192, seed=2)
    kw = dict(model_mpp=None, tile_px=64, halo_px=16, device="cpu", dtype="float32")
    predict_slide(TinyDense(), img, tmp_path / "a.zarr", **kw)
    slide, _ = ps._as_slide(img, None)
    model = TinyDense()
    plan = ps.plan_prediction(model, slide, model_mpp=None, tile_px=64, halo_px=16)
    assert plan.map_shape == (80, 96) and plan.grid == (3, 3) and len(plan.tiles) == 9
    assert plan.align == 2 and plan.genes == model.genes
    store, resumed = ps.open_map_store(model, plan, slide, tmp_path / "b.zarr", dtype="float32")
    assert not resumed
    assert ps.mark_background(store, slide, plan) == 0  # all tissue
    t0 = time.perf_counter()
    run = ps.run_tiles(model, slide, store, plan, device="cpu")
    assert run.n_computed == 9 and not run.stopped
    report = ps.finish_prediction(store, plan, run, n_already_done=0, t_start=t0)
    assert report.status == "complete" and report.n_tiles == 9
    np.testing.assert_array_equal(
        read_features(tmp_path / "b.zarr"), read_features(tmp_path / "a.zarr")
    )
