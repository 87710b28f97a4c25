"""Training crops around measured spots, with every fully visible spot supervised.

One dataset item = one measured spot (the *anchor*). The crop is a square of
``crop_um`` µm at a fixed working resolution ``mpp`` µm/px, resampled from each slide's
own µm/px (so sections scanned at different resolutions look alike to the model), and
centred on the anchor shifted by a random jitter. **Every** spot whose whole disk lies
inside the crop is returned with its centre and radius in crop pixels and its
normalised targets, not only the anchor: dense models (PixNet-style circle aggregation)
get all the supervision a crop holds.

Choices (all in :class:`SpotCropConfig`):

* ``mpp = 2.0`` µm/px and ``crop_um = 512`` (256 px): cheap enough for CPU training and
  large enough that a legacy-ST crop (200 µm pitch, 100 µm spots) holds the anchor plus
  its full neighbours, and a Visium crop (100 µm pitch, 55 µm spots) holds ~20 spots.
* Jitter: uniform in ``[-jitter_um, jitter_um]`` on each axis (default 100 µm, half an ST
  pitch), capped so the anchor's disk always stays fully inside the crop.
* Augmentation (``augment=True``): one of the 8 dihedral transforms (90° rotations ×
  horizontal flip), applied to the image and the spot centres together. Colour
  augmentation is left to the training loop (it does not move coordinates).
* Determinism: item ``i`` of epoch ``e`` draws from
  ``numpy.random.default_rng((seed, e, i))``, so results do not depend on worker count
  or order; call :meth:`SpotCropDataset.set_epoch` between epochs for new draws.
  ``augment=False`` and ``jitter_um=0`` give the plain centred crop (evaluation).
* Coordinates are continuous pixel coordinates of the crop: pixel ``(row r, col c)``
  covers ``[c, c+1) × [r, r+1)``; the requested centre is at ``(size/2, size/2)``, as
  :func:`napari_histoexpress.io.slides.read_region_at_mpp` places it.
* Stain normalisation (optional, ``stain``: one
  :class:`~napari_histoexpress.stain.StainNormalizer` per section, see :mod:`.stain_fit`):
  applied to the uint8 crop right after it is read, before the dihedral transform and the
  mean/std normalisation (it is a function of each pixel's colour, so the order against the
  flips does not matter). Without it the crop is left as read.
* Image normalisation: ``(x / 255 - mean) / std`` with the backbone's statistics
  (:func:`napari_histoexpress.models.backbones.backbone_transform_stats`) unless
  ``mean``/``std`` are given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset

from ..expression import expression_matrix
from ..io.spatial import microns_per_pixel, spot_centres_px, spot_diameter_px
from ..stain import StainNormalizer

__all__ = [
    "SpotCrop",
    "SpotCropConfig",
    "SpotCropDataset",
    "collate_spot_crops",
    "dihedral_transform",
    "section_mpp",
]

RegionReader = Callable[[Any, tuple[float, float], tuple[int, int], float], np.ndarray]


@dataclass
class SpotCropConfig:
    """Settings of :class:`SpotCropDataset` (see the module docstring for the choices)."""

    mpp: float = 2.0
    crop_um: float = 512.0
    jitter_um: float = 100.0
    augment: bool = True
    seed: int = 0
    target_sum: float = 1e4
    backbone: str = "resnet18"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @property
    def size_px(self) -> int:
        """Side of the crop in working pixels."""
        return round(self.crop_um / self.mpp)


@dataclass
class SpotCrop:
    """One crop and the spots it supervises (numpy, before tensor conversion).

    ``centres_xy`` are ``(x, y)`` crop pixels (continuous, see module docstring),
    ``radii`` crop pixels, ``targets`` normalised expression, ``spot_index`` the rows of
    the section's AnnData; ``anchor`` is the position of the anchor spot in those arrays.
    """

    image: np.ndarray
    centres_xy: np.ndarray
    radii: np.ndarray
    targets: np.ndarray
    spot_index: np.ndarray
    section: int = 0
    anchor: int = 0
    transform: tuple[int, bool] = field(default=(0, False))


def section_mpp(adata: Any, slide: Any) -> float:
    """Full-resolution µm/px of a section: the slide's, else the AnnData's; raises if unknown."""
    mpp = getattr(slide, "mpp", None)
    if mpp is None or not np.isfinite(float(mpp)) or float(mpp) <= 0:
        mpp = microns_per_pixel(adata)
    if mpp is None:
        raise ValueError(
            "the µm/px of the section is unknown (give it to open_slide or the reader)"
        )
    return float(mpp)


def dihedral_transform(
    image: np.ndarray, xy: np.ndarray, k: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``flip`` (left-right) then ``k`` counter-clockwise 90° turns (``np.rot90``).

    ``xy`` are continuous ``(x, y)`` pixel coordinates of ``image`` ``(h, w, ...)``;
    returns the transformed image (contiguous) and coordinates.
    """
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2)
    w = image.shape[1]
    if flip:
        image = image[:, ::-1]
        xy[:, 0] = w - xy[:, 0]
    for _ in range(k % 4):
        w = image.shape[1]
        image = np.rot90(image)
        # np.rot90: new[i, j] = old[j, w - 1 - i]  =>  x' = y, y' = w - x
        xy = np.stack([xy[:, 1], w - xy[:, 0]], axis=1)
    return np.ascontiguousarray(image), xy


def _default_reader() -> RegionReader:
    from ..io.slides import read_region_at_mpp

    return read_region_at_mpp


class SpotCropDataset(Dataset):
    """Crops around spots of several sections; see the module docstring.

    Args:
        sections: ``(adata, slide)`` pairs; ``adata`` follows the spatial convention of
            :mod:`napari_histoexpress.io.spatial` (raw counts, ``obsm['spatial']`` in
            level-0 px of ``slide``).
        genes: the genes to predict (see :func:`..genes.select_genes`).
        config: :class:`SpotCropConfig`; keyword overrides are applied on top.
        read_region: ``(slide, centre_xy, (w, h), target_mpp) -> (h, w, 3) uint8``;
            defaults to :func:`napari_histoexpress.io.slides.read_region_at_mpp`.
        stain: one stain normaliser per section, applied to each uint8 crop as read
            (``None``: none).

    ``__getitem__`` returns a dict of tensors: ``image`` float32 ``(3, h, w)``
    normalised, ``centres`` ``(k, 2)`` float32 crop px ``(x, y)``, ``radii`` ``(k,)``,
    ``targets`` ``(k, n_genes)`` float32, ``spot_index`` ``(k,)`` int64, ``section`` int.
    Batch with :func:`collate_spot_crops`.
    """

    def __init__(
        self,
        sections: Sequence[tuple[Any, Any]],
        genes: Sequence[str],
        config: SpotCropConfig | None = None,
        *,
        read_region: RegionReader | None = None,
        stain: Sequence[StainNormalizer] | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or SpotCropConfig()
        if overrides:
            cfg = SpotCropConfig(**{**cfg.__dict__, **overrides})
        if cfg.mpp <= 0 or cfg.crop_um <= 0 or cfg.jitter_um < 0:
            raise ValueError(f"invalid crop settings {cfg}")
        self.config = cfg
        self.genes = [str(g) for g in genes]
        self.sections = list(sections)
        self.stain = None if stain is None else list(stain)
        if self.stain is not None and len(self.stain) != len(self.sections):
            raise ValueError(
                f"{len(self.stain)} stain normalisers for {len(self.sections)} sections"
            )
        self._read = read_region or _default_reader()
        self.epoch = 0
        if cfg.mean is None or cfg.std is None:
            from ..models.backbones import backbone_transform_stats

            mean, std = backbone_transform_stats(cfg.backbone)
        else:
            mean, std = cfg.mean, cfg.std
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

        self._xy: list[np.ndarray] = []
        self._trees: list[cKDTree] = []
        self._targets: list[np.ndarray] = []
        self._slide_mpp: list[float] = []
        self._radius_um: list[float] = []
        index: list[tuple[int, int]] = []
        for s, (adata, slide) in enumerate(self.sections):
            xy = spot_centres_px(adata)
            mpp = section_mpp(adata, slide)
            self._xy.append(xy)
            self._trees.append(cKDTree(xy))
            self._targets.append(expression_matrix(adata, self.genes, cfg.target_sum))
            self._slide_mpp.append(mpp)
            self._radius_um.append(spot_diameter_px(adata) * mpp / 2.0)
            index.extend((s, i) for i in range(len(xy)))
        if not index:
            raise ValueError("no spots in the given sections")
        self._index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def all_targets(self) -> np.ndarray:
        """Normalised targets of every spot of every section, ``(n_spots, n_genes)``."""
        return np.concatenate(self._targets)

    def spot_radius_um(self, section: int) -> float:
        """Spot radius (µm) of section ``section``."""
        return self._radius_um[section]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws (jitter, augmentation) items use."""
        self.epoch = int(epoch)

    def crop(self, item: int) -> SpotCrop:
        """The crop of dataset item ``item`` as numpy arrays (see :class:`SpotCrop`)."""
        cfg = self.config
        s, anchor = (int(v) for v in self._index[item])
        slide_mpp = self._slide_mpp[s]
        r_um = self._radius_um[s]
        size = cfg.size_px
        rng = np.random.default_rng((cfg.seed, self.epoch, int(item)))

        max_jitter = max(0.0, min(cfg.jitter_um, cfg.crop_um / 2.0 - r_um))
        shift_um = rng.uniform(-max_jitter, max_jitter, size=2) if max_jitter > 0 else np.zeros(2)
        centre = self._xy[s][anchor] + shift_um / slide_mpp  # level-0 px

        image = np.asarray(
            self._read(
                self.sections[s][1], (float(centre[0]), float(centre[1])), (size, size), cfg.mpp
            )
        )
        if not image.flags.writeable:
            image = image.copy()
        if image.shape[:2] != (size, size):
            raise ValueError(f"read_region returned {image.shape}, expected ({size}, {size}, 3)")
        if self.stain is not None:
            image = self.stain[s].apply_numpy(image)

        # candidates: within the crop's half-diagonal of the centre, then exact disk test
        half_l0 = cfg.crop_um / 2.0 * np.sqrt(2.0) / slide_mpp
        cand = np.asarray(sorted(self._trees[s].query_ball_point(centre, half_l0)), dtype=np.int64)
        scale = slide_mpp / cfg.mpp  # level-0 px -> crop px
        xy = (self._xy[s][cand] - centre) * scale + size / 2.0
        r_px = r_um / cfg.mpp
        tol = 1e-6
        inside = np.all((xy - r_px >= -tol) & (xy + r_px <= size + tol), axis=1)
        cand, xy = cand[inside], xy[inside]

        k, flip = 0, False
        if cfg.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            image, xy = dihedral_transform(image, xy, k, flip)
        anchor_pos = np.flatnonzero(cand == anchor)
        return SpotCrop(
            image=image,
            centres_xy=xy.astype(np.float32),
            radii=np.full(len(cand), r_px, dtype=np.float32),
            targets=self._targets[s][cand],
            spot_index=cand,
            section=s,
            anchor=int(anchor_pos[0]) if anchor_pos.size else -1,
            transform=(k, flip),
        )

    def __getitem__(self, item: int) -> dict[str, Any]:
        c = self.crop(item)
        img = torch.from_numpy(c.image).permute(2, 0, 1).float().div_(255.0)
        img = (img - self._mean) / self._std
        return {
            "image": img,
            "centres": torch.from_numpy(c.centres_xy),
            "radii": torch.from_numpy(c.radii),
            "targets": torch.from_numpy(np.ascontiguousarray(c.targets)),
            "spot_index": torch.from_numpy(c.spot_index),
            "section": c.section,
        }


def collate_spot_crops(batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items with different spot counts.

    Images are stacked ``(B, 3, h, w)``; the per-spot tensors are concatenated over the
    batch (``(N, ...)`` with ``N = Σ k``) and ``batch_index`` ``(N,)`` says which image
    each spot belongs to; ``section`` is ``(N,)`` too, and ``n_spots`` ``(B,)``.
    """
    images = torch.stack([b["image"] for b in batch])
    n = torch.tensor([len(b["radii"]) for b in batch], dtype=torch.int64)
    return {
        "image": images,
        "centres": torch.cat([b["centres"] for b in batch]),
        "radii": torch.cat([b["radii"] for b in batch]),
        "targets": torch.cat([b["targets"] for b in batch]),
        "spot_index": torch.cat([b["spot_index"] for b in batch]),
        "section": torch.repeat_interleave(torch.tensor([b["section"] for b in batch]), n),
        "batch_index": torch.repeat_interleave(torch.arange(len(batch)), n),
        "n_spots": n,
    }
