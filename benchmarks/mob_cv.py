"""Mouse olfactory bulb MOB1–MOB3 leave-one-section-out: the README's second table.

Another tissue, species and lab than her2st, so that no choice is tuned to one patient.
Imports the three sections from ``../shared/data/mob`` (the alignment-table variant of the
legacy ST format) with ``--mpp 4.4`` (the tables do not record µm/px; an affine fit of pixel
vs array coordinates gives 21.6 × 24.1 px per array unit, i.e. 4.6 × 4.2 µm/px if an array
unit is 100 µm; the same value for all three keeps the folds comparable), chooses the 250
highest-mean genes, and cross-validates every run (``_loso.py``) exactly as

    histoexpress cv --data MOB1.h5ad MOB2.h5ad MOB3.h5ad --genes 250 --out OUT/LABEL OPTIONS

Default runs: PixNet (random-init ResNet18, the ImageNet EfficientNet-Lite0, and
ResNet18 with HED stain augmentation), the ridge
baseline on random-init ResNet18, on the offline ImageNet EfficientNet-Lite0, and on Lite0
with Macenko stain normalisation. Prints the Markdown table of ``_loso.print_table``.

Run:  python benchmarks/mob_cv.py [--data ../shared/data] [--out cv-mob] [--device auto]
      [--run LABEL "OPTIONS"]... | [--models pixnet ridge]
(on 2 CPU cores: about 6 min per PixNet fold, 2-3 min per ridge fold; a rerun resumes.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _loso import Run, add_run_options, import_sections, run_table, runs_from

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("MOB1", "MOB2", "MOB3")
MOB_MPP = 4.4
LITE0 = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "imagenet"]
PIXNET_R18 = ["--model", "pixnet", "--backbone", "resnet18"]
DEFAULT_RUNS = (
    Run("pixnet-resnet18", PIXNET_R18),
    Run("pixnet-lite0", ["--model", "pixnet", *LITE0]),
    Run("pixnet-resnet18-hed", [*PIXNET_R18, "--stain-augment", "0.05"]),
    Run("ridge-resnet18", ["--model", "ridge", "--backbone", "resnet18"]),
    Run("ridge-lite0", ["--model", "ridge", *LITE0]),
    Run("ridge-lite0-macenko", ["--model", "ridge", *LITE0, "--stain-normalize", "macenko"]),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("cv-mob"))
    add_run_options(parser, DEFAULT_RUNS)
    args = parser.parse_args()
    mob = args.data / "mob"
    sources = {
        s: (mob / f"{s}.jpg", mob / f"{s}.tsv.gz", mob / f"alignment_table_{s}.tsv.gz")
        for s in SECTIONS
    }
    sections = import_sections(args.out, sources, mpp=MOB_MPP)
    run_table(sections, args.out, runs_from(args, DEFAULT_RUNS), args.device)


if __name__ == "__main__":
    main()
