"""her2st C2–C6 leave-one-section-out: PixNet vs the ridge baseline, one run, one table.

Imports the five sections from ``../shared/data/her2st`` (µm/px from the spot-array pitch),
chooses the 250 highest-mean genes over all five, and runs ``cross_validate`` for each model
with the CLI's default settings — the same as

    histoexpress cv --model pixnet --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/pixnet
    histoexpress cv --model ridge  --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/ridge

Prints each model's per-fold mean PCC, the mean over folds, and PixNet / ridge ratios.

Run:  python benchmarks/her2st_cv.py [--data ../shared/data] [--out cv-her2st] [--device auto]
(about 25 minutes on 2 CPU cores; finished folds are kept, so a rerun resumes.)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("C2", "C3", "C4", "C5", "C6")


def main() -> None:
    from napari_histoexpress.io.export import write_h5ad_atomic
    from napari_histoexpress.io.st_datasets import read_legacy_st
    from napari_histoexpress.training.config import TrainConfig
    from napari_histoexpress.training.cross_validation import cross_validate
    from napari_histoexpress.training.sections import load_sections

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("cv-her2st"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    her2st = args.data / "her2st"
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in SECTIONS:
        path = args.out / f"{s}.h5ad"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adata = read_legacy_st(
                    her2st / "images" / f"{s}.jpg",
                    her2st / "counts" / f"{s}.tsv.gz",
                    her2st / "spots" / f"{s}_selection.tsv",
                )
            write_h5ad_atomic(adata, path)
        paths.append(path)
    sections = load_sections(paths)

    results = {}
    for model in ("pixnet", "ridge"):
        t0 = time.perf_counter()
        cfg = TrainConfig(model=model, n_genes=250, device=args.device)
        report = cross_validate(sections, args.out / model, cfg, progress=False, log=print)
        results[model] = (report, time.perf_counter() - t0)

    folds = [r["fold"] for r in results["pixnet"][0]["rows"]]
    print()
    print(f"{'fold':>6} {'PixNet':>8} {'ridge':>8} {'PixNet/ridge':>13}")
    for i, fold in enumerate(folds):
        p = results["pixnet"][0]["rows"][i]["pcc_mean"]
        r = results["ridge"][0]["rows"][i]["pcc_mean"]
        print(f"{fold:>6} {p:8.3f} {r:8.3f} {p / r:13.2f}")
    for model, (_, seconds) in results.items():
        print(f"# {model}: {seconds / 60:.1f} min for the 5 folds (training + evaluation)")


if __name__ == "__main__":
    main()
