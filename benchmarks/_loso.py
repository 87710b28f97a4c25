"""Leave-one-section-out tables for the benchmark scripts (``her2st_cv.py``, ``mob_cv.py``).

Each *run* is a label and the training options of ``histoexpress cv`` (e.g. ``pixnet-lite0``
= ``--model pixnet --backbone tf_efficientnet_lite0 --pretrained imagenet``); its
:class:`~napari_histoexpress.training.config.TrainConfig` comes from the CLI's own parser
(:func:`napari_histoexpress.cli.cv_train_config`), so a row is exactly what the command line
gives. Every run goes to ``OUT/LABEL`` through
:func:`~napari_histoexpress.training.cross_validation.cross_validate`, which reuses a fold
only when it finished with the same settings, genes and resolved model config (so a rerun
resumes, and a changed default retrains). The table is printed as Markdown, ready for the
README: per-fold mean PCC over the genes, the mean over folds, top-50 expressed/variable
genes, MSE, minutes of this invocation (and how many folds were reused; "reused" when all
were, from an earlier invocation whose minutes it printed) and each run's mean relative to
the first run's. A zero-shot run (``--zero-shot rank|5-fold``) scores the genes it did not
train on, and its similarity baseline gets a row of its own.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    label: str
    options: list[str]


def import_sections(
    out: Path, sources: dict[str, tuple[Path, Path, Path]], *, mpp: float | None = None
) -> list[Any]:
    """``OUT/NAME.h5ad`` for each ``NAME: (image, counts, spots)`` of a legacy ST dataset
    (imported once, as ``histoexpress import st`` does; ``mpp`` as its ``--mpp``), loaded as
    training sections in the given order."""
    import warnings

    from napari_histoexpress.io.export import write_h5ad_atomic
    from napari_histoexpress.io.st_datasets import read_legacy_st
    from napari_histoexpress.training.sections import load_sections

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (image, counts, spots) in sources.items():
        path = out / f"{name}.h5ad"
        if not path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                adata = read_legacy_st(image, counts, spots, mpp=mpp)
            write_h5ad_atomic(adata, path)
        paths.append(path)
    return list(load_sections(paths))


def add_run_options(parser: argparse.ArgumentParser, default_runs: Sequence[Run]) -> None:
    """``--run LABEL OPTIONS`` (repeatable), ``--models M ...`` (shorthand: each model with
    the CLI defaults), ``--device``; the default runs are listed in the help."""
    listed = "; ".join(f"{r.label} = {' '.join(r.options)}" for r in default_runs)
    parser.add_argument(
        "--run",
        nargs=2,
        action="append",
        metavar=("LABEL", "OPTIONS"),
        help="a run: its label (output folder OUT/LABEL) and its `histoexpress cv` training "
        f"options in one quoted string; repeatable. Default runs: {listed}",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        help="shorthand for --run M '--model M' for each model (the CLI defaults)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")


def runs_from(args: argparse.Namespace, default_runs: Sequence[Run]) -> list[Run]:
    runs = [Run(label, shlex.split(options)) for label, options in args.run or []]
    runs += [Run(m, ["--model", m]) for m in args.models or []]
    return runs or list(default_runs)


def run_table(
    sections: Sequence[Any], out: Path, runs: Sequence[Run], device: str
) -> list[tuple[Run, dict[str, Any], float]]:
    """Cross-validate every run (``OUT/LABEL``), print the table; returns
    ``(run, report, seconds)`` per run."""
    from napari_histoexpress.cli import cv_train_config, cv_zero_shot_options
    from napari_histoexpress.training.cross_validation import cross_validate

    results = []
    for run in runs:
        config = cv_train_config([*run.options, "--genes", "250", "--device", device])
        zero_shot = cv_zero_shot_options(run.options)
        print(f"# {run.label}: histoexpress cv {' '.join(run.options)} --genes 250", flush=True)
        t0 = time.perf_counter()
        report = cross_validate(
            sections, out / run.label, config, progress=False, log=print, **zero_shot
        )
        results.append((run, report, time.perf_counter() - t0))
    print_table(results)
    return results


def print_table(results: Sequence[tuple[Run, dict[str, Any], float]]) -> None:
    folds = [r["fold"] for r in results[0][1]["rows"][:-1]]
    head = ["run", *folds, "**mean**", "pcc_heg50", "pcc_hvg50", "MSE", "minutes", "mean/first"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    first = results[0][1]["rows"][-1]["pcc_mean"]
    for run, report, seconds in results:
        rows = report["rows"]
        mean = rows[-1]
        reused = report["n_folds_resumed"]
        if reused == len(rows) - 1:
            minutes = "reused"  # every fold finished in an earlier invocation
        else:
            minutes = f"{seconds / 60:.1f}" + (f" ({reused} folds reused)" if reused else "")
        cells = [
            f"{run.label} (`{' '.join(run.options)}`)",
            *(f"{r['pcc_mean']:.3f}" for r in rows[:-1]),
            f"**{mean['pcc_mean']:.3f}**",
            f"{mean['pcc_heg50']:.3f}",
            f"{mean['pcc_hvg50']:.3f}",
            f"{mean['mse']:.3f}",
            minutes,
            f"{mean['pcc_mean'] / first:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
        if "baseline_pcc_mean" in mean:  # a zero-shot run: its similarity baseline too
            base = [
                f"{run.label}: similarity baseline",
                *(f"{r['baseline_pcc_mean']:.3f}" for r in rows[:-1]),
                f"**{mean['baseline_pcc_mean']:.3f}**",
                "",
                "",
                "",
                "",
                f"{mean['baseline_pcc_mean'] / first:.2f}",
            ]
            print("| " + " | ".join(base) + " |")
    print()
