"""The literature's per-gene Pearson evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from napari_histoexpress.metrics import (
    SUMMARY_KEYS,
    aggregate_folds,
    evaluate_predictions,
    pearson_per_gene,
)


def _data(n_spots: int = 80, n_genes: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n_spots, n_genes)) * rng.uniform(0.5, 2, n_genes) + rng.uniform(
        0, 5, n_genes
    )
    pred = true + rng.normal(scale=rng.uniform(0.1, 3, n_genes), size=(n_spots, n_genes))
    return pred, true, [f"G{i}" for i in range(n_genes)]


def test_pearson_matches_scipy_and_summaries() -> None:
    pred, true, genes = _data()
    res = evaluate_predictions(pred, true, genes, section="S1")
    expected = np.array([pearsonr(pred[:, j], true[:, j])[0] for j in range(len(genes))])
    got = np.array([res["per_gene"][g]["pcc"] for g in genes])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pearson_per_gene(pred, true), expected, rtol=1e-10)
    assert res["pcc_mean"] == pytest.approx(expected.mean())
    assert res["pcc_median"] == pytest.approx(np.median(expected))
    assert res["pcc_q1"] == pytest.approx(np.percentile(expected, 25))
    assert res["mse"] == pytest.approx(np.mean((pred - true) ** 2))
    assert res["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert (res["n_spots"], res["n_genes"], res["n_genes_pcc"]) == (80, 12, 12)
    assert res["section"] == "S1" and res["zero_variance_genes"] == []
    assert res["per_gene"]["G3"]["mean"] == pytest.approx(true[:, 3].mean())
    assert res["per_gene"]["G3"]["var"] == pytest.approx(true[:, 3].var())
    # fewer than 50 genes: heg50/hvg50 use all genes
    assert res["pcc_heg50"] == pytest.approx(expected.mean())
    json.dumps(res)  # serialisable
    # perfect and inverted predictions
    assert evaluate_predictions(true, true, genes)["pcc_mean"] == pytest.approx(1.0)
    assert evaluate_predictions(-true, true, genes)["pcc_mean"] == pytest.approx(-1.0)


def test_zero_variance_genes_are_reported_not_dropped() -> None:
    pred, true, genes = _data()
    true[:, 2] = 1.5  # constant truth
    pred[:, 5] = 0.3  # constant prediction
    res = evaluate_predictions(pred, true, genes)
    assert res["zero_variance_genes"] == ["G2", "G5"]
    assert math.isnan(res["per_gene"]["G2"]["pcc"]) and math.isnan(res["per_gene"]["G5"]["pcc"])
    assert res["n_genes"] == 12 and res["n_genes_pcc"] == 10
    keep = [j for j in range(12) if j not in (2, 5)]
    expected = np.array([pearsonr(pred[:, j], true[:, j])[0] for j in keep])
    assert res["pcc_mean"] == pytest.approx(expected.mean())
    assert np.isfinite(res["pcc_median"])


def test_heg50_and_hvg50_pick_the_right_genes() -> None:
    rng = np.random.default_rng(1)
    n, g = 100, 70
    # genes 0..49 have high mean and low variance; genes 50..69 low mean, high variance
    true = np.empty((n, g))
    true[:, :50] = 10 + rng.normal(scale=0.5, size=(n, 50))
    true[:, 50:] = 1 + rng.normal(scale=3.0, size=(n, 20))
    pred = rng.normal(size=(n, g))  # unrelated...
    pred[:, :50] = true[:, :50]  # ...except the highly expressed genes, predicted exactly
    res = evaluate_predictions(pred, true, [f"G{i}" for i in range(g)])
    assert res["pcc_heg50"] == pytest.approx(1.0)
    # hvg50 = the 20 high-variance genes (random) + 30 of the exact ones
    r = pearson_per_gene(pred, true)
    hvg = np.argsort(-true.var(axis=0), kind="stable")[:50]
    assert set(range(50, 70)) <= set(hvg.tolist())
    assert res["pcc_hvg50"] == pytest.approx(r[hvg].mean())
    assert res["pcc_hvg50"] < 0.9
    assert res["pcc_mean"] < res["pcc_heg50"]


def test_input_validation() -> None:
    pred, true, genes = _data()
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(pred[:, :3], true, genes)
    with pytest.raises(ValueError, match="gene names"):
        evaluate_predictions(pred, true, genes[:-1])
    bad = pred.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        evaluate_predictions(bad, true, genes)


def test_aggregate_folds_mean_and_std() -> None:
    results = [evaluate_predictions(*_data(seed=s), section=f"S{s}") for s in range(4)]
    agg = aggregate_folds(results)
    assert agg["n_folds"] == 4 and agg["sections"] == ["S0", "S1", "S2", "S3"]
    for key in SUMMARY_KEYS:
        vals = np.array([r[key] for r in results])
        assert agg[key] == pytest.approx(vals.mean())
        assert agg[f"{key}_std"] == pytest.approx(vals.std())
    assert agg["per_gene_pcc"]["G0"] == pytest.approx(
        np.mean([r["per_gene"]["G0"]["pcc"] for r in results])
    )
    # a fold with an undefined metric is left out of that metric and counted
    results[0]["pcc_heg50"] = float("nan")
    agg = aggregate_folds(results)
    assert agg["n_folds_pcc_heg50"] == 3
    assert agg["pcc_heg50"] == pytest.approx(np.mean([r["pcc_heg50"] for r in results[1:]]))
    with pytest.raises(ValueError):
        aggregate_folds([])
