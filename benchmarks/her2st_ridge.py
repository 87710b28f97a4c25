"""Leave-one-section-out ridge baseline on her2st C2-C6 (the reference protocol).

Protocol (``../shared/data/README.md``): the 250 genes with the highest mean raw count
over C2-C6, library-size normalisation to 1e4 + log1p, for each held-out section a
ridge model fitted on the other four (alpha by section-grouped CV), per-gene Pearson
across the held-out spots, mean over genes, then mean over the five folds.
Features: a patch of ``patch_px`` native pixels (448 by default, i.e. 448 × the
section's µm/px, ≈308 µm at the loader's array-pitch estimate of 0.688 µm/px) centred
on each spot, resampled to 224 px, random-init ResNet18 (``zero_init_last=False``
unless ``--zero-init-last``), global-average-pooled stages concatenated, PCA 256.

Reference numbers: 0.252 (timm default init), 0.263 (``zero_init_last=False``).

Run:  python benchmarks/her2st_ridge.py [--out results.json]
Prints a per-fold table and the mean ± std over folds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_histoexpress.expression import expression_matrix, select_genes
from napari_histoexpress.io.slides import open_slide
from napari_histoexpress.io.spatial import microns_per_pixel, source_image_path
from napari_histoexpress.metrics import aggregate_folds, evaluate_predictions
from napari_histoexpress.models.ridge import RidgeBaseline, RidgeConfig

try:
    from napari_histoexpress.io.st_datasets import read_legacy_st
except ImportError:  # pragma: no cover - older layout of the io package
    from napari_histoexpress.io.legacy_st import read_legacy_st

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "her2st"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--sections", nargs="+", default=list(SECTIONS))
    p.add_argument("--n-genes", type=int, default=250)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--zero-init-last", action="store_true", help="keep timm's zero-init")
    p.add_argument("--patch-px", type=float, default=448.0, help="native px (converted to µm)")
    p.add_argument("--patch-um", type=float, default=None, help="overrides --patch-px")
    p.add_argument("--input-px", type=int, default=224)
    p.add_argument("--n-components", type=int, default=256)
    p.add_argument("--cv-metric", default="pcc", choices=("pcc", "mse"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress visible under nohup
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    adatas = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dropped spots are counted in metadata
        for s in args.sections:
            adatas[s] = read_legacy_st(
                args.data / "images" / f"{s}.jpg",
                args.data / "counts" / f"{s}.tsv.gz",
                args.data / "spots" / f"{s}_selection.tsv",
            )
    mpps = {s: microns_per_pixel(a) for s, a in adatas.items()}
    print(
        f"loaded {len(adatas)} sections in {time.perf_counter() - t0:.0f} s; "
        f"spots { ({s: a.n_obs for s, a in adatas.items()}) }; µm/px "
        f"{ ({s: round(m, 4) for s, m in mpps.items()}) }"
    )

    genes = select_genes(list(adatas.values()), n=args.n_genes)
    patch_um = args.patch_um or args.patch_px * float(np.median(list(mpps.values())))
    cfg = RidgeConfig(
        backbone=args.backbone,
        zero_init_last=args.zero_init_last,
        patch_um=patch_um,
        input_px=args.input_px,
        n_components=args.n_components,
        cv_metric=args.cv_metric,
        seed=args.seed,
    )
    print(
        f"{len(genes)} genes (top: {genes[:5]}); patch {patch_um:.1f} µm -> "
        f"{cfg.input_px} px ({cfg.input_mpp:.3f} µm/px), zero_init_last={cfg.zero_init_last}"
    )

    encoder = RidgeBaseline(cfg)
    feats, targets = {}, {}
    for s, a in adatas.items():
        t = time.perf_counter()
        slide = open_slide(source_image_path(a), mpp=mpps[s])
        feats[s] = encoder.extract_features((a, slide))
        targets[s] = expression_matrix(a, genes)
        slide.close()
        print(f"  features {s}: {feats[s].shape} in {time.perf_counter() - t:.0f} s")

    folds, rows = [], []
    for held in args.sections:
        train = [s for s in args.sections if s != held]
        model = RidgeBaseline(cfg)
        model.fit_features([feats[s] for s in train], [targets[s] for s in train], genes)
        pred = model.predict_features(feats[held])
        res = evaluate_predictions(pred, targets[held], genes, section=held)
        mean_pred = np.concatenate([targets[s] for s in train]).mean(axis=0)
        res["mse_train_mean"] = float(np.mean((targets[held] - mean_pred) ** 2))
        res["alpha"] = model.alpha
        res["cv_scheme"] = model.cv_scheme
        folds.append(res)
        rows.append(res)

    agg = aggregate_folds(folds)
    header = (
        f"{'held-out':>8} {'spots':>5} {'alpha':>8} {'PCC mean':>8} {'median':>7} "
        f"{'HEG50':>7} {'HVG50':>7} {'MSE':>6} {'MSE(mean)':>9} {'zero-var':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['section']:>8} {r['n_spots']:>5} {r['alpha']:>8.3g} {r['pcc_mean']:>8.3f} "
            f"{r['pcc_median']:>7.3f} {r['pcc_heg50']:>7.3f} {r['pcc_hvg50']:>7.3f} "
            f"{r['mse']:>6.3f} {r['mse_train_mean']:>9.3f} {len(r['zero_variance_genes']):>8}"
        )
    print("-" * len(header))
    mse_mean = float(np.mean([r["mse_train_mean"] for r in rows]))
    print(
        f"{'mean':>8} {'':>5} {'':>8} {agg['pcc_mean']:>8.3f} {agg['pcc_median']:>7.3f} "
        f"{agg['pcc_heg50']:>7.3f} {agg['pcc_hvg50']:>7.3f} {agg['mse']:>6.3f} "
        f"{mse_mean:>9.3f}"
    )
    print(f"{'std':>8} {'':>5} {'':>8} {agg['pcc_mean_std']:>8.3f}")
    ref = 0.252 if cfg.zero_init_last else 0.263
    print(
        f"\nmean PCC {agg['pcc_mean']:.3f} ± {agg['pcc_mean_std']:.3f} over "
        f"{len(rows)} folds; reference {ref:.3f} (ratio {agg['pcc_mean'] / ref:.2f}); "
        f"total {time.perf_counter() - t0:.0f} s"
    )

    out = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "genes": genes,
        "folds": [{k: v for k, v in r.items() if k != "per_gene"} for r in rows],
        "aggregate": {k: v for k, v in agg.items() if k != "per_gene_pcc"},
        "reference_pcc_mean": ref,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
