"""Layout and H&E rendering of the synthetic tissue (private helper of :mod:`.synthetic`).

Everything here is plain numpy/scipy and deterministic given a ``numpy.random.Generator``.

Choices (and why):

* **Layout** is built on a coarse grid (``LAYOUT_UM`` µm per cell) from gaussian-filtered
  white noise, i.e. smooth random fields whose correlation length sets the region scale
  (tissue outline ~300 µm, tumour/fat/immune regions ~100–250 µm, tumour nests ~40 µm).
  Thresholds are *quantiles* of the fields inside the tissue, so every compartment is
  present with a controlled area fraction for any seed and any size. The fields are
  bilinearly upsampled to full resolution before thresholding, so region borders are smooth
  curves and not a staircase of layout cells.
* **Colour** follows Beer–Lambert: optical density = haematoxylin concentration × H vector +
  eosin concentration × E vector, RGB = I0·exp(−OD). The stain vectors are the Macenko
  reference vectors (widely used as the "typical" H&E), which give the familiar purple/pink.
* **Nuclei** are filled ellipses with a soft edge, a darker rim (nuclear membrane) and
  granular chromatin texture, placed on jittered lattices (a cheap blue-noise sampler, so
  they rarely overlap) with per-compartment size, shape and density from histology:
  tumour 8–14 µm pleomorphic, lymphocytes 6–7 µm round and dark, fibroblasts 12–20 µm long
  spindles aligned with the collagen, sparse flattened nuclei on adipocyte membranes, and
  small karyorrhectic fragments in necrosis. A nucleus is only kept when it lies inside its
  own compartment, so the per-pixel compartment truth is never contradicted by the picture.
* **Collagen** is drawn as thousands of wavy fibres traced along a smooth random flow field
  (vectorised streamlines deposited with ``bincount``), then blurred to ~1 µm width.
* **Fat** is a Voronoi tessellation (seeds ~70 µm apart) whose cell borders, from the gap
  between the nearest and second-nearest seed distances, become thin pink membranes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# compartment indices (kept in sync with synthetic.COMPARTMENTS)
BACKGROUND, STROMA, TUMOUR, IMMUNE, FAT, NECROSIS = range(6)

#: µm per cell of the coarse layout grid
LAYOUT_UM = 4.0

#: Optical density per unit concentration of haematoxylin and eosin (rows), RGB order
#: (Macenko et al. 2009 reference vectors, unit norm).
STAIN_VECTORS = np.array(
    [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]],
    dtype=np.float32,
)
STAIN_VECTORS /= np.linalg.norm(STAIN_VECTORS, axis=1, keepdims=True)
#: Illumination (glass) intensity per channel, slightly bluish white like a scanner.
I0 = np.array([244.0, 243.0, 247.0], dtype=np.float32)


@dataclass(frozen=True)
class NucleusKind:
    """How one compartment's nuclei look (lengths in µm)."""

    spacing_um: float  # jittered-lattice spacing (sets density)
    keep: float  # fraction of lattice sites that get a nucleus
    major_um: tuple[float, float]  # range of the semi-major axis
    aspect: tuple[float, float]  # range of minor/major
    stain: tuple[float, float]  # range of haematoxylin concentration
    wobble: float  # boundary irregularity (relative radius perturbation)
    texture: float  # chromatin texture amplitude (relative)
    rim: float  # extra stain at the nuclear membrane
    along_flow: bool = False  # orient along the collagen flow field


NUCLEI: dict[int, NucleusKind] = {
    TUMOUR: NucleusKind(13.0, 0.9, (4.0, 7.0), (0.65, 1.0), (0.75, 1.1), 0.06, 0.3, 0.35),
    IMMUNE: NucleusKind(7.2, 0.95, (2.9, 3.5), (0.85, 1.0), (1.25, 1.6), 0.04, 0.15, 0.1),
    STROMA: NucleusKind(30.0, 0.55, (6.0, 10.0), (0.22, 0.35), (1.0, 1.3), 0.03, 0.2, 0.1, True),
    NECROSIS: NucleusKind(11.0, 0.45, (0.8, 2.2), (0.6, 1.0), (1.1, 1.6), 0.25, 0.1, 0.0),
}


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise filtered by a gaussian of ``sigma`` cells, rescaled to unit variance."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def upsample(a: np.ndarray, k: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear ×``k`` upsampling (cell centres → pixel centres, edges held), cropped.

    Integer factors let the weights repeat every ``k`` pixels, so the whole thing is a few
    broadcast multiply-adds (~10× faster than gather-based interpolation at 4096²).
    """
    a = np.asarray(a, np.float32)
    t = ((np.arange(k, dtype=np.float32) + 0.5) / k - 0.5).astype(np.float32)
    w_self = 1 - np.abs(t)
    w_prev = np.where(t < 0, -t, 0).astype(np.float32)
    w_next = np.where(t > 0, t, 0).astype(np.float32)

    def along0(x: np.ndarray) -> np.ndarray:  # (n, m) -> (n*k, m)
        prev = np.concatenate([x[:1], x[:-1]], 0)
        nxt = np.concatenate([x[1:], x[-1:]], 0)
        out = x[:, None] * w_self[None, :, None]
        out += prev[:, None] * w_prev[None, :, None]
        out += nxt[:, None] * w_next[None, :, None]
        return out.reshape(-1, x.shape[1])

    rows = along0(a)[: out_shape[0]]  # (H, w)
    prev = np.concatenate([rows[:, :1], rows[:, :-1]], 1)
    nxt = np.concatenate([rows[:, 1:], rows[:, -1:]], 1)
    out = rows[:, :, None] * w_self
    out += prev[:, :, None] * w_prev
    out += nxt[:, :, None] * w_next
    return out.reshape(rows.shape[0], -1)[:, : out_shape[1]]


def _quantile_in(field: np.ndarray, mask: np.ndarray, frac: float) -> float:
    """Threshold such that ``frac`` of ``mask`` lies above it."""
    vals = field[mask]
    if vals.size == 0:
        return np.inf
    return float(np.quantile(vals, 1.0 - frac))


def layout(
    rng: np.random.Generator, shape: tuple[int, int], mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel compartment labels (uint8) and the coarse flow angle field (radians).

    Target area fractions of the tissue: tumour ~30 %, fat ~12 %, immune ~10 %,
    necrosis ~2 % (cores of nests wider than ~70 µm), stroma the rest; tissue covers ~75 %
    of the field. Fields are drawn on a grid of ``k`` px cells (``k·mpp`` ≈ ``LAYOUT_UM``).
    """
    H, W = shape
    k = max(1, round(LAYOUT_UM / mpp))
    cell = k * mpp  # µm per layout cell
    h, w = -(-H // k), -(-W // k)

    def field(scale_um: float) -> np.ndarray:
        # very smooth fields are drawn on a coarser grid first (cheaper filtering)
        sub = max(1, int(scale_um / cell / 8))
        f = smooth_field(rng, (-(-h // sub), -(-w // sub)), scale_um / cell / sub)
        return upsample(f, sub, (h, w)) if sub > 1 else f

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy + 0.5) / h - 0.5, (xx + 0.5) / w - 0.5) / 0.5
    # tissue outline: smooth field + a mild radial falloff (tissue mostly away from corners)
    tissue_f = field(300.0) - 1.6 * r**2 + 0.25 * field(40.0)
    t_tissue = _quantile_in(tissue_f, np.ones((h, w), bool), 0.75)
    tissue = tissue_f > t_tissue

    fat_f = field(250.0) + 0.6 * r  # fat lobules lean towards the periphery
    tum_f = field(220.0) + 0.55 * field(45.0)  # large regions broken into nests
    imm_f = field(90.0) + 0.3 * field(25.0)
    t_fat = _quantile_in(fat_f, tissue, 0.12)
    not_fat = tissue & (fat_f <= t_fat)
    t_tum = _quantile_in(tum_f, not_fat, 0.30 / 0.88)
    rest = not_fat & (tum_f <= t_tum)
    t_imm = _quantile_in(imm_f, rest, 0.10 / 0.58)

    # necrosis: cores of the largest nests (far from their border)
    tum_lo = not_fat & (tum_f > t_tum)
    depth = ndimage.distance_transform_edt(tum_lo).astype(np.float32) * cell
    nec_f = depth + 6.0 * field(30.0)
    t_nec = max(_quantile_in(nec_f, tum_lo, 0.02 / 0.30), 35.0)

    labels = np.zeros(shape, np.uint8)
    tissue_u = upsample(tissue_f, k, shape) > t_tissue
    labels[tissue_u] = STROMA
    fat_u = tissue_u & (upsample(fat_f, k, shape) > t_fat)
    labels[fat_u] = FAT
    tum_u = tissue_u & ~fat_u & (upsample(tum_f, k, shape) > t_tum)
    labels[tum_u] = TUMOUR
    del fat_u
    labels[(labels == STROMA) & (upsample(imm_f, k, shape) > t_imm)] = IMMUNE
    labels[tum_u & (upsample(nec_f, k, shape) > t_nec)] = NECROSIS

    flow = np.pi * field(200.0)  # collagen orientation (radians), smoothly varying
    return labels, flow


def _jittered_sites(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """Points (y, x) in px on a hexagonal lattice jittered by up to 22 % of the spacing.

    A cheap blue-noise sampler: neighbours stay ≥ ~40 % of the spacing apart.
    """
    H, W = shape
    dy = spacing * np.sqrt(3) / 2
    ys = np.arange(dy / 2, H, dy)
    xs = np.arange(spacing / 2, W + spacing, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx = gx + (np.arange(len(ys)) % 2)[:, None] * spacing / 2
    pts = np.stack([gy.ravel(), gx.ravel()], 1)
    pts += rng.uniform(-0.22, 0.22, pts.shape) * spacing
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < H) & (pts[:, 1] >= 0) & (pts[:, 1] < W)
    return pts[inside]


def _flow_at(flow: np.ndarray, pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = flow.shape
    iy = np.clip((pts[:, 0] * h / shape[0]).astype(np.intp), 0, h - 1)
    ix = np.clip((pts[:, 1] * w / shape[1]).astype(np.intp), 0, w - 1)
    return flow[iy, ix]


def render_nuclei(
    rng: np.random.Generator,
    labels: np.ndarray,
    flow: np.ndarray,
    mpp: float,
    hema: np.ndarray,
    texture: np.ndarray,
) -> int:
    """Stamp nuclei into the haematoxylin map ``hema`` (in place); returns how many.

    ``texture`` (unit-variance fine noise, same shape) modulates the chromatin.
    """
    shape = labels.shape
    H, W = shape
    total = 0
    for comp, kind in NUCLEI.items():
        if not (labels == comp).any():
            continue
        pts = _jittered_sites(rng, shape, kind.spacing_um / mpp)
        pts = pts[rng.random(len(pts)) < kind.keep]
        n = len(pts)
        a = rng.uniform(*kind.major_um, n) / mpp  # semi-major (px)
        b = a * rng.uniform(*kind.aspect, n)
        if kind.along_flow:
            theta = _flow_at(flow, pts, shape) + rng.normal(0, 0.15, n)
        else:
            theta = rng.uniform(0, np.pi, n)
        # keep nuclei that lie entirely in their compartment (centre and the 4 axis ends)
        ok = np.ones(n, bool)
        for ca, sa in [(1, 0), (-1, 0), (0, 1), (0, -1), (0, 0)]:
            py = pts[:, 0] + ca * a * np.sin(theta) + sa * b * np.cos(theta)
            px = pts[:, 1] + ca * a * np.cos(theta) - sa * b * np.sin(theta)
            iy, ix = np.round(py).astype(np.intp), np.round(px).astype(np.intp)
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            ok &= inside
            ok[inside] &= labels[iy[inside], ix[inside]] == comp
        pts, a, b, theta = pts[ok], a[ok], b[ok], theta[ok]
        n = len(pts)
        if n == 0:
            continue
        stain = rng.uniform(*kind.stain, n).astype(np.float32)
        k_wob = rng.integers(2, 5, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        half = int(np.ceil(a.max() * (1 + kind.wobble) + 2))
        off = np.arange(-half, half + 1, dtype=np.float32)
        for start in range(0, n, 2048):
            sl = slice(start, start + 2048)
            cy, cx = pts[sl, 0], pts[sl, 1]
            iy0, ix0 = np.round(cy).astype(np.intp), np.round(cx).astype(np.intp)
            gy = (iy0 - cy)[:, None, None] + off[None, :, None]  # (m, P, 1)
            gx = (ix0 - cx)[:, None, None] + off[None, None, :]  # (m, 1, P)
            ct, st = np.cos(theta[sl])[:, None, None], np.sin(theta[sl])[:, None, None]
            u = gx * ct + gy * st
            v = -gx * st + gy * ct
            rr = np.sqrt((u / a[sl, None, None]) ** 2 + (v / b[sl, None, None]) ** 2)
            ang = np.arctan2(v, u)
            rr = rr / (
                1 + kind.wobble * np.sin(k_wob[sl, None, None] * ang + phase[sl, None, None])
            )
            edge_px = 1.2 / b[sl, None, None]  # ~1.2 px soft edge
            body = np.clip((1 - rr) / edge_px + 0.5, 0, 1)
            rim = kind.rim * np.exp(-(((rr - 0.88) / 0.12) ** 2))
            val = (stain[sl, None, None] * (body * (1 + rim))).astype(np.float32)
            yy = iy0[:, None, None] + off.astype(np.intp)[None, :, None]
            xx = ix0[:, None, None] + off.astype(np.intp)[None, None, :]
            yy, xx = np.broadcast_arrays(yy, xx)
            m = (val > 0.01) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            flat = yy[m] * W + xx[m]
            v_m = val[m] * (1 + kind.texture * texture.reshape(-1)[flat])
            # overlapping nuclei: keep the darker value at each pixel
            order = np.argsort(v_m, kind="stable")
            hv = hema.reshape(-1)
            cur = hv[flat[order]]
            hv[flat[order]] = np.maximum(cur, v_m[order])
        total += n
    return total


def collagen_fibres(
    rng: np.random.Generator, shape: tuple[int, int], flow: np.ndarray, mpp: float
) -> np.ndarray:
    """Density of wavy collagen fibres (float32, ~0..1) following the flow field."""
    H, W = shape
    area_um2 = H * W * mpp * mpp
    n = int(area_um2 / 150.0)  # one 100 µm fibre per ~150 µm² gives a dense mesh
    step = 1.0  # px per step
    n_steps = int(100.0 / mpp / step)
    y = rng.uniform(0, H, n)
    x = rng.uniform(0, W, n)
    wav_amp = rng.uniform(0.15, 0.45, n)
    wav_k = rng.uniform(0.02, 0.06, n) * mpp / 0.5
    phase = rng.uniform(0, 2 * np.pi, n)
    weight = rng.uniform(0.5, 1.0, n).astype(np.float32)
    idx_parts: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    for i in range(n_steps):
        ang = _flow_at(flow, np.stack([y, x], 1), shape) + wav_amp * np.sin(wav_k * i + phase)
        y = y + step * np.sin(ang)
        x = x + step * np.cos(ang)
        iy, ix = y.astype(np.intp), x.astype(np.intp)
        ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        idx_parts.append(iy[ok] * W + ix[ok])
        w_parts.append(weight[ok])
    acc = np.bincount(
        np.concatenate(idx_parts), weights=np.concatenate(w_parts), minlength=H * W
    ).astype(np.float32)
    fib = ndimage.gaussian_filter(acc.reshape(H, W), 1.3 * 0.5 / mpp)
    return np.clip(fib / (np.quantile(fib[::7, ::7], 0.9) + 1e-6), 0, 1.5).astype(np.float32)


def fat_membranes(
    rng: np.random.Generator, labels: np.ndarray, mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """Membrane intensity (0..1) of adipocytes and the Voronoi seeds (y, x px) used."""
    H, W = labels.shape
    seeds = _jittered_sites(rng, (H, W), 72.0 / mpp)
    memb = np.zeros((H, W), np.float32)
    fat = labels == FAT
    if not fat.any() or len(seeds) < 2:
        return memb, seeds
    f = 2  # compute the Voronoi gap on a half-resolution grid, then upsample
    h, w = -(-H // f), -(-W // f)
    fat_lo = ndimage.binary_dilation(fat[::f, ::f], iterations=2)
    ys, xs = np.nonzero(fat_lo)
    tree = cKDTree(seeds)
    d, _ = tree.query(np.stack([ys * f + 0.5, xs * f + 0.5], 1), k=2, workers=-1)
    gap = np.full((h, w), 50.0, np.float32)
    gap[ys, xs] = (d[:, 1] - d[:, 0]) * mpp  # µm from the border between two cells (×2)
    gap = upsample(gap, f, (H, W))
    memb = np.exp(-((gap / 1.4) ** 2)).astype(np.float32)
    memb[~fat] = 0
    return memb, seeds


def stains_to_rgb(hema: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """Beer–Lambert: concentrations (H, W) → uint8 RGB (H, W, 3)."""
    out = np.empty((*hema.shape, 3), np.uint8)
    for c in range(3):
        od = hema * STAIN_VECTORS[0, c]
        od += eosin * STAIN_VECTORS[1, c]
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= I0[c]
        np.clip(od, 0, 255, out=od)
        out[..., c] = np.rint(od)
    return out


# Per-compartment stain model: concentration = base + a·fine noise + b·mottle (+ extras).
#                   bg     stroma tumour immune fat    necrosis
_E_BASE = np.array([0.0, 0.20, 0.42, 0.22, 0.02, 0.62], np.float32)
_E_FINE = np.array([0.0, 0.03, 0.03, 0.03, 0.0, 0.06], np.float32)
_E_MOTT = np.array([0.0, 0.05, 0.07, 0.04, 0.0, 0.12], np.float32)
_E_FIB = np.array([0.0, 0.50, 0.0, 0.0, 0.0, 0.0], np.float32)
_E_MEMB = np.array([0.0, 0.0, 0.0, 0.0, 0.55, 0.0], np.float32)
_H_BASE = np.array([0.0, 0.03, 0.15, 0.13, 0.01, 0.13], np.float32)
_H_FINE = np.array([0.0, 0.0, 0.02, 0.02, 0.0, 0.04], np.float32)
_H_MOTT = np.array([0.0, 0.01, 0.04, 0.03, 0.0, 0.06], np.float32)
_H_MEMB = np.array([0.0, 0.0, 0.0, 0.0, 0.05, 0.0], np.float32)


def render(
    rng: np.random.Generator, labels: np.ndarray, flow: np.ndarray, mpp: float
) -> np.ndarray:
    """Render the H&E image (uint8 RGB) of a compartment label map."""
    shape = labels.shape
    H, W = shape
    s1 = 0.5 / mpp  # 1 px at the default 0.5 µm/px
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8 * s1)
    fine /= fine.std() + 1e-6
    # mottle: ~3 µm blotches drawn on a 4× coarser grid
    q = 4
    mott = smooth_field(rng, (-(-H // q), -(-W // q)), 1.5 * s1)
    mott = upsample(mott, q, shape)
    slide = upsample(smooth_field(rng, (-(-H // 64), -(-W // 64)), 2.0), 64, shape)

    fib = collagen_fibres(rng, shape, flow, mpp)
    memb, _ = fat_membranes(rng, labels, mpp)
    eosin = _E_BASE[labels]
    eosin += _E_FINE[labels] * fine
    eosin += _E_MOTT[labels] * mott
    eosin += _E_FIB[labels] * fib
    del fib
    eosin += _E_MEMB[labels] * memb
    hema = _H_BASE[labels]
    hema += _H_FINE[labels] * fine
    hema += _H_MOTT[labels] * mott
    hema += _H_MEMB[labels] * memb
    del memb, mott

    nuc = np.zeros(shape, np.float32)
    render_nuclei(rng, labels, flow, mpp, nuc, fine)
    np.maximum(hema, nuc, out=hema)
    eosin *= np.clip(1 - 0.6 * nuc, 0.2, 1)
    del nuc

    # slide-level stain variation (±8 %) and optical blur (~0.3 µm)
    slide *= 0.08
    slide += 1
    hema *= slide
    eosin *= 2 - slide
    del slide
    np.clip(hema, 0, None, out=hema)
    np.clip(eosin, 0, None, out=eosin)
    hema = ndimage.gaussian_filter(hema, 0.6 * s1, truncate=3.0)
    eosin = ndimage.gaussian_filter(eosin, 0.6 * s1, truncate=3.0)
    rgb = stains_to_rgb(hema, eosin)
    return rgb
