"""her2st C2–C6 leave-one-section-out: every trainable model (PixNet, the ridge baseline,
...), one run, one table.

Imports the five sections from ``../shared/data/her2st`` (µm/px from the spot-array pitch),
chooses the 250 highest-mean genes over all five, and runs ``cross_validate`` for each model
of ``--models`` (default: every trainable model of the registry,
:func:`napari_histoexpress.training.tasks.trainable_models`) with the CLI's default
settings — the same as

    histoexpress cv --model pixnet --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/pixnet
    histoexpress cv --model ridge  --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/ridge

Prints each model's per-fold mean PCC and the mean over folds, each model's ratio to the
first one given; then predicts the first held-out slide (C2) whole with that fold's run of
each dense model and scores its measured spots aggregated from the dense map.

Run:  python benchmarks/her2st_cv.py [--data ../shared/data] [--out cv-her2st] [--device auto]
      [--models pixnet ridge]
(about 55 minutes on 2 CPU cores for PixNet and ridge; finished folds are kept, so a rerun
resumes.)
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
    from napari_histoexpress.models.registry import models_of_kind
    from napari_histoexpress.training.config import TrainConfig
    from napari_histoexpress.training.cross_validation import cross_validate
    from napari_histoexpress.training.sections import load_sections
    from napari_histoexpress.training.tasks import trainable_models

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("cv-her2st"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", choices=trainable_models(), default=None)
    args = parser.parse_args()
    models = args.models or trainable_models()
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
    for model in models:
        t0 = time.perf_counter()
        cfg = TrainConfig(model=model, n_genes=250, device=args.device)
        report = cross_validate(sections, args.out / model, cfg, progress=False, log=print)
        results[model] = (report, time.perf_counter() - t0)

    first = models[0]
    folds = [r["fold"] for r in results[first][0]["rows"]]
    print()
    others = [f"{m}/{first}" for m in models[1:]]
    print(f"{'fold':>6} " + " ".join(f"{m:>10}" for m in [*models, *others]))
    for i, fold in enumerate(folds):
        pcc = [results[m][0]["rows"][i]["pcc_mean"] for m in models]
        ratios = [p / pcc[0] for p in pcc[1:]]
        print(f"{fold:>6} " + " ".join(f"{v:10.3f}" for v in [*pcc, *ratios]))
    for model, (report, seconds) in results.items():
        resumed = report["n_folds_resumed"]
        note = f" ({resumed} folds reused from an earlier run)" if resumed else ""
        print(f"# {model}: {seconds / 60:.1f} min for the 5 folds (training + evaluation){note}")
    dense = set(models_of_kind("dense"))
    for model in models:
        if model in dense:
            whole_slide_check(sections[0], args.out, model, args.device)


def whole_slide_check(  # type: ignore[no-untyped-def]
    section, out: Path, model_name: str, device: str
) -> None:
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

    run = out / model_name / f"fold-{section.name}"
    model, meta = load_checkpoint(run)
    report = predict_slide(
        model, section.slide, out / f"{section.name}.zarr", resume=False, device=device,
        model_mpp=model.working_mpp, genes=list(meta["genes"]),
    )  # fmt: skip
    store = DenseMapStore.open(out / f"{section.name}.zarr")
    circles = spot_circles(section.adata, float(section.slide.mpp))
    predicted = predict_circles(store, circles)
    genes = list(predicted.var_names)
    res = evaluate_predictions(
        np.asarray(predicted.X), expression_matrix(section.adata, genes), genes
    )
    print(
        f"# {model_name}, whole-slide {section.name} (held out): {report.n_tiles} tiles, "
        f"{report.n_skipped_background} background; spots from the dense map: "
        f"pcc_mean {res['pcc_mean']:.3f}"
    )


if __name__ == "__main__":
    main()
