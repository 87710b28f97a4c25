"""The literature's evaluation of spot-level expression prediction.

Protocol (ST-Net, HisToGene, Hist2ST, BLEEP, HEST-Benchmark): for one held-out section,
compute each gene's **Pearson correlation across the section's spots** between predicted
and measured (normalised) expression, then summarise over genes. Cross-validation
results are the mean over folds of those per-section summaries (:func:`aggregate_folds`).

Choices:

* A gene whose measured *or* predicted values are constant over the section (variance
  ``<= 1e-12 * (1 + mean²)``) has an undefined Pearson correlation. It is **reported**
  (``per_gene[g]['pcc'] = nan``, listed in ``zero_variance_genes``) and excluded from
  the PCC summaries; it is never silently dropped, and ``n_genes_pcc`` says how many
  genes the summaries use. (Some published code counts such genes as 0, which lowers
  the mean; we keep that visible instead.)
* ``pcc_heg50``: mean PCC of the 50 genes with the highest mean *measured* expression
  in this section; ``pcc_hvg50``: the 50 with the highest measured variance. Genes are
  ranked among all genes, then those with undefined PCC are left out of the mean. With
  fewer than 50 genes all are used.
* ``pcc_q1`` is the first quartile (25th percentile, numpy's linear interpolation).
* ``mse``/``mae`` are over all spots × genes on the scale given (log1p of counts per
  10k for the package's targets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SUMMARY_KEYS", "aggregate_folds", "evaluate_predictions", "pearson_per_gene"]

#: Summary metrics that :func:`aggregate_folds` averages.
SUMMARY_KEYS: tuple[str, ...] = (
    "pcc_mean",
    "pcc_median",
    "pcc_q1",
    "pcc_heg50",
    "pcc_hvg50",
    "mse",
    "mae",
)

_TOP_K = 50


def _var_is_zero(var: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return var <= 1e-12 * (1.0 + mean**2)


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation of two ``(n_spots, n_genes)`` arrays (float64).

    Columns where either side is constant get ``nan``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    pm, tm = p.mean(axis=0), t.mean(axis=0)
    pc, tc = p - pm, t - tm
    pv, tv = (pc**2).mean(axis=0), (tc**2).mean(axis=0)
    cov = (pc * tc).mean(axis=0)
    bad = _var_is_zero(pv, pm) | _var_is_zero(tv, tm)
    denom = np.sqrt(np.where(bad, 1.0, pv * tv))
    r = np.clip(cov / denom, -1.0, 1.0)
    r[bad] = np.nan
    return r


def _nanmean_or_nan(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def evaluate_predictions(
    pred: np.ndarray,
    true: np.ndarray,
    genes: Sequence[str],
    *,
    section: str | None = None,
) -> dict[str, Any]:
    """Evaluate predictions of one section.

    Args:
        pred, true: ``(n_spots, n_genes)`` arrays on the same scale.
        genes: the gene names of the columns.
        section: optional name stored under ``'section'``.

    Returns:
        A dict with ``pcc_mean``, ``pcc_median``, ``pcc_q1``, ``pcc_heg50``,
        ``pcc_hvg50``, ``mse``, ``mae``, ``n_spots``, ``n_genes``, ``n_genes_pcc``,
        ``per_gene`` ``{gene: {'pcc', 'mean', 'var'}}`` (mean/var of the measured values),
        ``zero_variance_genes`` and ``section``. Plain Python floats (JSON-serialisable;
        undefined values are ``nan``).
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    genes = [str(g) for g in genes]
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must be equal 2-D shapes")
    if pred.shape[1] != len(genes):
        raise ValueError(f"{pred.shape[1]} columns but {len(genes)} gene names")
    if pred.shape[0] < 2:
        raise ValueError("need at least 2 spots to compute correlations")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("pred and true must be finite (found NaN or inf)")

    r = pearson_per_gene(pred, true)
    t_mean = true.mean(axis=0)
    t_var = true.var(axis=0)
    valid = np.isfinite(r)
    rv = r[valid]

    k = min(_TOP_K, len(genes))
    heg = np.argsort(-t_mean, kind="stable")[:k]
    hvg = np.argsort(-t_var, kind="stable")[:k]
    err = pred - true

    return {
        "section": section,
        "pcc_mean": float(rv.mean()) if rv.size else float("nan"),
        "pcc_median": float(np.median(rv)) if rv.size else float("nan"),
        "pcc_q1": float(np.percentile(rv, 25)) if rv.size else float("nan"),
        "pcc_heg50": _nanmean_or_nan(r[heg]),
        "pcc_hvg50": _nanmean_or_nan(r[hvg]),
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "n_spots": int(pred.shape[0]),
        "n_genes": len(genes),
        "n_genes_pcc": int(valid.sum()),
        "per_gene": {
            g: {"pcc": float(r[i]), "mean": float(t_mean[i]), "var": float(t_var[i])}
            for i, g in enumerate(genes)
        },
        "zero_variance_genes": [g for g, ok in zip(genes, valid, strict=True) if not ok],
    }


def aggregate_folds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of the summary metrics over folds (or sections).

    Each fold counts once (the literature's "mean over folds", not pooled over spots).
    ``std`` is the population standard deviation (``ddof=0``, numpy's default), as in
    most published tables. Folds where a metric is ``nan`` are left out of that metric
    and ``n_folds_<key>`` says how many were used.

    Returns:
        ``{key: mean, key + '_std': std, ...}`` for every key in :data:`SUMMARY_KEYS`,
        plus ``n_folds``, ``sections`` (the folds' ``section`` values) and
        ``per_gene_pcc`` (each gene's PCC averaged over the folds where it is defined).
    """
    if not results:
        raise ValueError("aggregate_folds needs at least one result")
    out: dict[str, Any] = {"n_folds": len(results), "sections": [r.get("section") for r in results]}
    for key in SUMMARY_KEYS:
        vals = np.array([float(r[key]) for r in results if key in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[key] = float(vals.mean()) if vals.size else float("nan")
        out[f"{key}_std"] = float(vals.std()) if vals.size else float("nan")
        if vals.size != len(results):
            out[f"n_folds_{key}"] = int(vals.size)
    per_gene: dict[str, list[float]] = {}
    for r in results:
        for g, d in r.get("per_gene", {}).items():
            per_gene.setdefault(g, []).append(float(d["pcc"]))
    out["per_gene_pcc"] = {g: _nanmean_or_nan(np.array(v)) for g, v in per_gene.items()}
    return out
