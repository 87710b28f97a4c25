"""Stain robustness: HED stain augmentation (training) and stain normalisation (both).

Leave-one-section-out within one patient flatters every model: all sections share one
staining batch and one scanner. Two standard remedies are provided, both optional and both
recorded in a run's ``config.json`` (:class:`StainConfig`):

**HED stain augmentation** (:func:`hed_augment`, training only; Tellez et al. 2018, "H&E
stain augmentation improves generalization of convolutional networks for histopathological
mitosis detection"). Each RGB image is taken to optical density (OD), unmixed into
haematoxylin, eosin and DAB (the residual channel) with the Ruifrok–Johnston matrix
(:data:`RGB_FROM_HED`, the one ``skimage.color.rgb2hed`` uses), every stain channel ``s``
of image ``b`` is perturbed as ``s' = s · α[b, s] + β[b, s]`` with
``α ~ U(1 − σ, 1 + σ)`` and ``β ~ U(−bias, bias)``, and the result is mixed back to RGB
and clamped to ``[0, 1]``. Choices a paper leaves open:

* Units: stain concentrations are in natural optical density, ``OD = −ln(RGB)`` per
  channel, unmixed with :data:`HED_FROM_RGB`. ``skimage.color.rgb2hed`` returns the same
  numbers divided by ``ln(10⁶) ≈ 13.8`` and clipped at 0 (:func:`rgb_to_hed` is not
  clipped, so ``α = 1, β = 0`` is an exact round trip). ``β`` is therefore in OD: one
  stain's ``β = 0.05`` darkens white glass by at most 5 % in any channel (all three at
  +0.05: 11 % in green), the order of the glass-tint differences between her2st sections
  (up to ~0.1 OD); "HED jitter" implementations that add ``β = 0.05`` in skimage's units
  shift by 0.69 OD, which turns glass visibly blue or pink.
* Recommended strengths :data:`AUGMENT_SIGMA` = 0.05 and :data:`AUGMENT_BIAS` = 0.05, a
  mild setting; 0.2 / 0.2 gives strong but still H&E-looking variation
  (``docs/stain.png``). The :class:`StainConfig` default is 0 (off): a run opts in.
* All three channels (H, E and the DAB residual) are perturbed, as in Tellez et al.;
  glass is perturbed too (a ``β`` tints the background, as staining and scanning do).
* Draws: ``α`` and ``β`` of a batch of ``B`` images come from one
  ``torch.rand((B, 2, 3))`` on the **CPU** generator given (``[:, 0]`` → α, ``[:, 1]``
  → β, channels H, E, D), then move to the batch's device, so CPU and CUDA get the same
  draws and the same seed gives the same images. σ = bias = 0 returns the input object
  itself and draws nothing.
* OD of a channel at 0 is that of ``10⁻⁶`` (as in skimage); computed in float32 (float64
  for float64 input) and returned in the input's dtype on the input's device.

**Stain normalisation** (:class:`StainNormalizer`, training crops and prediction tiles
alike) with ``torchstain`` (torch backend, always on the CPU so that every device sees the
same pixels): Macenko et al. 2009 or Reinhard et al. 2001, fitted once to a reference RGB
image. The fitted parameters are plain JSON (:meth:`StainNormalizer.to_dict`), so a
trained run records them and prediction re-creates the same normaliser without the
reference image. Choices:

* Macenko: torchstain's estimate (``fit``) with its defaults ``Io = 240``, angular
  percentile ``alpha = 1`` and transparency threshold ``beta = 0.15`` OD; the reference's
  stain matrix and 99th-percentile concentrations become ``HERef`` / ``maxCRef``. Each
  tile's own stain matrix and concentrations are estimated the same way, and the tile is
  re-mixed with torchstain's formula ``Io · exp(−HERef · C · maxCRef / maxC)`` in float
  (rounded, not truncated, when the output is uint8) — every pixel, glass included. Colour
  outside the plane of the two stains is dropped, so even the reference itself changes a
  little (mean ΔE ≈ 4 on a her2st crop); what matters is that stain-shifted copies of a
  tissue come out alike.
* Reinhard: means and standard deviations of L*, a*, b* (torchstain's Lab conversion and
  statistics) over the **tissue pixels** only (see below) of the reference and of each
  tile; the transfer ``(c − μ)/σ · σ_ref + μ_ref`` is applied to every pixel and mapped
  back with torchstain's ``lab2rgb``. torchstain's own ``ReinhardNormalizer`` uses
  whole-tile statistics, which make a tile's colour depend on how much glass it holds
  (different between a spot crop and a slide tile), hence the transfer is done here.
  Glass keeps its colour: the affine Lab map extrapolates badly far from the tissue's
  colours (a strongly shifted slide's white glass turns cyan), so each pixel is blended
  as ``w · reinhard + (1 − w) · input`` with ``w = clip(OD_max / beta − 1, 0, 1)`` of its
  darkest channel's OD — 0 for glass (no channel darker than the transparency threshold),
  1 from twice the threshold; continuous in the colour, so no seams.
* Tissue pixels: Macenko's criterion, every channel's OD ``−ln((RGB₂₅₅ + 1)/Io)`` at
  least ``beta`` (:func:`tissue_mask`); it ignores white and the faintly pink glass of
  some her2st sections.
* Blank tiles (per-tile estimates): with fewer than :data:`MIN_TISSUE_PIXELS` tissue
  pixels, or fewer than :data:`MIN_TISSUE_FRACTION` of the tile, stain estimation is
  ill-posed (torchstain's Macenko then raises, its Reinhard turns a white tile black
  through NaN), so the tile is returned **unchanged**; likewise when the tile's estimate
  is implausible (not finite, a negative stain vector, H and E vectors within
  :data:`MIN_STAIN_ANGLE_DEG`, a 99th-percentile concentration below
  :data:`MIN_MAX_CONCENTRATION`, a Lab standard deviation below :data:`MIN_LAB_STD`) or
  when the result is not finite. No NaN/inf ever escapes, and the computation is
  deterministic (CPU, fixed order).
* Source stains per tile or per slide: by default each tile's own stains are estimated
  (any tile of unknown origin works). :meth:`StainNormalizer.with_source` instead fixes
  the stains of the slide being normalised, estimated once from a large tissue region of
  it: the normalisation is then a fixed function of each pixel's colour, so a tiled slide
  is normalised exactly as if whole (overlapping windows agree) and a tile of mostly one
  tissue type keeps its stain balance. Use it whenever the slide is at hand.
* ``method = "none"`` is the identity (returns its input).

:func:`reference_patch` picks a reference among candidate training patches (the one of
typical stain: mean tissue OD nearest the per-channel median).

Errors a setting can fix are :class:`~napari_histoexpress.errors.SettingError` with the
keys of :data:`STAIN_SETTINGS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .errors import SettingError

__all__ = [
    "AUGMENT_BIAS",
    "AUGMENT_SIGMA",
    "HED_FROM_RGB",
    "METHODS",
    "RGB_FROM_HED",
    "STAIN_SETTINGS",
    "StainConfig",
    "StainNormalizer",
    "draw_hed_params",
    "hed_augment",
    "hed_perturb",
    "hed_to_rgb",
    "reference_patch",
    "rgb_to_hed",
    "tissue_mask",
]

#: The settings of this module's errors (``SettingError.setting``; listed in
#: :data:`napari_histoexpress.errors.SETTINGS`), i.e. the fields of :class:`StainConfig`.
STAIN_SETTINGS: tuple[str, ...] = ("stain_augment_sigma", "stain_augment_bias", "stain_normalize")

#: Normalisation methods of :class:`StainNormalizer` / :attr:`StainConfig.normalize`.
METHODS: tuple[str, ...] = ("none", "macenko", "reinhard")

#: Recommended HED augmentation strengths when a run enables it (Tellez's "HED-light").
AUGMENT_SIGMA = 0.05
AUGMENT_BIAS = 0.05

#: Ruifrok & Johnston's stain OD vectors (rows: haematoxylin, eosin, DAB), exactly
#: ``skimage.color.colorconv.rgb_from_hed``; OD rows (R, G, B) mix as ``od = hed @ this``.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
#: Unmixing: ``hed = od @ HED_FROM_RGB`` (``skimage.color.colorconv.hed_from_rgb``).
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: RGB values are floored at this before the logarithm (as in skimage).
OD_FLOOR = 1e-6

#: torchstain's Macenko constants: transmitted light intensity (0-255 scale), angular
#: percentile (%), transparency threshold (OD). ``beta`` also defines tissue pixels.
MACENKO_IO = 240.0
MACENKO_ALPHA = 1.0
MACENKO_BETA = 0.15
#: A tile (or reference) is normalised only with at least this many tissue pixels and at
#: least this fraction of tissue; otherwise it is returned unchanged (fit: refused). 1024
#: pixels put ≥ 10 pixels in each 1 % tail of Macenko's angle distribution; below about
#: 300 tissue pixels the estimates seen on her2st tiles were erratic.
MIN_TISSUE_PIXELS = 1024
MIN_TISSUE_FRACTION = 0.01
#: Plausibility of a tile's Macenko estimate: minimum angle between the H and E vectors
#: (her2st tiles: 17-26°, the reference vectors 22°) and minimum 99th-percentile
#: concentration (OD; her2st tissue tiles ≥ 0.4), below which re-scaling amplifies noise.
MIN_STAIN_ANGLE_DEG = 2.0
MIN_MAX_CONCENTRATION = 0.1
#: Minimum standard deviation of a Lab channel over tissue for Reinhard (flat colour).
MIN_LAB_STD = 1e-3
#: :func:`reference_patch`: minimum tissue fraction of a candidate.
REFERENCE_MIN_TISSUE_FRACTION = 0.5


def _check_strength(value: float, setting: str, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise SettingError(
            setting, f"the stain augmentation strength must be a number, not {value!r}"
        )
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise SettingError(
            setting, f"the stain augmentation strength must be 0 or more, not {value!r}"
        )
    if upper is not None and v > upper:
        raise SettingError(
            setting, f"the stain augmentation strength must be at most {upper:g}, not {value!r}"
        )
    return v


# --------------------------------------------------------------------------- HED colour space


def _check_batch(batch: torch.Tensor) -> None:
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch)
        raise ValueError(f"expected an RGB batch of shape (B, 3, H, W), got {shape}")
    if not batch.is_floating_point():
        raise ValueError(f"expected a float RGB batch in [0, 1], got {batch.dtype}")


def _compute_dtype(batch: torch.Tensor) -> torch.dtype:
    return torch.float64 if batch.dtype == torch.float64 else torch.float32


def _matrix(m: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=like.dtype, device=like.device)


def rgb_to_hed(batch: torch.Tensor) -> torch.Tensor:
    """Stain concentrations ``(B, 3, H, W)`` (H, E, D) in natural OD of RGB ``[0, 1]``.

    ``hed = −ln(max(rgb, 1e-6)) @ HED_FROM_RGB`` per pixel, not clipped;
    ``skimage.color.rgb2hed(rgb) == max(rgb_to_hed(rgb) / ln(1e6), 0)``.
    """
    _check_batch(batch)
    x = batch.to(_compute_dtype(batch))
    od = -torch.log(x.clamp_min(OD_FLOOR))
    return torch.einsum("bihw,ij->bjhw", od, _matrix(HED_FROM_RGB, x))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`: RGB ``exp(−hed @ RGB_FROM_HED)`` clamped to ``[0, 1]``."""
    _check_batch(hed)
    h = hed.to(_compute_dtype(hed))
    od = torch.einsum("bjhw,ji->bihw", h, _matrix(RGB_FROM_HED, h))
    return torch.exp(-od).clamp(0.0, 1.0)


def draw_hed_params(
    n: int,
    sigma: float = AUGMENT_SIGMA,
    bias: float = AUGMENT_BIAS,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, beta)``, each ``(n, 3)`` float32 on the CPU, for :func:`hed_perturb`.

    One ``torch.rand((n, 2, 3), generator=generator)`` (the global CPU stream when
    ``generator`` is None): ``alpha = 1 + σ(2u − 1)``, ``beta = bias(2u − 1)``.
    ``generator`` must be a CPU generator (the draws are the same whatever the device).
    """
    sigma = _check_strength(sigma, "stain_augment_sigma", upper=1.0)
    bias = _check_strength(bias, "stain_augment_bias")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "stain augmentation draws on a CPU torch.Generator (the same draws on any "
            f"device); got one on {generator.device}"
        )
    u = torch.rand((int(n), 2, 3), generator=generator, dtype=torch.float32)
    u = u * 2.0 - 1.0
    return 1.0 + sigma * u[:, 0], bias * u[:, 1]


def hed_perturb(batch: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``s' = s · alpha + beta`` on each stain channel of each image, back to RGB, clamped.

    ``batch`` ``(B, 3, H, W)`` RGB in ``[0, 1]``; ``alpha``, ``beta`` ``(B, 3)`` (any
    device; channel order H, E, D, OD units). Done as one per-image affine map of OD:
    ``od' = od @ (HED_FROM_RGB · diag(alpha) · RGB_FROM_HED) + beta @ RGB_FROM_HED``.
    """
    _check_batch(batch)
    b = batch.shape[0]
    if tuple(alpha.shape) != (b, 3) or tuple(beta.shape) != (b, 3):
        raise ValueError(
            f"alpha and beta must be ({b}, 3), got {tuple(alpha.shape)}, {tuple(beta.shape)}"
        )
    dtype = _compute_dtype(batch)
    x = batch.to(dtype)
    h = _matrix(HED_FROM_RGB, x)
    r = _matrix(RGB_FROM_HED, x)
    a = alpha.to(device=x.device, dtype=dtype)
    bt = beta.to(device=x.device, dtype=dtype)
    mix = torch.einsum("ij,bj,jk->bik", h, a, r)  # (B, 3, 3)
    offset = bt @ r  # (B, 3)
    od = -torch.log(x.clamp_min(OD_FLOOR))
    od = torch.einsum("bihw,bij->bjhw", od, mix) + offset[:, :, None, None]
    return torch.exp(-od).clamp(0.0, 1.0).to(batch.dtype)


def hed_augment(
    batch: torch.Tensor,
    sigma: float = AUGMENT_SIGMA,
    bias: float = AUGMENT_BIAS,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """HED stain augmentation of an RGB batch ``(B, 3, H, W)`` in ``[0, 1]`` (training only).

    Per image and stain channel ``α ~ U(1 − sigma, 1 + sigma)``, ``β ~ U(−bias, bias)``
    (OD) drawn on the CPU ``generator`` (:func:`draw_hed_params`), applied by
    :func:`hed_perturb` on the batch's device. ``sigma = bias = 0`` returns ``batch``
    itself and draws nothing. See the module docstring for the choices.
    """
    _check_batch(batch)
    sigma = _check_strength(sigma, "stain_augment_sigma", upper=1.0)
    bias = _check_strength(bias, "stain_augment_bias")
    if sigma == 0.0 and bias == 0.0:
        return batch
    alpha, beta = draw_hed_params(batch.shape[0], sigma, bias, generator=generator)
    return hed_perturb(batch, alpha, beta)


# ------------------------------------------------------------------------------ tissue pixels


def _hwc(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float RGB image, got {arr.dtype}")
    return arr


def _to255(arr: np.ndarray) -> np.ndarray:
    """float32 ``(H, W, 3)`` in ``[0, 255]`` of a uint8 image or a float one in ``[0, 1]``."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * np.float32(255.0)


def _od255(x255: np.ndarray | torch.Tensor, io: float) -> Any:
    """Macenko's OD ``−ln((I + 1) / Io)`` of 0-255 intensities."""
    if isinstance(x255, torch.Tensor):
        return -torch.log((x255 + 1.0) / io)
    return -np.log((x255 + 1.0) / io)


def tissue_mask(image: np.ndarray, *, beta: float = MACENKO_BETA) -> np.ndarray:
    """``(H, W)`` bool: pixels whose OD ``−ln((RGB₂₅₅ + 1) / 240)`` is ≥ ``beta`` in every
    channel (Macenko's / torchstain's non-transparent pixels). ``image`` is ``(H, W, 3)``
    uint8, or float in ``[0, 1]``."""
    od = _od255(_to255(_hwc(image)), MACENKO_IO)
    return np.asarray(np.all(od >= beta, axis=-1))


def _enough_tissue(n_tissue: int, n_pixels: int) -> bool:
    return n_tissue >= MIN_TISSUE_PIXELS and n_tissue >= MIN_TISSUE_FRACTION * n_pixels


# --------------------------------------------------------------------------- normalisation


def _macenko_estimate(
    x255: torch.Tensor, io: float, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """torchstain's (stain matrix ``(3, 2)``, 99th-percentile concentrations ``(2,)``) of a
    ``(3, H, W)`` float32 CPU image in ``[0, 255]``, or None when ill-posed/implausible."""
    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    od = _od255(x255.reshape(3, -1), io)
    n_tissue = int((od >= beta).all(dim=0).sum())
    if not _enough_tissue(n_tissue, od.shape[1]):
        return None
    est = TorchMacenkoNormalizer()
    try:
        est.fit(x255.clone(), Io=io, alpha=alpha, beta=beta)
    except (RuntimeError, IndexError, ValueError):  # e.g. eigh not converging
        return None
    he = est.HERef.to(torch.float32)
    max_c = est.maxCRef.to(torch.float32)
    if not (bool(torch.isfinite(he).all()) and bool(torch.isfinite(max_c).all())):
        return None
    if float(he.min()) < 0 or float(max_c.min()) < MIN_MAX_CONCENTRATION:
        return None
    norms = he.norm(dim=0)
    cos = float((he[:, 0] * he[:, 1]).sum() / (norms[0] * norms[1]))
    if math.degrees(math.acos(max(-1.0, min(1.0, cos)))) < MIN_STAIN_ANGLE_DEG:
        return None
    return he, max_c


def _lab_and_stats(
    x255: torch.Tensor, io: float, beta: float
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None:
    """torchstain's Lab channels (L* 0-100, a*, b*; each ``(H, W)``) of a ``(3, H, W)``
    0-255 image, with their means and standard deviations over its tissue pixels (as
    torchstain's Reinhard ``fit`` computes them, there over all pixels); None when there is
    too little tissue or a channel is flat."""
    from torchstain.torch.utils.rgb2lab import rgb2lab
    from torchstain.torch.utils.split import lab_split
    from torchstain.torch.utils.stats import get_mean_std

    keep = (_od255(x255, io) >= beta).all(dim=0)
    if not _enough_tissue(int(keep.sum()), keep.numel()):
        return None
    channels = list(lab_split(rgb2lab(x255 / 255.0)))  # rgb2lab works in place: a copy
    stats = [get_mean_std(c[keep]) for c in channels]
    means = torch.stack([m for m, _ in stats]).to(torch.float32)
    stds = torch.stack([sd for _, sd in stats]).to(torch.float32)
    if not (bool(torch.isfinite(means).all()) and bool(torch.isfinite(stds).all())):
        return None
    if float(stds.min()) < MIN_LAB_STD:
        return None
    return channels, means, stds


def _matrix3x2(value: Any) -> tuple[tuple[float, float], ...]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (3, 2) or not np.all(np.isfinite(arr)):
        raise ValueError("HERef must be 3 rows of 2 finite numbers")
    return tuple((float(a), float(b)) for a, b in arr)


def _vector(value: Any, n: int, name: str, *, positive: bool = False) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        kind = "positive" if positive else "finite"
        raise ValueError(f"{name} must be {n} {kind} numbers")
    return tuple(float(v) for v in arr)


def _estimate(
    method: str, x255: torch.Tensor, io: float, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A ``(3, H, W)`` 0-255 image's stain parameters: Macenko ``(HE (3, 2), maxC (2,))``,
    Reinhard ``(Lab means (3,), Lab stds (3,))`` over tissue; None when ill-posed."""
    if method == "macenko":
        return _macenko_estimate(x255, io, alpha, beta)
    stats = _lab_and_stats(x255, io, beta)
    return None if stats is None else (stats[1], stats[2])


def _too_little_tissue(method: str, image: np.ndarray, what: str) -> SettingError:
    n_tissue = int(tissue_mask(image).sum())
    n_pixels = int(np.asarray(image).shape[0] * np.asarray(image).shape[1])
    return SettingError(
        "stain_normalize",
        f"the {what} cannot be used for {method} stain normalisation: it has {n_tissue} "
        f"tissue pixels of {n_pixels} (at least {MIN_TISSUE_PIXELS} and "
        f"{MIN_TISSUE_FRACTION:.0%} are needed, with both stains present); choose a region "
        "full of stained tissue",
    )


@dataclass(frozen=True)
class StainNormalizer:
    """A fitted stain normaliser (see the module docstring); immutable, picklable, and
    thread-safe (each call builds its own torchstain estimators).

    Build with :meth:`fit` (from a reference image) or :meth:`from_dict` (from a run's
    config); ``StainNormalizer()`` is the identity (``method="none"``).

    Fields: ``he_ref`` (Macenko ``HERef``: rows R, G, B; columns H, E) and ``max_c_ref``
    (``maxCRef``: H, E) for Macenko; ``target_means`` / ``target_stds`` (L*, a*, b* of
    torchstain's Lab: L* in 0-100, a*, b* centred on 0, over tissue pixels) for Reinhard;
    ``io``, ``alpha``, ``beta``: the Macenko constants (``beta`` also defines tissue pixels
    for Reinhard).

    **Source estimate** (optional, :meth:`with_source`): ``source_he`` / ``source_max_c``
    (Macenko) or ``source_means`` / ``source_stds`` (Reinhard) of the *slide* being
    normalised, estimated once from a large tissue region of it. Without one (default),
    every tile is estimated on its own (blank tiles pass through unchanged); with one, the
    normalisation is a fixed function of each pixel's colour, so a tiled slide is
    normalised exactly as if whole (overlapping windows agree), and a tile of mostly one
    tissue type is not re-scaled toward the reference's stain balance (per-tile Macenko
    rescales each tile's own 99th-percentile concentrations). Prefer it whenever the
    slide is at hand (prediction; training crops, one estimate per section).
    """

    method: str = "none"
    he_ref: tuple[tuple[float, float], ...] = ()
    max_c_ref: tuple[float, ...] = ()
    target_means: tuple[float, ...] = ()
    target_stds: tuple[float, ...] = ()
    io: float = MACENKO_IO
    alpha: float = MACENKO_ALPHA
    beta: float = MACENKO_BETA
    source_he: tuple[tuple[float, float], ...] = ()
    source_max_c: tuple[float, ...] = ()
    source_means: tuple[float, ...] = ()
    source_stds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SettingError(
                "stain_normalize",
                f"unknown stain normalisation {self.method!r} (choose {', '.join(METHODS)})",
            )
        try:
            if self.method == "macenko":
                self._set("he_ref", _matrix3x2(self.he_ref))
                self._set("max_c_ref", _vector(self.max_c_ref, 2, "maxCRef", positive=True))
                if self.source_he or self.source_max_c:
                    self._set("source_he", _matrix3x2(self.source_he))
                    max_c = _vector(self.source_max_c, 2, "the source maxC", positive=True)
                    self._set("source_max_c", max_c)
            elif self.method == "reinhard":
                self._set("target_means", _vector(self.target_means, 3, "target_means"))
                stds = _vector(self.target_stds, 3, "target_stds", positive=True)
                self._set("target_stds", stds)
                if self.source_means or self.source_stds:
                    self._set("source_means", _vector(self.source_means, 3, "the source means"))
                    stds = _vector(self.source_stds, 3, "the source stds", positive=True)
                    self._set("source_stds", stds)
            for name in ("io", "alpha", "beta"):
                value = float(getattr(self, name))
                if name == "alpha" and not 0 <= value < 50:
                    raise ValueError("alpha (a percentile) must be at least 0 and below 50")
                if name != "alpha" and not 0 < value < math.inf:
                    raise ValueError(f"{name} must be a positive number")
                self._set(name, value)
        except (TypeError, ValueError) as exc:
            raise SettingError(
                "stain_normalize", f"the {self.method} stain reference is invalid: {exc}"
            ) from None

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def has_source(self) -> bool:
        """Whether a slide's stain estimate is fixed (:meth:`with_source`)."""
        return bool(self.source_he or self.source_means)

    # ---------------------------------------------------------------- construction

    @classmethod
    def fit(cls, method: str, reference_rgb: np.ndarray) -> StainNormalizer:
        """Fit ``method`` (``"macenko"``, ``"reinhard"`` or ``"none"``) to a reference RGB
        image ``(H, W, 3)`` uint8 (or float in ``[0, 1]``), e.g. :func:`reference_patch`.

        Raises :class:`SettingError` (``"stain_normalize"``) for an unknown method or a
        reference with too little tissue (or an implausible stain estimate).
        """
        method = str(method).strip().lower()
        if method not in METHODS:
            cls(method=method)  # raises the unknown-method error
        if method == "none":
            return cls()
        with torch.no_grad():
            est = _estimate(
                method, _chw255(_hwc(reference_rgb)), MACENKO_IO, MACENKO_ALPHA, MACENKO_BETA
            )
        if est is None:
            raise _too_little_tissue(method, reference_rgb, "stain reference image")
        a, b = est
        if method == "macenko":
            return cls(method, he_ref=_matrix3x2(a.tolist()), max_c_ref=tuple(b.tolist()))
        return cls(method, target_means=tuple(a.tolist()), target_stds=tuple(b.tolist()))

    def with_source(self, source_rgb: np.ndarray) -> StainNormalizer:
        """This normaliser with the stains of the slide to normalise fixed, estimated once
        from ``source_rgb`` ``(H, W, 3)`` (uint8, or float in ``[0, 1]``): a large tissue
        region of that slide at the working resolution, or several of its tissue crops
        side by side (``np.concatenate(crops, axis=1)``). See the class docstring.
        ``method="none"`` returns itself. Raises :class:`SettingError` when the region has
        too little tissue."""
        if self.method == "none":
            return self
        with torch.no_grad():
            est = _estimate(self.method, _chw255(_hwc(source_rgb)), self.io, self.alpha, self.beta)
        if est is None:
            raise _too_little_tissue(self.method, source_rgb, "slide region given as source")
        a, b = est
        if self.method == "macenko":
            return replace(self, source_he=_matrix3x2(a.tolist()), source_max_c=tuple(b.tolist()))
        return replace(self, source_means=tuple(a.tolist()), source_stds=tuple(b.tolist()))

    def without_source(self) -> StainNormalizer:
        """This normaliser estimating every tile on its own (no fixed source)."""
        return replace(self, source_he=(), source_max_c=(), source_means=(), source_stds=())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON parameters (lists of floats), enough for :meth:`from_dict`. A fixed
        source (:meth:`with_source`, per slide: not part of a run's config) is under
        ``"source"`` when set."""
        d: dict[str, Any]
        if self.method == "macenko":
            d = {
                "method": "macenko",
                "HERef": [list(row) for row in self.he_ref],
                "maxCRef": list(self.max_c_ref),
                "Io": self.io,
                "alpha": self.alpha,
                "beta": self.beta,
            }
            if self.has_source:
                d["source"] = {
                    "HE": [list(row) for row in self.source_he],
                    "maxC": list(self.source_max_c),
                }
            return d
        if self.method == "reinhard":
            d = {
                "method": "reinhard",
                "target_means": list(self.target_means),
                "target_stds": list(self.target_stds),
                "Io": self.io,
                "beta": self.beta,
            }
            if self.has_source:
                d["source"] = {"means": list(self.source_means), "stds": list(self.source_stds)}
            return d
        return {"method": "none"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> StainNormalizer:
        """Re-create a normaliser from :meth:`to_dict` (None → identity). Missing constants
        (``Io``, ``alpha``, ``beta``) take the module's defaults."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise SettingError(
                "stain_normalize",
                f"the stain reference must be a mapping, not {type(d).__name__}",
            )
        method = str(d.get("method", "none")).strip().lower()
        consts = {
            "io": d.get("Io", MACENKO_IO),
            "alpha": d.get("alpha", MACENKO_ALPHA),
            "beta": d.get("beta", MACENKO_BETA),
        }
        source = d.get("source") or {}
        if not isinstance(source, Mapping):
            raise SettingError("stain_normalize", "the stain source estimate must be a mapping")
        keys = {"macenko": ("HERef", "maxCRef"), "reinhard": ("target_means", "target_stds")}
        for key in keys.get(method, ()):
            if key not in d:
                raise SettingError("stain_normalize", f"the {method} stain reference has no {key}")
        if method == "macenko":
            return cls(
                method,
                he_ref=d["HERef"],
                max_c_ref=d["maxCRef"],
                source_he=source.get("HE", ()),
                source_max_c=source.get("maxC", ()),
                **consts,
            )
        if method == "reinhard":
            return cls(
                method,
                target_means=d["target_means"],
                target_stds=d["target_stds"],
                source_means=source.get("means", ()),
                source_stds=source.get("stds", ()),
                **consts,
            )
        return cls(method=method)

    # ---------------------------------------------------------------------- apply

    def _normalize255(self, x255: torch.Tensor) -> torch.Tensor | None:
        """``(3, H, W)`` float32 CPU 0-255 → normalised (float, 0-255), None = unchanged."""
        if self.method == "macenko":
            if self.has_source:
                he = torch.tensor(self.source_he, dtype=torch.float32)
                max_c = torch.tensor(self.source_max_c, dtype=torch.float32)
            else:
                est = _macenko_estimate(x255, self.io, self.alpha, self.beta)
                if est is None:
                    return None
                he, max_c = est
            od = _od255(x255.reshape(3, -1), self.io)
            conc = torch.linalg.lstsq(he, od).solution  # (2, N)
            max_c_ref = torch.tensor(self.max_c_ref, dtype=torch.float32)
            conc = conc * (max_c_ref / max_c).unsqueeze(1)
            he_ref = torch.tensor(self.he_ref, dtype=torch.float32)
            out = self.io * torch.exp(-(he_ref @ conc))
        elif self.method == "reinhard":
            from torchstain.torch.utils.lab2rgb import lab2rgb
            from torchstain.torch.utils.rgb2lab import rgb2lab
            from torchstain.torch.utils.split import lab_merge, lab_split

            if self.has_source:
                channels = list(lab_split(rgb2lab(x255 / 255.0)))  # in place: on a copy
                means = torch.tensor(self.source_means, dtype=torch.float32)
                stds = torch.tensor(self.source_stds, dtype=torch.float32)
            else:
                stats = _lab_and_stats(x255, self.io, self.beta)
                if stats is None:
                    return None
                channels, means, stds = stats
            t_means, t_stds = self.target_means, self.target_stds
            mapped = [
                (c - means[k]) / stds[k] * t_stds[k] + t_means[k] for k, c in enumerate(channels)
            ]
            out = lab2rgb(lab_merge(*mapped)).permute(2, 0, 1) * 255.0  # lab2rgb gives HWC
            # glass keeps its colour: the affine Lab map extrapolates far from the tissue
            weight = (_od255(x255, self.io).amax(dim=0) / self.beta - 1.0).clamp(0.0, 1.0)
            out = weight * out + (1.0 - weight) * x255
        else:
            return None
        out = out.reshape(x255.shape).clamp(0.0, 255.0)
        return out if bool(torch.isfinite(out).all()) else None

    def apply_numpy(self, tile: np.ndarray) -> np.ndarray:
        """Normalise one RGB tile ``(H, W, 3)``: uint8 in, uint8 out (rounded); float in
        ``[0, 1]`` in, the same float dtype out. Without a source estimate, tiles with too
        little tissue (and any tile for ``method="none"``) come back as the same object,
        unchanged."""
        if self.method == "none":
            return tile
        arr = _hwc(tile)
        with torch.no_grad():
            out = self._normalize255(_chw255(arr))
        if out is None:
            return tile
        res = out.permute(1, 2, 0).numpy()
        if arr.dtype == np.uint8:
            return np.rint(res).clip(0, 255).astype(np.uint8)
        return (res / np.float32(255.0)).astype(arr.dtype)

    def apply_torch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise a float RGB batch ``(B, 3, H, W)`` in ``[0, 1]`` image by image (on the
        CPU, then back to the batch's device and dtype). Without a source estimate, images
        with too little tissue are kept bit-identical; ``method="none"`` returns ``batch``
        itself."""
        _check_batch(batch)
        if self.method == "none":
            return batch
        outs = []
        with torch.no_grad():
            for img in batch:
                x255 = img.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0
                out = self._normalize255(x255)
                if out is None:
                    outs.append(img)
                else:
                    outs.append((out / 255.0).to(device=batch.device, dtype=batch.dtype))
        return torch.stack(outs)


def _chw255(arr: np.ndarray) -> torch.Tensor:
    """``(3, H, W)`` float32 CPU tensor in ``[0, 255]`` of an ``(H, W, 3)`` image."""
    return torch.from_numpy(np.ascontiguousarray(_to255(arr).transpose(2, 0, 1)))


# ------------------------------------------------------------------------------ reference


def reference_patch(
    images: Sequence[np.ndarray], *, min_tissue_fraction: float = REFERENCE_MIN_TISSUE_FRACTION
) -> np.ndarray:
    """Pick the stain reference among candidate patches (uint8 ``(H, W, 3)``, e.g. training
    crops from several sections): the one of the most typical stain.

    Candidates need at least ``min_tissue_fraction`` (default 50 %) tissue pixels
    (:func:`tissue_mask`) and :data:`MIN_TISSUE_PIXELS`. For each, the mean OD
    ``−ln((RGB + 1)/240)`` (R, G, B) of its tissue pixels is taken; the chosen patch is the
    one whose mean is nearest (Euclidean) the per-channel median over the candidates —
    a typical stain in intensity and hue, unlike an extreme-looking section. Ties go to the
    earlier patch. Returns that array itself. Raises :class:`SettingError`
    (``"stain_normalize"``) when no candidate has enough tissue.
    """
    means: list[np.ndarray] = []
    index: list[int] = []
    for i, image in enumerate(images):
        arr = _hwc(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"stain reference candidates must be uint8, got {arr.dtype}")
        mask = tissue_mask(arr)
        n = int(mask.sum())
        if n < MIN_TISSUE_PIXELS or n < min_tissue_fraction * mask.size:
            continue
        od = _od255(arr[mask].astype(np.float64), MACENKO_IO)
        means.append(od.mean(axis=0))
        index.append(i)
    if not means:
        raise SettingError(
            "stain_normalize",
            f"none of the {len(images)} candidate stain reference patches has "
            f"{min_tissue_fraction:.0%} stained tissue; give larger or more central patches",
        )
    stack = np.stack(means)
    distance = np.linalg.norm(stack - np.median(stack, axis=0), axis=1)
    return images[index[int(np.argmin(distance))]]


# ---------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class StainConfig:
    """The stain settings of a run (recorded in its ``config.json`` as :meth:`to_dict`).

    * ``augment_sigma``, ``augment_bias``: HED augmentation strengths (σ in ``[0, 1]``,
      bias ≥ 0, OD), training only; both 0 (default) = off; recommended
      :data:`AUGMENT_SIGMA`, :data:`AUGMENT_BIAS`.
    * ``normalize``: ``"none"`` (default), ``"macenko"`` or ``"reinhard"`` (case-insensitive).
    * ``reference``: the fitted normaliser (:meth:`StainNormalizer.to_dict`); None until
      training fits one. Its method must be ``normalize``'s.

    Invalid values raise :class:`SettingError` naming the setting (``stain_augment_sigma``,
    ``stain_augment_bias``, ``stain_normalize``).
    """

    augment_sigma: float = 0.0
    augment_bias: float = 0.0
    normalize: str = "none"
    reference: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        sigma = _check_strength(self.augment_sigma, "stain_augment_sigma", upper=1.0)
        object.__setattr__(self, "augment_sigma", sigma)
        object.__setattr__(
            self, "augment_bias", _check_strength(self.augment_bias, "stain_augment_bias")
        )
        method = str(self.normalize).strip().lower()
        if method not in METHODS:
            raise SettingError(
                "stain_normalize",
                f"unknown stain normalisation {self.normalize!r} (choose {', '.join(METHODS)})",
            )
        object.__setattr__(self, "normalize", method)
        if self.reference is not None:
            fitted = StainNormalizer.from_dict(self.reference)
            if fitted.method != method:
                raise SettingError(
                    "stain_normalize",
                    f"the stain reference was fitted for {fitted.method}, not {method}",
                )
            # a run records the reference only, never one slide's source estimate
            reference = None if method == "none" else fitted.without_source().to_dict()
            object.__setattr__(self, "reference", reference)

    @property
    def augments(self) -> bool:
        """Whether training applies HED augmentation."""
        return self.augment_sigma > 0 or self.augment_bias > 0

    @property
    def needs_reference(self) -> bool:
        """Normalisation is on but not fitted yet (training must :meth:`with_reference`)."""
        return self.normalize != "none" and self.reference is None

    def augment(self, batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """:func:`hed_augment` with this config's strengths (the input itself when off)."""
        return hed_augment(batch, self.augment_sigma, self.augment_bias, generator=generator)

    def with_reference(self, reference_rgb: np.ndarray) -> StainConfig:
        """This config with ``reference`` fitted to ``reference_rgb`` (no-op for ``"none"``)."""
        if self.normalize == "none":
            return self
        fitted = StainNormalizer.fit(self.normalize, reference_rgb)
        return StainConfig(self.augment_sigma, self.augment_bias, self.normalize, fitted.to_dict())

    def normalizer(self) -> StainNormalizer:
        """The fitted :class:`StainNormalizer` (identity for ``"none"``); raises
        :class:`SettingError` when normalisation is on but no reference was fitted."""
        if self.normalize == "none":
            return StainNormalizer()
        if self.reference is None:
            raise SettingError(
                "stain_normalize",
                f"{self.normalize} stain normalisation has no fitted reference (the run "
                "was saved without one); fit it to a reference image first",
            )
        return StainNormalizer.from_dict(self.reference)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{"augment_sigma", "augment_bias", "normalize", "reference"}``."""
        return {
            "augment_sigma": self.augment_sigma,
            "augment_bias": self.augment_bias,
            "normalize": self.normalize,
            "reference": None if self.reference is None else dict(self.reference),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> StainConfig:
        """Inverse of :meth:`to_dict`; None or missing keys → defaults (a run saved before
        stain settings existed), unknown keys → ``ValueError``."""
        if d is None:
            return cls()
        unknown = sorted(set(d) - {"augment_sigma", "augment_bias", "normalize", "reference"})
        if unknown:
            raise ValueError(f"unknown stain settings {unknown}")
        return cls(**dict(d))
