"""her2st C2–C6 leave-one-section-out: PixNet vs the ridge baseline, one run, one table.

Imports the five sections from ``../shared/data/her2st`` (µm/px from the spot-array pitch),
chooses the 250 highest-mean genes over all five, and runs ``cross_validate`` for each model
with the CLI's default settings — the same as

    histoexpress cv --model pixnet --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/pixnet
    histoexpress cv --model ridge  --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/ridge

Prints each model's per-fold mean PCC, the mean over folds, and PixNet / ridge ratios; then
predicts the first held-out slide (C2) whole with that fold's PixNet and scores its measured
spots aggregated from the dense map.

Run:  python benchmarks/her2st_cv.py [--data ../shared/data] [--out cv-her2st] [--device auto]
(about 55 minutes on 2 CPU cores; finished folds are kept, so a rerun resumes.)
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
    for model, (report, seconds) in results.items():
        resumed = report["n_folds_resumed"]
        note = f" ({resumed} folds reused from an earlier run)" if resumed else ""
        print(f"# {model}: {seconds / 60:.1f} min for the 5 folds (training + evaluation){note}")
    whole_slide_check(sections[0], args.out, args.device)


def whole_slide_check(section, out: Path, device: str) -> None:  # type: ignore[no-untyped-def]
    """Dense prediction of the held-out slide of the first fold, spots aggregated from the map.

    ``histoexpress predict`` + ``spots`` on real data: the PCC of the measured spots
    aggregated from the whole-slide dense map should match the fold's spot-crop evaluation.
    """
    import numpy as np

    from napari_histoexpress.expression import expression_matrix
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.measured_vs_predicted import spot_circles
    from napari_histoexpress.inference.predict_slide import predict_slide
    from napari_histoexpress.inference.spots import predict_circles
    from napari_histoexpress.metrics import evaluate_predictions
    from napari_histoexpress.models.checkpoint import load_checkpoint

    run = out / "pixnet" / f"fold-{section.name}"
    model, meta = load_checkpoint(run)
    report = predict_slide(
        model, section.slide, out / f"{section.name}.zarr", resume=False, device=device,
        model_mpp=float(meta["extra"]["microns_per_pixel"]), genes=list(meta["genes"]),
    )  # fmt: skip
    store = DenseMapStore.open(out / f"{section.name}.zarr")
    circles = spot_circles(section.adata, float(section.slide.mpp))
    predicted = predict_circles(store, circles)
    genes = list(predicted.var_names)
    res = evaluate_predictions(
        np.asarray(predicted.X), expression_matrix(section.adata, genes), genes
    )
    print(
        f"# whole-slide {section.name} (held out): {report.n_tiles} tiles, "
        f"{report.n_skipped_background} background; spots from the dense map: "
        f"pcc_mean {res['pcc_mean']:.3f}"
    )


if __name__ == "__main__":
    main()
