"""The ``histoexpress`` command.

Each sub-command parses its arguments here and calls one function of the library; the
heavy imports (torch, scanpy, ...) happen inside the command so ``histoexpress --help`` is
instant. Errors on bad input print one line ``error: <file>: <problem>`` and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import HistoExpressError

Handler = Callable[[argparse.Namespace], int]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text}")
    return value


# ---------------------------------------------------------------------------- import
def _cmd_import_visium(args: argparse.Namespace) -> int:
    from .io.export import write_h5ad_atomic
    from .io.st_datasets import import_summary, read_visium

    adata = read_visium(args.folder, library_id=args.library_id)
    write_h5ad_atomic(adata, args.out)
    print(f"{import_summary(adata)} -> {args.out}")
    return 0


def _cmd_import_st(args: argparse.Namespace) -> int:
    from .io.export import write_h5ad_atomic
    from .io.st_datasets import import_summary, read_legacy_st

    adata = read_legacy_st(
        args.image,
        args.counts,
        args.spots,
        spot_diameter_um=args.spot_diameter_um,
        mpp=args.mpp,
        library_id=args.library_id,
    )
    write_h5ad_atomic(adata, args.out)
    print(f"{import_summary(adata)} -> {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io.slides import open_slide

    slide = open_slide(args.slide, mpp=args.mpp)
    mpp = f"{slide.mpp:.4g} µm/px ({slide.mpp_source})" if slide.mpp else "µm/px unknown"
    print(f"{slide.path}: {slide.shape[1]} x {slide.shape[0]} px, {mpp}")
    for k, level in enumerate(slide.levels):
        print(f"  level {k}: {level.shape[1]} x {level.shape[0]} px, chunks {level.chunksize[:2]}")
    return 0


# ---------------------------------------------------------------------------- training
def _train_config(args: argparse.Namespace) -> Any:
    from .training.config import TrainConfig

    n_genes, gene_file = None, None
    if args.genes is not None:
        if args.genes.isdigit():
            n_genes = int(args.genes)
        else:
            gene_file = args.genes
    else:
        n_genes = 250
    model_config: dict[str, Any] = {}
    if args.backbone:
        model_config["backbone"] = args.backbone
    if args.pretrained:
        model_config["pretrained"] = args.pretrained
    if getattr(args, "backbone_kwargs", None):
        model_config["backbone_kwargs"] = dict(args.backbone_kwargs)
    for key in ("mean", "std"):
        value = getattr(args, f"input_{key}", None)
        if value:
            model_config[key] = list(value)
    if getattr(args, "decoder_dim", None):
        model_config["decoder_dim"] = args.decoder_dim
    if getattr(args, "out_indices", None):
        model_config["out_indices"] = list(args.out_indices)
    if getattr(args, "upsample", None):
        model_config["upsample"] = args.upsample
    return TrainConfig(
        model=args.model,
        n_genes=n_genes,
        gene_file=gene_file,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        crops_per_epoch=args.crops_per_epoch,
        mpp=args.mpp,
        crop_um=args.crop_um,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        model_config=model_config,
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .training.config import TrainConfig

    d = TrainConfig()
    p.add_argument("--model", default="pixnet", choices=["pixnet", "ridge"])
    p.add_argument("--data", nargs="+", required=True, help="imported sections (.h5ad)")
    p.add_argument("--genes", help="N (top-N by mean count, default 250) or a gene file")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        choices=["constant", "cosine"],
        help=f"constant (paper) or cosine with warm-up (default {d.lr_schedule})",
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crops-per-epoch", type=int, default=d.crops_per_epoch)
    p.add_argument("--mpp", type=_positive_float, default=d.mpp, help="working µm/px")
    p.add_argument("--crop-um", type=_positive_float, default=d.crop_um)
    p.add_argument("--backbone", help="timm model name (default resnet18)")
    p.add_argument("--pretrained", help="weights file or hf-hub:org/name (default random init)")
    p.add_argument(
        "--backbone-kwargs",
        type=_json_object,
        help='timm architecture options as JSON, e.g. \'{"init_values": 1e-5, '
        '"dynamic_img_size": true}\' for a UNI-style ViT',
    )
    p.add_argument(
        "--input-mean",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="input normalisation mean (RGB in [0, 1]; default: the backbone's timm config)",
    )
    p.add_argument("--input-std", type=float, nargs=3, metavar=("R", "G", "B"))
    p.add_argument("--decoder-dim", type=int, help="PixNet decoder channels (default 64)")
    p.add_argument(
        "--out-indices",
        type=int,
        nargs="+",
        help="backbone levels PixNet decodes (default 1 2 3 4: stride-4 map; 0 1 2 3 4: stride 2)",
    )
    p.add_argument(
        "--upsample",
        choices=["transposed", "bilinear"],
        help="PixNet decoder upsampling: transposed conv (paper) or bilinear + 3x3 conv",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_precision_option(p)
    p.add_argument("--seed", type=int, default=0)


def _add_precision_option(p: argparse.ArgumentParser) -> None:
    from .devices import PRECISIONS

    p.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="forward-pass precision: auto = bf16 autocast on CUDA (fp16 on GPUs without "
        "bf16), float32 on CPU/MPS",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.sections import load_sections
    from .training.train import train

    config = _train_config(args)
    sections = load_sections(args.data)
    run = train(sections, args.out, config)
    print(f"run written to {run}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .training.evaluate import evaluate_run
    from .training.sections import load_sections

    report = evaluate_run(args.run, load_sections(args.data), device=args.device)
    for name, res in report["sections"].items():
        print(
            f"{name}: pcc_mean {res['pcc_mean']:.3f}  pcc_heg50 {res['pcc_heg50']:.3f}  "
            f"mse {res['mse']:.3f}  ({res['n_spots']} spots, {res['n_genes']} genes)"
        )
    if args.json:
        from .io.export import write_text_atomic

        write_text_atomic(json.dumps(report, indent=2, default=float), args.json)
        print(f"metrics written to {args.json}")
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from .training.cross_validation import cross_validate, format_table
    from .training.sections import load_sections

    report = cross_validate(
        load_sections(args.data),
        args.out,
        _train_config(args),
        folds=args.folds,
        device=args.device,
    )
    print(format_table(report["rows"]))
    print(f"table written to {Path(args.out) / 'cv.md'}")
    return 0


# ---------------------------------------------------------------------------- dense maps
def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict_run import predict_with_run

    report = predict_with_run(
        args.run,
        args.slide,
        args.out,
        slide_mpp=args.mpp,
        tile_px=args.tile_px,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        progress=True,
        resume=not args.restart,
    )
    print(report.summary())
    return 0


def _cmd_spots(args: argparse.Namespace) -> int:
    from .inference.map_store import DenseMapStore
    from .inference.spots import read_circles
    from .io.spot_export import export_spots

    store = DenseMapStore.open(args.map, mode="r")
    result = export_spots(store, read_circles(args.circles), args.out)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.n_spots} circles x {result.n_genes} genes -> {result.path}")
    return 0


# ---------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    outputs = run_demo(
        Path(args.out),
        train=not args.no_train,
        run=Path(args.run) if args.run else None,
        epochs=args.epochs,
    )
    for key, path in outputs.items():
        print(f"{key}: {path}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoexpress",
        description="Spatial gene expression from H&E whole-slide images.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo",
        help="sample slide -> spots (.h5ad, PNG) -> brief PixNet training -> dense map, "
        "heatmap vs truth, predicted spots",
    )
    p.add_argument("--out", default="histoexpress-demo", help="output folder")
    p.add_argument("--no-train", action="store_true", help="only the slide, spots and PNG")
    p.add_argument("--run", help="use this trained run instead of training one")
    p.add_argument("--epochs", type=int, help="demo training epochs (default 8)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="print a slide's size, levels and µm/px")
    p.add_argument("slide")
    p.add_argument("--mpp", type=_positive_float, help="override µm/px")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a model on imported sections")
    _add_train_options(p)
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="per-gene Pearson and the literature's summaries")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", nargs="+", required=True, help="sections (.h5ad)")
    p.add_argument("--json", help="write all metrics (per gene too) to this file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("cv", help="leave-one-section/patient-out cross-validation")
    _add_train_options(p)
    p.add_argument("--folds", default="by-section", choices=["by-section", "by-patient"])
    p.add_argument("--out", required=True, help="folder for fold runs and the table")
    p.set_defaults(func=_cmd_cv)

    p = sub.add_parser("predict", help="dense whole-slide prediction into a zarr map store")
    p.add_argument("--run", required=True, help="run directory (weights + config.json)")
    p.add_argument("--slide", required=True)
    p.add_argument("--out", required=True, help="output store (SLIDE.zarr)")
    p.add_argument("--mpp", type=_positive_float, help="slide µm/px when the file lacks it")
    p.add_argument("--tile-px", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_precision_option(p)
    p.add_argument("--restart", action="store_true", help="discard finished tiles")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("spots", help="every gene inside circles (x_um, y_um, diameter_um)")
    p.add_argument("--map", required=True, help="map store from `histoexpress predict`")
    p.add_argument("--circles", required=True, help="CSV with x_um, y_um, diameter_um")
    p.add_argument("--out", required=True, help="output .h5ad (or .csv)")
    p.set_defaults(func=_cmd_spots)

    imp = sub.add_parser("import", help="import ST data into one AnnData (.h5ad)")
    isub = imp.add_subparsers(dest="source", required=True)
    p = isub.add_parser("visium", help="a 10x Space Ranger output folder")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--library-id")
    p.set_defaults(func=_cmd_import_visium)
    p = isub.add_parser(
        "st", help="a legacy ST section: image + counts (x-by-y rows) + spot/alignment table"
    )
    p.add_argument("--image", required=True, help="full-resolution H&E image")
    p.add_argument("--counts", required=True, help="counts table, rows '{x}x{y}' (tsv[.gz])")
    p.add_argument("--spots", required=True, help="spot selection or alignment table (tsv[.gz])")
    p.add_argument("--spot-diameter-um", type=_positive_float, default=100.0)
    p.add_argument(
        "--mpp",
        type=_positive_float,
        help="µm/px of the image (default: estimated from the 200 µm spot-array pitch)",
    )
    p.add_argument("--library-id")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=_cmd_import_st)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except HistoExpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or ''}: file not found", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
