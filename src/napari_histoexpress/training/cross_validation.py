"""Leave-one-out cross-validation over sections or patients, as in the literature.

Each fold trains on all other sections (or all other patients' sections) and evaluates
on the held-out ones; the table reports each fold and the mean over folds (each fold counts
once). The gene panel is chosen ONCE from all given sections (top-N by mean raw count, or a
gene file) so every fold predicts the same genes — the protocol of the her2st reference
numbers (``../shared/data/README.md``).

Any trainable model (:func:`~.tasks.trainable_models`) cross-validates the same way: each fold
is one :func:`~.train.train` run and one :func:`~.evaluate.evaluate_run`. Stain
normalisation therefore fits each fold's reference on that fold's training sections only
(inside ``train``), and evaluation normalises the held-out sections with it. Every file is
written atomically (:func:`~napari_histoexpress.io.export.write_text_atomic`), JSON through
the package's one sanitiser (:func:`~napari_histoexpress.io.export.to_jsonable`; NaN kept as
Python's ``json`` writes it), so an interrupted ``cv`` never leaves a half-written
``metrics.json`` that a rerun would take for a finished fold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .sections import Section
from .train import choose_genes, train

TABLE_KEYS = ("pcc_mean", "pcc_median", "pcc_q1", "pcc_heg50", "pcc_hvg50", "mse", "mae", "n_spots")
#: the extra columns of a zero-shot cross-validation (:mod:`.zero_shot`)
ZERO_SHOT_KEYS = ("baseline_pcc_mean", "seen_pcc_mean", "n_unseen", "n_seen")


def _jsonable(value: Any) -> Any:
    from ..io.export import to_jsonable

    return to_jsonable(value, nan_to_none=False)


def _write_json(obj: Any, path: Path) -> None:
    from ..io.export import write_text_atomic

    write_text_atomic(json.dumps(_jsonable(obj), indent=2), path)


#: run settings that do not change the result
_NOT_SETTINGS = frozenset({"device", "num_workers", "feature_cache"})


def _same_run(fold_dir: Path, config: TrainConfig, genes: Sequence[str]) -> bool:
    """Whether the finished run in ``fold_dir`` was trained with ``config`` and ``genes``
    (a fold is reused only then: rerunning ``cv`` with other settings retrains)."""
    try:
        saved = json.loads((fold_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = _jsonable(config.to_dict())
    defaults = _jsonable(TrainConfig().to_dict())
    have = saved.get("config") or {}
    same = all(
        _same_setting(key, have.get(key, defaults.get(key)), value)  # keys added later:
        for key, value in wanted.items()  # their default then
        if key not in _NOT_SETTINGS and (key != "model_config" or "model_config" not in saved)
    )  # (a checkpoint's resolved model config is compared below, the options as given not)
    if not same or list(saved.get("genes", [])) != list(genes):
        return False
    if "model_config" not in saved:  # no resolved config recorded: the options decided
        return True
    settings = _model_settings(config, genes)
    return settings is not None and _jsonable(saved["model_config"]) == _jsonable(settings)


def _model_settings(config: TrainConfig, genes: Sequence[str]) -> dict[str, Any] | None:
    """The full model config a run of ``config`` would record (the task's settings resolved
    by the model class). Compared instead of ``config.model_config`` as given: the same
    options can mean another model once a default changed (the ridge baseline's encoder),
    and other options the same model (``{}`` and ``{"backbone": <the default>}``). ``None``
    if they cannot be resolved (then no fold is reused)."""
    import torch

    from ..models.registry import get_model_class
    from .tasks import task_class

    try:
        task = task_class(config.model)(config, device=torch.device("cpu"), log=lambda _: None)
        return get_model_class(config.model).settings_of(task.model_settings(genes))
    except (KeyError, TypeError, ValueError):
        return None


def _same_setting(key: str, have: Any, wanted: Any) -> bool:
    """``have == wanted``, except that a stain reference the fold *fitted* (recorded in its
    ``config.stain``) matches settings that ask for one to be fitted (reference ``None``)."""
    fitted = key == "stain" and isinstance(have, dict) and isinstance(wanted, dict)
    if fitted and wanted.get("reference") is None:
        have = {**have, "reference": None}
    return bool(have == wanted)


def folds_of(sections: Sequence[Section], by: str) -> list[tuple[str, list[int], list[int]]]:
    """``(fold name, train indices, test indices)`` for ``by`` = ``by-section``/``by-patient``."""
    if by == "by-section":
        groups = [s.name for s in sections]
    elif by == "by-patient":
        groups = [s.patient for s in sections]
    else:
        raise ValueError(f"folds must be 'by-section' or 'by-patient', got {by!r}")
    unique = list(dict.fromkeys(groups))
    if len(unique) < 2:
        raise ValueError(f"cross-validation {by} needs at least two groups, got {unique}")
    return [
        (
            g,
            [i for i, x in enumerate(groups) if x != g],
            [i for i, x in enumerate(groups) if x == g],
        )
        for g in unique
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the folds and their mean (zero-shot runs: the unseen genes, plus
    the similarity baseline's and the seen genes' mean PCC)."""
    keys = TABLE_KEYS + tuple(k for k in ZERO_SHOT_KEYS if any(k in r for r in rows))
    head = "| fold | " + " | ".join(keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append("" if v is None else (f"{v:.0f}" if k == "n_spots" else f"{v:.3f}"))
        lines.append(f"| {row['fold']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_validate(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    folds: str = "by-section",
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
    zero_shot: str | None = None,
    n_seen: int = 1000,
    baseline_k: int = 5,
) -> dict[str, Any]:
    """Run every fold (resumable: a fold whose ``metrics.json`` exists is not rerun).

    ``zero_shot``: split the genes as well as the sections (:func:`~.zero_shot.gene_split`:
    ``"rank"`` trains on the genes ranked ``n_genes + 1 … n_seen`` and tests the top
    ``n_genes``; ``"5-fold"`` deals the top ``n_genes`` into five folds, fold ``i`` unseen
    for section fold ``i``): each fold trains on its seen genes and is scored on the unseen
    ones (:func:`~.zero_shot.evaluate_unseen`: the model's zero-shot prediction and the
    similarity baseline of ``baseline_k`` seen genes); the rows are the unseen genes'."""
    from ..metrics import aggregate_folds
    from .evaluate import evaluate_run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if zero_shot is None:
        genes = choose_genes(sections, config)
        ranked: list[str] = []
    else:
        from dataclasses import replace

        from .zero_shot import gene_split

        if config.n_genes is None:
            raise ValueError("a zero-shot split needs a gene count (n_genes), not all genes")
        n_tested = int(config.n_genes)
        n_rank = n_seen if zero_shot == "rank" else n_tested
        ranked = choose_genes(sections, replace(config, n_genes=n_rank))
        gene_split(ranked, zero_shot, n_tested)  # a bad split fails before any training
        genes = ranked
    results: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    n_resumed = 0
    scored_by = "model"
    for i, (name, train_idx, test_idx) in enumerate(folds_of(sections, folds)):
        fold_dir = out / f"fold-{name}"
        metrics_path = fold_dir / "metrics.json"
        unseen: list[str] = []
        fold_genes = genes
        if zero_shot is not None:
            from .zero_shot import gene_split

            fold_genes, unseen = gene_split(ranked, zero_shot, int(config.n_genes or 0), fold=i)
        if metrics_path.exists() and _same_run(fold_dir, config, fold_genes):
            res = json.loads(metrics_path.read_text())
            log(f"fold {name}: already done")
            n_resumed += 1
        else:
            if metrics_path.exists():
                log(f"fold {name}: finished with other settings or genes; training it again")
                metrics_path.unlink()
            log(f"fold {name}: train on {[sections[i].name for i in train_idx]}")
            train(
                [sections[i] for i in train_idx],
                fold_dir,
                config,
                genes=fold_genes,
                progress=progress,
                log=log,
            )
            test = [sections[i] for i in test_idx]
            if zero_shot is None:
                res = evaluate_run(
                    fold_dir,
                    test,
                    device=device,
                    progress=progress,
                    feature_cache=config.feature_cache,
                )
            else:
                from .zero_shot import evaluate_unseen

                res = evaluate_unseen(
                    fold_dir,
                    test,
                    unseen,
                    device=device,
                    progress=progress,
                    feature_cache=config.feature_cache,
                    baseline_k=baseline_k,
                )
            _write_json(res, metrics_path)
        scored = res if zero_shot is None else (res["zero_shot"] or res["similarity_baseline"])
        scored_by = "baseline" if zero_shot is not None and not res["zero_shot"] else "model"
        results.extend(scored["sections"].values())
        row = {"fold": name, **{k: scored["mean"].get(k) for k in TABLE_KEYS}}
        row["n_spots"] = sum(int(sec["n_spots"]) for sec in scored["sections"].values())
        if zero_shot is not None:
            base = res["similarity_baseline"]
            baselines.extend(base["sections"].values())
            row.update(
                baseline_pcc_mean=base["mean"]["pcc_mean"],
                seen_pcc_mean=res["seen"]["mean"]["pcc_mean"],
                n_unseen=len(res["unseen_genes"]),
                n_seen=len(fold_genes),
            )
        rows.append(row)
        log(f"fold {name}: pcc_mean {row['pcc_mean']:.3f}")
    summary = aggregate_folds(results)
    mean_row = {"fold": "mean", **{k: summary.get(k) for k in TABLE_KEYS}}
    mean_row["n_spots"] = sum(int(r["n_spots"]) for r in results)
    if zero_shot is not None:
        mean_row["baseline_pcc_mean"] = aggregate_folds(baselines)["pcc_mean"]
        mean_row["seen_pcc_mean"] = float(
            sum(float(r["seen_pcc_mean"]) for r in rows) / max(1, len(rows))
        )
    rows.append(mean_row)
    table = format_table(rows)
    report = {
        "model": config.model,
        "folds": folds,
        "genes": genes,
        "rows": rows,
        "summary": {k: v for k, v in summary.items() if k != "per_gene_pcc"},
        "config": config.to_dict(),
        "n_folds_resumed": n_resumed,
    }
    if zero_shot is not None:
        report["zero_shot"] = {
            "split": zero_shot,
            "n_seen": n_seen,
            "baseline_k": baseline_k,
            "scored": scored_by,  # "baseline": the model is not zero-shot
            "baseline_summary": {
                k: v for k, v in aggregate_folds(baselines).items() if k != "per_gene_pcc"
            },
        }
    from ..io.export import write_text_atomic

    _write_json(report, out / "cv.json")
    write_text_atomic(table + "\n", out / "cv.md")
    return report
