"""The nuclei-segmenter figure of the README: a her2st crop with the default segmenter's nuclei.

Run:  python scripts/nuclei_figure.py [--data ../shared/data] [--out docs/images/nuclei_her2st.png]

Reads a 330 µm crop of her2st C2 around one spot at the image's 0.74 µm/px, segments it
with ``napari_histoexpress.nuclei`` (the ALIGN-ST nuclei stream's default, no weights) and
draws the image, the nuclei outlines and the 32 × 32 nuclear-fraction grid the model reads,
with the count, density and median area in the title.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from skimage.segmentation import find_boundaries

    from napari_histoexpress import nuclei
    from napari_histoexpress.io.slides import open_slide, read_region_at_mpp

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "nuclei_her2st.png")
    parser.add_argument("--spot", type=int, default=100, help="row of C2_selection.tsv")
    args = parser.parse_args()
    her2st = args.data / "her2st"
    mpp = 0.74
    slide = open_slide(her2st / "images" / "C2.jpg", mpp=mpp)
    spots = pd.read_csv(her2st / "spots" / "C2_selection.tsv", sep="\t")
    x, y = float(spots.pixel_x[args.spot]), float(spots.pixel_y[args.spot])
    rgb = np.asarray(read_region_at_mpp(slide, (x, y), (448, 448), mpp))
    labels = nuclei.segment_hed_watershed(rgb, mpp)
    stats = nuclei.nuclei_stats(labels, mpp)
    grid = nuclei.nuclei_grid(labels, 32)

    outline = rgb.copy()
    outline[find_boundaries(labels, mode="outer")] = (0, 255, 0)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.8), dpi=110)
    extent = (0, 448 * mpp, 448 * mpp, 0)
    axes[0].imshow(rgb, extent=extent)
    axes[0].set_title("her2st C2, 0.74 µm/px")
    axes[1].imshow(outline, extent=extent)
    axes[1].set_title(
        f"{stats.count} nuclei ({stats.density_per_mm2:,.0f}/mm²), "
        f"median {stats.median_area_um2:.0f} µm²"
    )
    im = axes[2].imshow(grid, cmap="magma", vmin=0, vmax=1, extent=extent)
    axes[2].set_title("nuclear fraction, 32 × 32 (model input)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("µm")
    fig.suptitle("Default nuclei segmenter (hed-watershed: haematoxylin, Otsu, watershed)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"{args.out}: {stats}")


if __name__ == "__main__":
    main()
