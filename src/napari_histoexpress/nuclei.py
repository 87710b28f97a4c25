"""Nuclei segmentation of H&E pixels: the masks ALIGN-ST's nuclei stream reads.

ALIGN-ST (design *spot-models* §3) encodes each patch's **binary nuclei mask** with a small
CNN next to the patch's image features. The paper's masks come from Hover-net, whose
weights are not available offline, so the default segmenter here needs no weights
(:func:`segment_hed_watershed`, name ``"hed-watershed"``):

1. colour deconvolution to the haematoxylin optical density (``skimage.color.rgb2hed``,
   Ruifrok & Johnston), smoothed with a Gaussian of ``smooth_um``;
2. a threshold: Otsu's on the patch, never below ``min_threshold`` (a patch of stroma or
   glass has no nuclei for Otsu to find, and would otherwise split noise in two);
3. holes filled, objects under ``min_area_um2`` removed;
4. touching nuclei split by a watershed of the distance transform from one seed per local
   maximum at least ``split_distance_um`` apart, with watershed lines (so the binary mask
   shows the split), and small fragments removed again.

Every length is in µm and converted with the pixels' µm/px, so the same settings work at
any resolution (nuclei of breast tissue: 5–12 µm across, 20–150 µm²). Settings are
:class:`HedWatershedSettings` fields.

Other segmenters plug in **by name**: :func:`register_segmenter` in code, or a package that
declares an entry point in the group ``napari_histoexpress.segmenters`` (``name =
"module:function"``; the function takes ``(rgb uint8 (h, w, 3), mpp)`` and returns ``(h, w)``
int labels, 0 = background) — a StarDist or Cellpose wrapper installed next to this package
is found by :func:`get_segmenter` without a change here.

:func:`nuclei_grid` turns labels into what the model's nuclei stream reads: the nuclear
fraction of each cell of a ``grid × grid`` partition of the patch (an area-averaged mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SEGMENTER",
    "ENTRY_POINT_GROUP",
    "HedWatershedSettings",
    "NucleiStats",
    "Segmenter",
    "UnknownSegmenterError",
    "get_segmenter",
    "nuclei_grid",
    "nuclei_stats",
    "register_segmenter",
    "segment_hed_watershed",
    "segmenter_names",
]

#: ``(rgb uint8 (h, w, 3), mpp) -> (h, w) int32 labels`` (0 = background)
Segmenter = Callable[[np.ndarray, float], np.ndarray]
DEFAULT_SEGMENTER = "hed-watershed"
ENTRY_POINT_GROUP = "napari_histoexpress.segmenters"


@dataclass(frozen=True)
class HedWatershedSettings:
    """Settings of :func:`segment_hed_watershed` (lengths in µm, areas in µm²)."""

    smooth_um: float = 0.6
    #: fixed haematoxylin OD threshold; ``None``: Otsu's of the patch, floored below
    threshold: float | None = None
    min_threshold: float = 0.05
    min_area_um2: float = 12.0
    split_distance_um: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """``(h, w)`` float32 haematoxylin optical density of uint8 RGB (colour deconvolution)."""
    from skimage.color import rgb2hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {rgb.shape}")
    return np.asarray(rgb2hed(rgb[..., :3])[..., 0], dtype=np.float32)


def segment_hed_watershed(
    rgb: np.ndarray, mpp: float, settings: HedWatershedSettings | None = None
) -> np.ndarray:
    """``(h, w)`` int32 nuclei labels of uint8 RGB at ``mpp`` µm/px (module docstring)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    s = settings or HedWatershedSettings()
    mpp = float(mpp)
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp}")
    h = haematoxylin(rgb)
    if h.size == 0:
        return np.zeros(h.shape, np.int32)
    if s.smooth_um > 0:
        h = gaussian(h, sigma=s.smooth_um / mpp, preserve_range=True).astype(np.float32)
    if s.threshold is not None:
        thr = float(s.threshold)
    else:
        thr = float(threshold_otsu(h)) if float(h.max()) > float(h.min()) else math.inf
        thr = max(thr, float(s.min_threshold))
    min_px = max(1, round(s.min_area_um2 / mpp**2))
    fg = ndi.binary_fill_holes(h > thr)
    fg = remove_small_objects(fg, max_size=min_px - 1) if min_px > 1 else fg
    if not fg.any():
        return np.zeros(h.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    dist = gaussian(dist, sigma=max(0.5, 0.5 / mpp), preserve_range=True)
    min_distance = max(1, round(s.split_distance_um / mpp))
    objects, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=objects, exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # an object without a peak (flat distance) keeps one seed at its first pixel
    seeded = np.unique(objects[markers > 0])
    for lab in np.setdiff1d(np.arange(1, int(objects.max()) + 1), seeded):
        ys, xs = np.nonzero(objects == lab)
        markers[ys[0], xs[0]] = int(markers.max()) + 1
    labels = np.asarray(watershed(-dist, markers, mask=fg, watershed_line=True), np.int32)
    if min_px > 1:  # fragments the split left
        sizes = np.bincount(labels.ravel())
        small = sizes < min_px
        small[0] = False
        labels[small[labels]] = 0
    return labels


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Segmenter] = {DEFAULT_SEGMENTER: segment_hed_watershed}


class UnknownSegmenterError(ValueError):
    """A segmenter name that neither :func:`register_segmenter` nor an entry point gave."""


def register_segmenter(name: str, fn: Segmenter, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``name`` (see the module docstring for its signature)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a segmenter needs a non-empty name")
    if name in _REGISTRY and not replace:
        raise ValueError(f"segmenter {name!r} is already registered (replace=True to override)")
    _REGISTRY[name] = fn


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def segmenter_names() -> list[str]:
    """Every segmenter name available: registered ones and installed entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_segmenter(name: str = DEFAULT_SEGMENTER) -> Segmenter:
    """The segmenter called ``name``; :class:`UnknownSegmenterError` naming the choices."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        fn = eps[name].load()
        _REGISTRY[name] = fn
        return fn  # type: ignore[no-any-return]
    raise UnknownSegmenterError(
        f"unknown nuclei segmenter {name!r}; available: {segmenter_names()} (others plug in "
        f"through the entry-point group {ENTRY_POINT_GROUP!r})"
    )


# ---------------------------------------------------------------------------- summaries
def nuclei_grid(labels: np.ndarray, grid: int) -> np.ndarray:
    """``(grid, grid)`` float32: the nuclear fraction of each cell of an even partition of
    the ``(h, w)`` labels (``labels > 0`` area-averaged; cells split pixels fractionally
    when ``grid`` does not divide the side)."""
    mask = (np.asarray(labels) > 0).astype(np.float64)
    if mask.ndim != 2 or grid < 1:
        raise ValueError(f"expected (h, w) labels and grid >= 1, got {mask.shape}, {grid}")
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        edges = np.linspace(0.0, n, grid + 1)
        # weight of pixel i in cell j: overlap of [i, i+1) with [edges[j], edges[j+1])
        lo, hi = edges[:-1, None], edges[1:, None]
        px = np.arange(n)[None, :]
        w = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
        w /= w.sum(axis=1, keepdims=True)
        out = np.tensordot(w, out, axes=([1], [axis]))
        out = np.moveaxis(out, 0, axis)
    return out.astype(np.float32)


@dataclass(frozen=True)
class NucleiStats:
    """Counts and sizes of segmented nuclei (areas in µm²)."""

    count: int
    density_per_mm2: float
    median_area_um2: float
    nuclear_fraction: float


def nuclei_stats(labels: np.ndarray, mpp: float) -> NucleiStats:
    """Count, density, median area and nuclear area fraction of ``labels`` at ``mpp``."""
    labels = np.asarray(labels)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    area_mm2 = labels.size * mpp**2 / 1e6
    return NucleiStats(
        count=len(ids),
        density_per_mm2=float(len(ids) / area_mm2) if area_mm2 else 0.0,
        median_area_um2=float(np.median(areas) * mpp**2) if len(ids) else 0.0,
        nuclear_fraction=float((labels > 0).mean()) if labels.size else 0.0,
    )
