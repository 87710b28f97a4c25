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

from .errors import HistoExpressError

Handler = Callable[[argparse.Namespace], int]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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


# ---------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    outputs = run_demo(Path(args.out))
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
        help="build the sample slide, open it as a pyramid, write its spots (.h5ad) and a PNG",
    )
    p.add_argument("--out", default="histoexpress-demo", help="output folder")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("info", help="print a slide's size, levels and µm/px")
    p.add_argument("slide")
    p.add_argument("--mpp", type=_positive_float, help="override µm/px")
    p.set_defaults(func=_cmd_info)

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
