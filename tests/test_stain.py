"""Stain robustness (napari_histoexpress.stain): HED augmentation and stain normalisation.

Tests without ../shared use the shipped synthetic H&E sample (rendered with Beer–Lambert
and the Macenko reference stain vectors); the her2st tests use real sections C2..C4.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.color import rgb2hed, rgb2lab

from napari_histoexpress import stain
from napari_histoexpress.errors import SETTINGS, SettingError
from napari_histoexpress.stain import (
    StainConfig,
    StainNormalizer,
    draw_hed_params,
    hed_augment,
    hed_perturb,
    hed_to_rgb,
    reference_patch,
    rgb_to_hed,
    tissue_mask,
)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "synthetic_tissue.ome.tif"
METHODS = ("macenko", "reinhard")
#: A strong, fixed stain shift (H darker, E paler, a bluish/pinkish cast): alpha, beta.
SHIFT = ([[1.35, 0.7, 1.0]], [[0.05, 0.1, 0.03]])


@functools.cache
def _synthetic_level1() -> np.ndarray:
    with tifffile.TiffFile(SAMPLE) as tif:
        return np.asarray(tif.series[0].levels[1].asarray())


def synthetic_crop() -> np.ndarray:
    """A 256² tissue-rich (80 %) crop of the sample slide at 1 µm/px."""
    return np.array(_synthetic_level1()[256:512, 1024:1280])


def synthetic_glass_crop() -> np.ndarray:
    """A 256² crop of the sample slide with no tissue (its lavender glass)."""
    return np.array(_synthetic_level1()[1280:1536, 1280:1536])


@functools.cache
def her2st_crop(her2st: Path, section: str, size: int = 256) -> np.ndarray:
    """The most tissue-rich ``size``² block (grid-aligned) of a section at ~1.5 µm/px."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(her2st / "images" / f"{section}.jpg")
        img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))  # JPEG DCT scaling: fast
        image = np.asarray(img.convert("RGB"))
    h, w = (s // size * size for s in image.shape[:2])
    step = 4  # tissue fractions from every 4th pixel: enough to rank blocks
    mask = tissue_mask(image[:h:step, :w:step])
    k = size // step
    frac = mask.reshape(h // size, k, w // size, k).mean(axis=(1, 3))
    r, c = np.unravel_index(int(np.argmax(frac)), frac.shape)
    crop = np.ascontiguousarray(image[r * size : (r + 1) * size, c * size : (c + 1) * size])
    crop.setflags(write=False)  # cached: shared between tests
    return crop


def to_batch(*images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (
        torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images]).to(dtype)
        / 255.0
    )


def to_uint8(batch: torch.Tensor, k: int = 0) -> np.ndarray:
    return (batch[k].permute(1, 2, 0).double().numpy() * 255).round().astype(np.uint8)


def shifted(image: np.ndarray) -> np.ndarray:
    alpha, beta = (torch.tensor(v) for v in SHIFT)
    return to_uint8(hed_perturb(to_batch(image), alpha, beta))


def delta_e(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean CIE76 ΔE over ``mask`` (skimage Lab, independent of torchstain's)."""
    return float(np.linalg.norm(rgb2lab(a) - rgb2lab(b), axis=-1)[mask].mean())


def tissue_lab_mean(image: np.ndarray) -> np.ndarray:
    return rgb2lab(image)[tissue_mask(image)].mean(axis=0)


def stain_angles(image: np.ndarray, he_ref: np.ndarray) -> np.ndarray:
    """Angles (degrees) between the image's Macenko H and E vectors and ``he_ref``'s."""
    he = np.asarray(StainNormalizer.fit("macenko", image).he_ref)
    cos = (he * he_ref).sum(0) / np.linalg.norm(he, axis=0) / np.linalg.norm(he_ref, axis=0)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# ----------------------------------------------------------------------------- HED space


def test_rgb_to_hed_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noise[0, :3] = [[0, 0, 0], [255, 255, 255], [0, 255, 128]]  # floor and white
    for image in (synthetic_crop(), noise):
        for dtype in (torch.float32, torch.float64):
            ours = rgb_to_hed(to_batch(image, dtype=dtype))[0].permute(1, 2, 0).double().numpy()
            expected = rgb2hed(image)  # OD / ln(1e6), clipped at 0
            tol = 1e-6 if dtype == torch.float32 else 1e-12
            np.testing.assert_allclose(np.maximum(ours / np.log(1e6), 0), expected, atol=tol)
    np.testing.assert_allclose(stain.HED_FROM_RGB @ stain.RGB_FROM_HED, np.eye(3), atol=1e-12)


def test_hed_to_rgb_inverts_rgb_to_hed() -> None:
    x = to_batch(synthetic_crop(), dtype=torch.float64)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x)), x.clamp_min(1e-6), atol=1e-12)


def test_zero_strength_is_identity_and_draws_nothing() -> None:
    x = to_batch(synthetic_crop(), synthetic_glass_crop())
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = hed_augment(x, 0.0, 0.0, generator=gen)
    assert out is x and torch.equal(out, x.clone())
    assert torch.equal(gen.get_state(), state)
    assert StainConfig().augment(x, gen) is x and not StainConfig().augments


def test_alpha_one_beta_zero_round_trips() -> None:
    x = to_batch(synthetic_crop(), synthetic_glass_crop())
    out = hed_perturb(x, torch.ones(2, 3), torch.zeros(2, 3))
    assert out.dtype == x.dtype and out.shape == x.shape
    assert float((out - x).abs().max()) <= 2e-6  # float32; pixels at 0 become 1e-6


@pytest.mark.parametrize(("sigma", "bias"), [(0.05, 0.05), (0.2, 0.0), (0.0, 0.2)])
def test_augmentation_changes_stains_within_bounds(sigma: float, bias: float) -> None:
    x = to_batch(synthetic_crop(), synthetic_crop()[::-1], dtype=torch.float64)
    alpha, beta = draw_hed_params(2048, sigma, bias, generator=torch.Generator().manual_seed(0))
    assert alpha.shape == beta.shape == (2048, 3) and alpha.device.type == "cpu"
    assert float(alpha.min()) >= 1 - sigma and float(alpha.max()) <= 1 + sigma
    assert float(beta.abs().max()) <= bias
    # the draws fill their boxes (not a constant): within 1 % of both ends
    if sigma:
        assert float(alpha.min()) < 1 - 0.98 * sigma and float(alpha.max()) > 1 + 0.98 * sigma
    if bias:
        assert float(beta.min()) < -0.98 * bias and float(beta.max()) > 0.98 * bias

    a, b = draw_hed_params(2, sigma, bias, generator=torch.Generator().manual_seed(11))
    out = hed_augment(x, sigma, bias, generator=torch.Generator().manual_seed(11))
    assert out.dtype == x.dtype and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)
    # where nothing was clamped, every stain channel is exactly s * alpha + beta
    h_in, h_out = rgb_to_hed(x), rgb_to_hed(out)
    unclamped = ((out > 1e-6) & (out < 1) & (x > 1e-6)).all(dim=1, keepdim=True)
    expected = h_in * a[:, :, None, None].double() + b[:, :, None, None].double()
    assert unclamped.float().mean() > 0.5
    assert torch.allclose(h_out[unclamped.expand_as(h_out)], expected[unclamped.expand_as(h_out)])


def test_same_seed_same_images() -> None:
    x = to_batch(synthetic_crop(), synthetic_glass_crop())
    first = hed_augment(x, 0.1, 0.05, generator=torch.Generator().manual_seed(7))
    again = hed_augment(x, 0.1, 0.05, generator=torch.Generator().manual_seed(7))
    other = hed_augment(x, 0.1, 0.05, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # per image: the two images get different draws
    a, _ = draw_hed_params(2, 0.1, 0.05, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(a[0], a[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gets_the_cpu_draws() -> None:
    x = to_batch(synthetic_crop(), synthetic_glass_crop())
    cpu = hed_augment(x, 0.1, 0.05, generator=torch.Generator().manual_seed(5))
    gpu = hed_augment(x.cuda(), 0.1, 0.05, generator=torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    norm = StainNormalizer.fit("macenko", synthetic_crop())
    assert torch.equal(norm.apply_torch(x.cuda()).cpu(), norm.apply_torch(x))


def test_augmentation_rejects_bad_strengths() -> None:
    x = to_batch(synthetic_crop())
    with pytest.raises(SettingError) as err:
        hed_augment(x, -0.1, 0.0)
    assert err.value.setting == "stain_augment_sigma"
    with pytest.raises(SettingError) as err:
        hed_augment(x, 0.0, float("nan"))
    assert err.value.setting == "stain_augment_bias"
    with pytest.raises(SettingError):
        hed_augment(x, 1.5, 0.0)  # alpha could be negative
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        hed_augment(x[0], 0.05, 0.05)


# -------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("method", METHODS)
def test_normalisation_undoes_a_stain_shift(method: str) -> None:
    """A colour-shifted copy and the reference come out nearly alike (ΔE < 40 % of the
    shift's); Reinhard maps the reference onto itself."""
    ref = synthetic_crop()
    moved = shifted(ref)
    norm = StainNormalizer.fit(method, ref)
    mask = tissue_mask(ref)
    before = delta_e(moved, ref, mask)
    after = delta_e(norm.apply_numpy(moved), norm.apply_numpy(ref), mask)
    assert before > 8
    assert after < 0.4 * before, (before, after)
    if method == "reinhard":
        assert np.abs(norm.apply_numpy(ref).astype(int) - ref).max() <= 1


@pytest.mark.parametrize("method", METHODS)
def test_dict_round_trip_gives_identical_outputs(method: str) -> None:
    ref = synthetic_crop()
    norm = StainNormalizer.fit(method, ref)
    d = json.loads(json.dumps(norm.to_dict()))  # plain JSON
    back = StainNormalizer.from_dict(d)
    assert back == norm and back.to_dict() == d
    assert pickle.loads(pickle.dumps(norm)) == norm  # DataLoader workers
    tile = shifted(ref)
    assert np.array_equal(back.apply_numpy(tile), norm.apply_numpy(tile))
    batch = to_batch(tile, ref)
    assert torch.equal(back.apply_torch(batch), norm.apply_torch(batch))
    if method == "macenko":
        assert set(d) >= {"HERef", "maxCRef"} and np.shape(d["HERef"]) == (3, 2)
    else:
        assert len(d["target_means"]) == len(d["target_stds"]) == 3


@pytest.mark.parametrize("method", METHODS)
def test_outputs_deterministic_and_types_kept(method: str) -> None:
    norm = StainNormalizer.fit(method, synthetic_crop())
    tile = shifted(synthetic_crop())
    out = norm.apply_numpy(tile)
    assert out.dtype == np.uint8 and out.shape == tile.shape
    assert np.array_equal(out, norm.apply_numpy(tile.copy()))
    assert not np.array_equal(out, tile)
    # float in [0, 1] -> same float dtype, same pixels up to the uint8 rounding
    for dtype in (np.float32, np.float64):
        f = norm.apply_numpy(np.divide(tile, 255, dtype=dtype))
        assert f.dtype == dtype and f.min() >= 0 and f.max() <= 1
        assert np.abs(f * 255 - out).max() <= 0.5 + 1e-3
    # the torch path: same pixels, on the batch's dtype, image by image
    batch = to_batch(tile, synthetic_crop())
    tb = norm.apply_torch(batch)
    assert tb.dtype == batch.dtype and tb.shape == batch.shape
    assert np.abs(to_uint8(tb).astype(int) - out).max() <= 1
    single = norm.apply_torch(batch[1:])
    assert torch.equal(tb[1:], single)


@pytest.mark.parametrize("method", METHODS)
def test_blank_and_background_tiles_pass_through(method: str) -> None:
    norm = StainNormalizer.fit(method, synthetic_crop())
    white = np.full((256, 256, 3), 255, np.uint8)
    glass = synthetic_glass_crop()
    flat = np.full((256, 256, 3), 150, np.uint8)  # "tissue" by OD but one colour
    sparse = white.copy()
    sparse[:8, :8] = synthetic_crop()[:8, :8]  # 64 tissue pixels at most
    for tile in (white, glass, flat, sparse, white.astype(np.float32) / 255):
        out = norm.apply_numpy(tile)
        assert out is tile  # unchanged, not a NaN-laden copy
    batch = to_batch(white, synthetic_crop(), glass)
    batch[0, :, :2, :2] = 0.0  # a few dark pixels (dust) on the white tile
    result = norm.apply_torch(batch)
    assert torch.isfinite(result).all()
    assert torch.equal(result[0], batch[0]) and torch.equal(result[2], batch[2])
    assert not torch.equal(result[1], batch[1])


@pytest.mark.parametrize("method", METHODS)
def test_slide_source_estimate_is_pointwise(method: str) -> None:
    """With the slide's stains fixed (with_source), normalising a tile is a function of each
    pixel: two halves normalised apart equal the whole normalised at once, glass included,
    and a stain-shifted slide still comes out like the reference."""
    ref = synthetic_crop()
    moved = shifted(ref)
    norm = StainNormalizer.fit(method, ref)
    fixed = norm.with_source(moved)
    assert fixed.has_source and not norm.has_source and fixed.without_source() == norm
    whole = fixed.apply_numpy(moved)
    halves = np.concatenate(
        [fixed.apply_numpy(moved[:, :100]), fixed.apply_numpy(moved[:, 100:])], 1
    )
    assert np.abs(whole.astype(int) - halves).max() <= 1
    glass = synthetic_glass_crop()
    out = fixed.apply_numpy(glass)  # no pass-through: the same pointwise map
    assert out is not glass and np.abs(out.astype(int) - glass).mean() < 12
    if method == "reinhard":  # glass keeps its colour
        assert np.abs(out.astype(int) - glass).max() <= 1
    mask = tissue_mask(ref)
    before = delta_e(moved, ref, mask)
    after = delta_e(whole, norm.with_source(ref).apply_numpy(ref), mask)
    assert after < 0.4 * before, (before, after)
    d = json.loads(json.dumps(fixed.to_dict()))
    assert "source" in d and StainNormalizer.from_dict(d) == fixed
    # a run's config records the reference only
    cfg = StainConfig(normalize=method, reference=d)
    assert cfg.reference is not None and "source" not in cfg.reference
    assert cfg.normalizer() == norm
    with pytest.raises(SettingError, match="tissue") as err:
        norm.with_source(synthetic_glass_crop())
    assert err.value.setting == "stain_normalize"
    assert StainNormalizer().with_source(glass) == StainNormalizer()


def test_none_is_identity() -> None:
    norm = StainNormalizer.fit("none", synthetic_crop())
    tile = synthetic_crop()
    batch = to_batch(tile)
    assert norm == StainNormalizer() and norm.to_dict() == {"method": "none"}
    assert norm.apply_numpy(tile) is tile and norm.apply_torch(batch) is batch
    assert StainNormalizer.from_dict(None) == norm == StainNormalizer.from_dict(norm.to_dict())


def test_fit_and_from_dict_errors() -> None:
    with pytest.raises(SettingError, match="unknown stain normalisation") as err:
        StainNormalizer.fit("vahadane", synthetic_crop())
    assert err.value.setting == "stain_normalize"
    for method in METHODS:
        with pytest.raises(SettingError, match="tissue") as err:
            StainNormalizer.fit(method, synthetic_glass_crop())
        assert err.value.setting == "stain_normalize"
    good = StainNormalizer.fit("macenko", synthetic_crop()).to_dict()
    bad_dicts = [
        {k: v for k, v in good.items() if k != "HERef"},
        {**good, "HERef": [[1.0, 2.0]]},
        {**good, "maxCRef": [1.0, float("nan")]},
        {**good, "maxCRef": [1.0, -2.0]},
        {"method": "reinhard", "target_means": [50, 0, 0], "target_stds": [1, 0, 1]},
        {"method": "reinhard", "target_means": [50, 0]},
        {"method": "macenko2"},
    ]
    for d in bad_dicts:
        with pytest.raises(SettingError) as err:
            StainNormalizer.from_dict(d)
        assert err.value.setting == "stain_normalize"


# -------------------------------------------------------------------------------- reference


def test_reference_patch_picks_the_typical_stain() -> None:
    base = synthetic_crop()
    # stain intensity; the median is 1.0 (index 2); 0.5 leaves < 50 % tissue (not eligible)
    scales = [0.8, 1.45, 1.0, 0.9, 1.2, 0.5]
    candidates = [
        to_uint8(hed_perturb(to_batch(base), torch.full((1, 3), s), torch.zeros(1, 3)))
        for s in scales
    ]
    candidates.insert(0, synthetic_glass_crop())  # no tissue: not a candidate
    chosen = reference_patch(candidates)
    assert chosen is candidates[3]
    with pytest.raises(SettingError) as err:
        reference_patch([synthetic_glass_crop(), np.full((64, 64, 3), 255, np.uint8)])
    assert err.value.setting == "stain_normalize"
    with pytest.raises(ValueError, match="uint8"):
        reference_patch([base.astype(np.float32) / 255])


# ---------------------------------------------------------------------------------- config


def test_config_round_trip_and_fit() -> None:
    cfg = StainConfig()
    assert cfg.to_dict() == {
        "augment_sigma": 0.0,
        "augment_bias": 0.0,
        "normalize": "none",
        "reference": None,
    }
    assert StainConfig.from_dict(None) == cfg == StainConfig.from_dict({})
    assert cfg.normalizer() == StainNormalizer() and cfg.with_reference(synthetic_crop()) is cfg

    cfg = StainConfig(augment_sigma=0.05, augment_bias=0.05, normalize="Macenko")
    assert cfg.normalize == "macenko" and cfg.augments and cfg.needs_reference
    with pytest.raises(SettingError, match="no fitted reference") as err:
        cfg.normalizer()
    assert err.value.setting == "stain_normalize"
    fitted = cfg.with_reference(synthetic_crop())
    assert not fitted.needs_reference
    back = StainConfig.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert back == fitted
    assert back.normalizer() == StainNormalizer.fit("macenko", synthetic_crop())


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"augment_sigma": -0.01}, "stain_augment_sigma"),
        ({"augment_sigma": 1.01}, "stain_augment_sigma"),
        ({"augment_sigma": "0.1"}, "stain_augment_sigma"),
        ({"augment_bias": -1.0}, "stain_augment_bias"),
        ({"augment_bias": math.inf}, "stain_augment_bias"),
        ({"normalize": "vahadane"}, "stain_normalize"),
        ({"normalize": "reinhard", "reference": {"method": "macenko"}}, "stain_normalize"),
        ({"normalize": "macenko", "reference": {"method": "none"}}, "stain_normalize"),
    ],
)
def test_config_validation(kwargs: dict, setting: str) -> None:
    with pytest.raises(SettingError) as err:
        StainConfig(**kwargs)
    assert err.value.setting == setting
    assert err.value.setting in SETTINGS
    assert "augment_" not in err.value.problem and "normalize=" not in err.value.problem


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown stain settings"):
        StainConfig.from_dict({"normalise": "macenko"})


# ------------------------------------------------------------------------- real her2st H&E


@pytest.mark.shared_data
@pytest.mark.parametrize("method", METHODS)
def test_real_crop_stain_shift_is_undone(her2st: Path, method: str) -> None:
    ref = her2st_crop(her2st, "C2")
    moved = shifted(ref)
    norm = StainNormalizer.fit(method, ref)
    mask = tissue_mask(ref)
    assert mask.mean() > 0.8
    before = delta_e(moved, ref, mask)
    after = delta_e(norm.apply_numpy(moved), norm.apply_numpy(ref), mask)
    assert before > 10 and after < 0.5 * before, (before, after)


@pytest.mark.shared_data
@pytest.mark.parametrize("section", ["C3", "C4"])
def test_other_section_normalised_toward_reference(her2st: Path, section: str) -> None:
    """C2 is the reference. Reinhard matches the mean tissue colour (Lab); Macenko the
    stain vectors (the tile's re-estimated H and E directions align with HERef)."""
    ref = her2st_crop(her2st, "C2")
    tile = her2st_crop(her2st, section)
    reinhard = StainNormalizer.fit("reinhard", ref)
    before = np.linalg.norm(tissue_lab_mean(tile) - tissue_lab_mean(ref))
    after = np.linalg.norm(tissue_lab_mean(reinhard.apply_numpy(tile)) - tissue_lab_mean(ref))
    assert before > 3 and after < 0.4 * before, (before, after)

    macenko = StainNormalizer.fit("macenko", ref)
    he_ref = np.asarray(macenko.he_ref)
    before_deg = stain_angles(tile, he_ref).max()
    after_deg = stain_angles(macenko.apply_numpy(tile), he_ref).max()
    assert before_deg > 2 and after_deg < 0.4 * before_deg, (before_deg, after_deg)
