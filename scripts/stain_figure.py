"""Draw ``docs/images/stain.png``: HED stain augmentation and normalisation on real her2st H&E.

Usage::

    python scripts/stain_figure.py       # reads ../shared/data, writes docs/images/stain.png
    python scripts/stain_figure.py --data /path/to/data --out /tmp/stain.png

Top row: a crop of section C2 (the most tissue-rich 320² block at half resolution, about
1.5 µm/px, ~470 µm across) and its HED augmentation (:func:`napari_histoexpress.stain.
hed_augment`) at σ = bias = 0.05 (the recommended mild setting) and at 0.2 (strong); each
augmented panel shows four independent draws, one per quadrant (seeded, so the figure is
reproducible). Bottom row: the same kind of crop of section C4 (another section, pinker
glass and eosin) and its Macenko and Reinhard normalisation with the C2 crop as reference
(:class:`napari_histoexpress.stain.StainNormalizer`); each bottom panel gives the CIE76 ΔE
between its mean tissue colour (Lab) and the C2 crop's. Reinhard matches that mean by
construction; Macenko matches stain vectors and concentration percentiles, not the mean of
a crop whose tissue differs. Deterministic; about ten seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from napari_histoexpress.stain import (  # noqa: E402  (after the path tweak)
    StainNormalizer,
    hed_augment,
    tissue_mask,
)

CROP_PX = 320


def her2st_crop(
    data: Path, section: str, size: int = CROP_PX, tissue: float | None = None
) -> np.ndarray:
    """The grid-aligned ``size``² block of a section at half resolution with the most
    tissue (:func:`tissue_mask`), or with the tissue fraction nearest ``tissue``."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(data / "her2st" / "images" / f"{section}.jpg")
        img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))
        image = np.asarray(img.convert("RGB"))
    h, w = (s // size * size for s in image.shape[:2])
    frac = tissue_mask(image[:h, :w]).reshape(h // size, size, w // size, size).mean(axis=(1, 3))
    pick = np.argmax(frac) if tissue is None else np.argmin(np.abs(frac - tissue))
    r, c = np.unravel_index(int(pick), frac.shape)
    return np.ascontiguousarray(image[r * size : (r + 1) * size, c * size : (c + 1) * size])


def four_draws(image: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """``image`` with each quadrant augmented by its own draw at σ = bias = ``strength``."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    batch = x.expand(4, -1, -1, -1).contiguous()
    out = hed_augment(batch, strength, strength, generator=torch.Generator().manual_seed(seed))
    out_np = (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    h, w = image.shape[0] // 2, image.shape[1] // 2
    mosaic = image.copy()
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        rows, cols = slice(r * h, (r + 1) * h), slice(c * w, (c + 1) * w)
        mosaic[rows, cols] = out_np[k, rows, cols]
    mosaic[h - 1 : h + 1] = 255  # white cross between the draws
    mosaic[:, w - 1 : w + 1] = 255
    return mosaic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "stain.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data / "her2st" / "images" / "C2.jpg").exists():
        print(f"her2st images not found under {args.data}", file=sys.stderr)
        return 1

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = her2st_crop(args.data, "C2")
    other = her2st_crop(args.data, "C4", tissue=0.7)  # with some of its pink glass
    macenko = StainNormalizer.fit("macenko", ref)
    reinhard = StainNormalizer.fit("reinhard", ref)
    from skimage.color import rgb2lab

    ref_lab = rgb2lab(ref)[tissue_mask(ref)].mean(axis=0)

    def delta_e(image: np.ndarray) -> str:
        """CIE76 ΔE between the mean tissue colours (Lab) of ``image`` and of C2's crop."""
        lab = rgb2lab(image)[tissue_mask(image)].mean(axis=0)
        return f"tissue mean colour ΔE to C2: {np.linalg.norm(lab - ref_lab):.1f}"

    normalised = [macenko.apply_numpy(other), reinhard.apply_numpy(other)]
    panels = [
        (ref, "C2 crop (reference)"),
        (four_draws(ref, 0.05, args.seed), "HED augmentation σ = bias = 0.05\n(4 draws)"),
        (four_draws(ref, 0.2, args.seed + 1), "HED augmentation σ = bias = 0.2\n(4 draws)"),
        (other, f"C4 crop (another section)\n{delta_e(other)}"),
        (normalised[0], f"C4, Macenko-normalised to C2\n{delta_e(normalised[0])}"),
        (normalised[1], f"C4, Reinhard-normalised to C2\n{delta_e(normalised[1])}"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 7.2), dpi=100, layout="constrained")
    for ax, (image, title) in zip(axes.ravel(), panels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(
        "her2st HER2+ breast cancer, sections C2 and C4 (about 1.5 µm/px, 470 µm crops)",
        fontsize=11,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
