"""A synthetic but realistic H&E tissue with Visium-like spots and known ground truth.

It is the package's demo (napari sample data) and the fixture of dense-prediction tests:
the tissue compartment — hence the expected expression of every gene — is known at every
pixel.

What is generated (all deterministic from ``seed``; ~5–10 s for the default 1.5 mm field):

* ``image``: an RGB H&E-like picture at ``mpp`` µm/px (default 0.5, i.e. a 20× scan) of
  stroma (pink wavy collagen, spindle fibroblast nuclei), tumour nests (crowded
  pleomorphic 8–14 µm nuclei, amphophilic cytoplasm) with necrotic cores, lymphoid
  aggregates (packed 6–7 µm dark round nuclei), fat (~70 µm empty adipocytes with thin
  membranes) and glass. See :mod:`._synthetic_image` for the rendering model
  (Beer–Lambert with the Macenko reference H and E vectors).
* ``compartments``: the per-pixel label map indexing :data:`COMPARTMENTS`.
* ``profiles``: expected transcripts **per µm²** of each gene in each compartment
  (:mod:`._synthetic_genes` documents the numbers: 39 real markers of HER2+ breast cancer,
  stroma, immune cells, fat and housekeeping genes).
  ``SyntheticTissue.expected_density(gene)`` is therefore ``profiles[compartments, g]·mpp²``
  transcripts per pixel, and the expected count of a spot is its sum over the spot disk.
* ``spots``: Visium-like spots — 55 µm diameter on a hexagonal lattice of 100 µm pitch —
  kept when at least :data:`MIN_TISSUE_FRACTION` of the disk is tissue. The expected count
  ``λ`` of gene g in a spot is the sum of the density over the pixels whose centres lie in
  the disk (``layers['expected']``). Counts are ``Poisson(λ · s · γ)`` with a per-spot
  capture efficiency ``s ~ LogNormal`` (mean 1, σ = :data:`EFFICIENCY_SIGMA`) and a
  per-count gamma factor ``γ ~ Gamma(NB_SHAPE, 1/NB_SHAPE)`` (mean 1), i.e. a negative
  binomial with mild overdispersion like real ST data; ``E[count] = λ`` exactly.

Random streams: layout, rendering and counts use independent children of
``numpy.random.SeedSequence(seed)``, so changing the rendering never changes the truth or
the counts.

Files (:func:`write_synthetic_sample`): a pyramidal tiled JPEG OME-TIFF with µm/px in both
the OME-XML and the TIFF resolution tags, the truth as a compressed ``.npz`` and the spots
as ``.h5ad`` following :mod:`.spatial`. The h5ad records ``source_image_path`` **relative
to the h5ad's folder** (``"synthetic_tissue.ome.tif"``), so the folder can be moved or
installed anywhere: readers resolve a relative ``source_image_path`` against the folder of
the h5ad file.
"""

from __future__ import annotations

import importlib.resources
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..user_cache import cache_home
from . import _synthetic_genes as genes_mod
from . import _synthetic_image as img_mod

if TYPE_CHECKING:
    from anndata import AnnData

#: Tissue compartments; ``SyntheticTissue.compartments`` holds indices into this tuple.
COMPARTMENTS: tuple[str, ...] = ("background", "stroma", "tumour", "immune", "fat", "necrosis")

#: Bumped whenever the generator's output for a given seed changes.
GENERATOR_VERSION = 1
#: Seed and field size of the sample shipped in ``sample_data/``.
SAMPLE_SEED = 0
#: Default field of view (µm). 1.536 mm → 3072² px at 0.5 µm/px, ~190 spots; chosen so the
#: JPEG pyramid stays under 2 MiB for shipping (a 2 mm field needs ~3 MiB).
DEFAULT_SIZE_UM = 1536.0
SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
#: A lattice spot is kept ("in tissue") when at least this fraction of its disk is tissue.
MIN_TISSUE_FRACTION = 0.25
#: Shape of the gamma factor of the counts (negative-binomial size; larger = less noise).
NB_SHAPE = 20.0
#: σ of the log-normal per-spot capture efficiency.
EFFICIENCY_SIGMA = 0.15
LIBRARY_ID = "synthetic"
TECHNOLOGY = "visium-synthetic"
#: Full-resolution → thumbnail factors of ``uns['spatial'][lib]['images']``.
HIRES_FACTOR = 4
LOWRES_FACTOR = 16
JPEG_QUALITY = 75
TILE = 512

FILE_NAMES: dict[str, str] = {
    "image": "synthetic_tissue.ome.tif",
    "truth": "synthetic_tissue_truth.npz",
    "spots": "synthetic_tissue_spots.h5ad",
}


@dataclass
class SyntheticTissue:
    """A generated tissue with its ground truth (see the module docstring).

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        compartments: ``(H, W)`` uint8 labels indexing :data:`COMPARTMENTS`.
        genes: gene symbols, the columns of ``profiles`` and ``spots.var_names``.
        profiles: ``(n_compartments, n_genes)`` float64 expected transcripts per µm².
        mpp: µm per pixel of ``image``.
        spots: spot counts as AnnData in the :mod:`.spatial` convention; ``obs`` holds the
            true compartment fractions ``frac_<name>``, the dominant ``compartment`` and the
            true ``capture_efficiency``; ``layers['expected']`` the true means ``λ``.
        seed: the seed it was generated from.
    """

    image: np.ndarray
    compartments: np.ndarray
    genes: list[str]
    profiles: np.ndarray
    mpp: float
    spots: AnnData
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def gene_index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            raise KeyError(f"gene {gene!r} is not in the synthetic panel {self.genes}") from None

    def expected_density(self, gene: str) -> np.ndarray:
        """``(H, W)`` float32 ground-truth expected transcripts **per pixel** of ``gene``.

        Equal to ``profiles[compartment, gene] · mpp²``; summing it over a spot disk gives
        that spot's expected count (``spots.layers['expected']``).
        """
        lut = (self.profiles[:, self.gene_index(gene)] * self.mpp**2).astype(np.float32)
        return lut[self.compartments]


def _spot_lattice(shape: tuple[int, int], mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` as (x, y) px and ``(n, 2)`` (array_row, array_col) of a hexagonal
    lattice (pitch 100 µm, rows 86.6 µm apart, odd rows shifted by half a pitch; array_col
    uses Visium's doubled-column convention) whose disks lie fully inside the image,
    centred in the field."""
    H, W = shape
    pitch = SPOT_PITCH_UM / mpp
    row_step = pitch * np.sqrt(3) / 2
    r = SPOT_DIAMETER_UM / mpp / 2
    n_rows = int(np.floor((H - 1 - 2 * r) / row_step)) + 1
    n_cols = int(np.floor((W - 1 - 2 * r - pitch / 2) / pitch)) + 1
    y0 = (H - 1 - (n_rows - 1) * row_step) / 2
    x0 = (W - 1 - (n_cols - 1) * pitch - pitch / 2) / 2
    centres, grid = [], []
    for i in range(max(n_rows, 0)):
        for j in range(max(n_cols, 0)):
            centres.append((x0 + j * pitch + (i % 2) * pitch / 2, y0 + i * row_step))
            grid.append((i, 2 * j + (i % 2)))
    return np.asarray(centres, np.float64).reshape(-1, 2), np.asarray(grid, int).reshape(-1, 2)


def spot_disk(
    centre_xy: tuple[float, float], radius_px: float, shape: tuple[int, int]
) -> tuple[slice, slice, np.ndarray]:
    """``(slice_y, slice_x, mask)``: pixels whose centres lie within ``radius_px`` of the
    centre (pixel (i, j) has its centre at x = j, y = i). The same rule defines the spot
    integral everywhere (counts, tests, aggregation of dense maps)."""
    cx, cy = centre_xy
    y0, y1 = max(0, int(np.floor(cy - radius_px))), min(shape[0], int(np.ceil(cy + radius_px)) + 1)
    x0, x1 = max(0, int(np.floor(cx - radius_px))), min(shape[1], int(np.ceil(cx + radius_px)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2
    return slice(y0, y1), slice(x0, x1), mask


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    H, W = image.shape[:2]
    h, w = max(1, H // f), max(1, W // f)
    trimmed = image[: h * f, : w * f].astype(np.float32)
    out = trimmed.reshape(h, f, w, f, -1).mean(axis=(1, 3))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _make_spots(
    rng: np.random.Generator,
    labels: np.ndarray,
    image: np.ndarray,
    profiles: np.ndarray,
    genes: list[str],
    mpp: float,
    seed: int,
) -> AnnData:
    import anndata as ad
    import pandas as pd

    centres, grid = _spot_lattice(labels.shape, mpp)
    radius = SPOT_DIAMETER_UM / mpp / 2
    n_comp = len(COMPARTMENTS)
    px_counts = np.zeros((len(centres), n_comp), np.int64)
    for i, (cx, cy) in enumerate(centres):
        sy, sx, mask = spot_disk((cx, cy), radius, labels.shape)
        px_counts[i] = np.bincount(labels[sy, sx][mask], minlength=n_comp)
    frac = px_counts / np.maximum(px_counts.sum(1, keepdims=True), 1)
    keep = 1 - frac[:, 0] >= MIN_TISSUE_FRACTION
    centres, grid, px_counts, frac = centres[keep], grid[keep], px_counts[keep], frac[keep]
    n = len(centres)

    expected = px_counts.astype(np.float64) @ profiles * mpp**2  # (n, genes)
    efficiency = rng.lognormal(-(EFFICIENCY_SIGMA**2) / 2, EFFICIENCY_SIGMA, n)
    gamma = rng.gamma(NB_SHAPE, 1.0 / NB_SHAPE, expected.shape)
    counts = rng.poisson(expected * efficiency[:, None] * gamma).astype(np.int32)

    obs = pd.DataFrame(index=[f"spot_{r:02d}_{c:03d}" for r, c in grid])
    obs["in_tissue"] = np.ones(n, np.int64)
    obs["array_row"] = grid[:, 0].astype(np.int64)
    obs["array_col"] = grid[:, 1].astype(np.int64)
    for k, name in enumerate(COMPARTMENTS):
        obs[f"frac_{name}"] = frac[:, k]
    obs["compartment"] = pd.Categorical(
        [COMPARTMENTS[k] for k in frac.argmax(1)], categories=list(COMPARTMENTS)
    )
    obs["capture_efficiency"] = efficiency
    var = pd.DataFrame(index=list(genes))
    var["marker_of"] = [genes_mod.GENE_GROUP[g] for g in genes]

    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.layers["expected"] = expected.astype(np.float32)
    adata.obsm["spatial"] = centres.astype(np.float64)
    adata.uns["spatial"] = {
        LIBRARY_ID: {
            "images": {
                "hires": _block_mean(image, HIRES_FACTOR),
                "lowres": _block_mean(image, LOWRES_FACTOR),
            },
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / HIRES_FACTOR,
                "tissue_lowres_scalef": 1.0 / LOWRES_FACTOR,
                "spot_diameter_fullres": SPOT_DIAMETER_UM / mpp,
                "microns_per_pixel": float(mpp),
            },
            "metadata": {
                "microns_per_pixel": float(mpp),
                "mpp_source": "synthetic",
                "spot_diameter_um": SPOT_DIAMETER_UM,
                "spot_pitch_um": SPOT_PITCH_UM,
                "technology": TECHNOLOGY,
            },
        }
    }
    adata.uns["synthetic"] = {
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
        "compartments": list(COMPARTMENTS),
        "profiles_per_um2": profiles,
        "nb_shape": NB_SHAPE,
        "efficiency_sigma": EFFICIENCY_SIGMA,
        "min_tissue_fraction": MIN_TISSUE_FRACTION,
    }
    return adata


def generate_synthetic_tissue(
    seed: int = 0, *, size_um: float = DEFAULT_SIZE_UM, mpp: float = 0.5
) -> SyntheticTissue:
    """Generate a square ``size_um`` × ``size_um`` synthetic H&E field at ``mpp`` µm/px.

    Deterministic: the same ``(seed, size_um, mpp)`` gives identical arrays (on a given
    numpy/scipy build). ``size_um`` must be ≥ 200 µm (room for a few spots) and the image
    at most 16384 px a side.
    """
    mpp = float(mpp)
    size_um = float(size_um)
    if not (np.isfinite(mpp) and 0.05 <= mpp <= 10):
        raise ValueError(f"mpp must be in [0.05, 10] µm/px, got {mpp}")
    n_px = round(size_um / mpp)
    if not (np.isfinite(size_um) and size_um >= 200 and n_px <= 16384):
        raise ValueError(f"size_um must be ≥ 200 µm and ≤ 16384 px at {mpp} µm/px: {size_um}")
    rng_layout, rng_render, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)
    )
    shape = (n_px, n_px)
    labels, flow = img_mod.layout(rng_layout, shape, mpp)
    image = img_mod.render(rng_render, labels, flow, mpp)
    genes = list(genes_mod.GENES)
    profiles = genes_mod.profiles_per_um2()
    spots = _make_spots(rng_counts, labels, image, profiles, genes, mpp, int(seed))
    meta = {"size_um": size_um, "generator_version": GENERATOR_VERSION}
    return SyntheticTissue(image, labels, genes, profiles, mpp, spots, int(seed), meta)


# --------------------------------------------------------------------------- writing


def _pyramid(image: np.ndarray, min_side: int = TILE) -> list[np.ndarray]:
    """Level 0 and 2× block-mean reductions until the longer side is ≤ ``min_side``."""
    levels = [image]
    while max(levels[-1].shape[:2]) > min_side:
        a = levels[-1]
        h, w = a.shape[0] // 2, a.shape[1] // 2
        if min(h, w) < 1:
            break
        s = a[: 2 * h, : 2 * w].astype(np.uint16).reshape(h, 2, w, 2, 3).sum(axis=(1, 3))
        levels.append(((s + 2) // 4).astype(np.uint8))
    return levels


def write_ome_tiff(path: str | os.PathLike[str], image: np.ndarray, mpp: float) -> None:
    """Write ``image`` as a tiled (512²), JPEG, pyramidal OME-TIFF (reductions as SubIFDs)
    with µm/px in the OME-XML (``PhysicalSizeX/Y``) and in the TIFF resolution tags
    (pixels per centimetre) of every level. Not atomic by itself."""
    import tifffile

    levels = _pyramid(image)
    # keyword arguments shared by every level's ``TiffWriter.write`` (heterogeneous values)
    common: dict[str, Any] = {
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_QUALITY},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, ome=True, bigtiff=False) as tw:
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            resolution=(1e4 / mpp, 1e4 / mpp),
            metadata={
                "axes": "YXS",
                "Name": "synthetic_tissue",
                "PhysicalSizeX": mpp,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": mpp,
                "PhysicalSizeYUnit": "µm",
            },
            **common,
        )
        for level in levels[1:]:
            f = image.shape[1] / level.shape[1]
            tw.write(
                level,
                subfiletype=1,
                resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                metadata=None,
                **common,
            )


def write_truth(path: str | os.PathLike[str], tissue: SyntheticTissue) -> None:
    """Write the ground truth as a compressed ``.npz`` (see :func:`read_synthetic_truth`)."""
    with open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            compartments=tissue.compartments,
            compartment_names=np.array(COMPARTMENTS),
            genes=np.array(tissue.genes),
            profiles=tissue.profiles,
            mpp=np.float64(tissue.mpp),
            seed=np.int64(tissue.seed),
            generator_version=np.int64(GENERATOR_VERSION),
        )


def read_synthetic_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a truth ``.npz``: ``compartments`` (H, W) uint8, ``compartment_names``,
    ``genes``, ``profiles`` (per µm²), ``mpp``, ``seed``, ``generator_version``."""
    from ..errors import InputFileError

    try:
        with np.load(path, allow_pickle=False) as z:
            out: dict[str, Any] = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"not a synthetic-tissue truth file ({exc})") from exc
    missing = {"compartments", "profiles", "genes", "mpp"} - set(out)
    if missing:
        raise InputFileError(path, f"truth file lacks {sorted(missing)}")
    out["compartment_names"] = [str(s) for s in out.get("compartment_names", COMPARTMENTS)]
    out["genes"] = [str(s) for s in out["genes"]]
    out["mpp"] = float(out["mpp"])
    return out


def write_synthetic_sample(
    folder: str | os.PathLike[str],
    seed: int = 0,
    *,
    tissue: SyntheticTissue | None = None,
    absolute_image_path: bool = False,
    **kw: Any,
) -> dict[str, Path]:
    """Generate (or take ``tissue``) and write the three sample files into ``folder``.

    Files: ``FILE_NAMES`` — the OME-TIFF, the truth ``.npz`` and the spots ``.h5ad``
    (gzip-compressed, its ``metadata.source_image_path`` is the image's file name, i.e.
    relative to the h5ad's folder, unless ``absolute_image_path``). All three are written
    under temporary names in ``folder`` and renamed into place only once all succeeded;
    on failure the temporaries are removed and existing files are left untouched.
    ``kw`` goes to :func:`generate_synthetic_tissue`. Returns ``{"image", "truth",
    "spots"}`` → path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tissue is None:
        tissue = generate_synthetic_tissue(seed, **kw)
    final = {k: folder / name for k, name in FILE_NAMES.items()}
    token = secrets.token_hex(4)
    tmp = {k: folder / f".tmp-{token}-{p.name}" for k, p in final.items()}

    adata = tissue.spots.copy()
    lib = adata.uns["spatial"][LIBRARY_ID]
    lib["metadata"]["source_image_path"] = (
        str(final["image"].resolve()) if absolute_image_path else final["image"].name
    )
    try:
        write_ome_tiff(tmp["image"], tissue.image, tissue.mpp)
        write_truth(tmp["truth"], tissue)
        adata.write_h5ad(tmp["spots"], compression="gzip")
        for k in final:
            os.replace(tmp[k], final[k])
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    return final


# --------------------------------------------------------------------------- shipped sample


def shipped_sample_folder() -> Path | None:
    """The package's ``sample_data`` folder when it is a real directory, else ``None``."""
    try:
        res = importlib.resources.files("napari_histoexpress") / "sample_data"
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(res))
    return path if path.is_dir() else None


def _complete(folder: Path | None) -> Mapping[str, Path] | None:
    if folder is None:
        return None
    paths = {k: folder / name for k, name in FILE_NAMES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def sample_paths() -> dict[str, Path]:
    """Paths ``{"image", "truth", "spots"}`` of the sample (seed :data:`SAMPLE_SEED`).

    The files shipped in the package's ``sample_data`` folder when present; otherwise (a
    stripped install) they are generated once, deterministically, into
    ``$XDG_CACHE_HOME/napari-histoexpress/`` (``~/.cache`` when unset) and reused.
    """
    shipped = _complete(shipped_sample_folder())
    if shipped is not None:
        return dict(shipped)
    folder = cache_home(f"sample_data-v{GENERATOR_VERSION}-seed{SAMPLE_SEED}")
    cached = _complete(folder)
    if cached is not None:
        return dict(cached)
    return write_synthetic_sample(folder, SAMPLE_SEED)
