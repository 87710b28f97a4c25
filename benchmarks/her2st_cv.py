"""her2st C2–C6 leave-one-section-out: the README's table, one run per row, in one invocation.

Imports the five sections from ``../shared/data/her2st`` (µm/px from the spot-array pitch)
into ``OUT``, chooses the 250 highest-mean genes over all five, and cross-validates every
run (``_loso.py``: a label and its ``histoexpress cv`` training options, built by the CLI's
own parser). The default runs are the README's rows: PixNet and the ridge baseline on
random-init ResNet18 and on the offline ImageNet EfficientNet-Lite0, PixNet with HED
stain augmentation, and HAGE on the ridge baseline's frozen Lite0 features with the paper's
two cheap ablations (without GE; without the hierarchical term), at the paper's settings
and at batch 64. The same as, per run,

    histoexpress cv --data C2.h5ad ... C6.h5ad --genes 250 --out OUT/LABEL OPTIONS

Prints the Markdown table (per-fold mean PCC, mean, top-50 expressed/variable genes, MSE,
minutes, each run's mean relative to the first run's); then predicts the first held-out
slide (C2) whole with the C2-fold model of the first dense run and scores its measured spots
aggregated from the dense map (``OUT/C2.zarr``, used by ``scripts/screenshots.py``).

Run:  python benchmarks/her2st_cv.py [--data ../shared/data] [--out cv-her2st] [--device auto]
      [--run LABEL "OPTIONS"]... | [--models pixnet ridge] [--no-whole-slide]
(on 2 CPU cores: about 10 min per PixNet fold with the CPU defaults, 1-2 min per ridge fold,
HAGE about as long as ridge — both read the same cached frozen features; finished folds are
kept, so a rerun resumes.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _loso import Run, add_run_options, import_sections, run_table, runs_from

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
LITE0 = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "imagenet"]
PIXNET_R18 = ["--model", "pixnet", "--backbone", "resnet18"]
TEXT_RANK = ["--head", "text", "--zero-shot", "rank"]  # PixNet's text head, zero-shot
TEXT_5FOLD = ["--head", "text", "--zero-shot", "5-fold"]
# the rank split trains on 750 genes: 250 of them per step keeps a step the supervised run's cost
GENES_250 = ["--model-config", '{"genes_per_step": 250}']
B64 = ["--batch-size", "64"]  # HAGE with 4x the paper's steps: 723 training spots per fold
DEFAULT_RUNS = (
    Run("pixnet-resnet18", PIXNET_R18),
    Run("pixnet-lite0", ["--model", "pixnet", *LITE0]),
    Run("pixnet-resnet18-hed", [*PIXNET_R18, "--stain-augment", "0.05"]),
    Run("ridge-resnet18", ["--model", "ridge", "--backbone", "resnet18"]),
    Run("ridge-lite0", ["--model", "ridge", *LITE0]),
    Run("hage", ["--model", "hage", *LITE0]),
    Run("hage-no-ge", ["--model", "hage", *LITE0, "--model-config", '{"use_ge": false}']),
    Run("hage-no-ha", ["--model", "hage", *LITE0, "--model-config", '{"lambda_global": 0}']),
    Run("hage-b64", ["--model", "hage", *LITE0, *B64]),
    Run("hage-b64-no-ge", ["--model", "hage", *LITE0, *B64, "--model-config", '{"use_ge": false}']),
    Run(
        "hage-b64-no-ha",
        ["--model", "hage", *LITE0, *B64, "--model-config", '{"lambda_global": 0}'],
    ),
    Run("dkan", ["--model", "dkan"]),
    Run("dkan-no-text", ["--model", "dkan", "--model-config", '{"use_text": false}']),
    Run("dkan-no-contrastive", ["--model", "dkan", "--model-config", '{"use_contrastive": false}']),
    Run("dkan-fixed-weights", ["--model", "dkan", "--model-config", '{"adaptive_weights": false}']),
    Run("dkan-image-head", ["--model", "dkan", "--model-config", '{"store": "image_head"}']),
    Run("align-st", ["--model", "align-st"]),
    Run("align-st-zero-shot-rank", ["--model", "align-st", "--zero-shot", "rank", *GENES_250]),
    Run("align-st-zero-shot-5fold", ["--model", "align-st", "--zero-shot", "5-fold"]),
    Run("align-st-no-nuclei", ["--model", "align-st", "--model-config", '{"use_nuclei": false}']),
    Run("align-st-no-prompts", ["--model", "align-st", "--model-config", '{"use_prompts": false}']),
    Run("align-st-no-asig", ["--model", "align-st", "--model-config", '{"use_asig": false}']),
    Run("pixnet-lite0-text", ["--model", "pixnet", *LITE0, "--head", "text"]),
    Run("pixnet-lite0-text-zero-shot-rank", ["--model", "pixnet", *LITE0, *TEXT_RANK]),
    Run("pixnet-lite0-text-zero-shot-5fold", ["--model", "pixnet", *LITE0, *TEXT_5FOLD]),
)


def main() -> None:
    from napari_histoexpress.models.registry import models_of_kind

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("cv-her2st"))
    parser.add_argument(
        "--no-whole-slide", action="store_true", help="skip the whole-slide check of C2"
    )
    add_run_options(parser, DEFAULT_RUNS)
    args = parser.parse_args()
    runs = runs_from(args, DEFAULT_RUNS)
    her2st = args.data / "her2st"
    sections = import_sections(
        args.out,
        {
            s: (
                her2st / "images" / f"{s}.jpg",
                her2st / "counts" / f"{s}.tsv.gz",
                her2st / "spots" / f"{s}_selection.tsv",
            )
            for s in SECTIONS
        },
    )
    results = run_table(sections, args.out, runs, args.device)
    dense = set(models_of_kind("dense"))
    for run, report, _ in results:
        if report["model"] in dense and not args.no_whole_slide:
            whole_slide_check(sections[0], args.out, run.label, args.device)
            break


def whole_slide_check(  # type: ignore[no-untyped-def]
    section, out: Path, label: str, device: str
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

    run = out / label / f"fold-{section.name}"
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
        f"# {label}, whole-slide {section.name} (held out): {report.n_tiles} tiles, "
        f"{report.n_skipped_background} background; spots from the dense map: "
        f"pcc_mean {res['pcc_mean']:.3f}"
    )


if __name__ == "__main__":
    main()
