"""The zero-shot protocol (``training/zero_shot.py``): the similarity baseline, the gene
splits, ``evaluate_unseen`` for a zero-shot model (ALIGN-ST) and for one that is not (the
ridge baseline), zero-shot cross-validation, and the CLI's ``evaluate --unseen-genes``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from dense_toys import TINY_ALIGN_ST
from napari_histoexpress.training.config import TrainConfig
from napari_histoexpress.training.zero_shot import (
    UnseenGenesError,
    evaluate_unseen,
    gene_split,
    similarity_weights,
)

#: trained on the collagens and friends; DCN and LUM (stroma, described as extracellular
#: matrix proteins like the collagens) and two epithelial keratins are held out
SEEN = ["COL1A1", "COL1A2", "COL3A1", "FN1", "SPARC", "KRT8", "KRT18", "EPCAM", "VIM", "PTPRC"]
UNSEEN = ["DCN", "LUM", "KRT19", "KRT7"]


def test_similarity_weights_by_hand() -> None:
    seen = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    unseen = np.array([[1.0, 0.0], [-1.0, -1.0]])
    w = similarity_weights(seen, unseen, k=2)
    # unseen 0: cosines 1, 0, 0.7071, -1 -> top 2 = seen 0 and 2, weights ∝ (1, 0.7071)
    np.testing.assert_allclose(w[0], [1 / 1.70711, 0, 0.70711 / 1.70711, 0], atol=1e-5)
    # unseen 1: cosines -0.7071, -0.7071, -1, 0.7071 -> top 2: seen 3 (0.71) and seen 0
    # (−0.71, ties broken by order), clipped at 0 -> all weight on seen 3
    np.testing.assert_allclose(w[1], [0, 0, 0, 1], atol=1e-9)
    w = similarity_weights(seen[:2], -np.ones((1, 2)), k=2)  # nothing similar: uniform
    np.testing.assert_allclose(w, [[0.5, 0.5]])
    np.testing.assert_allclose(similarity_weights(seen, unseen, k=10).sum(1), 1.0)


def test_gene_splits() -> None:
    ranked = [f"G{i}" for i in range(20)]
    seen, unseen = gene_split(ranked, "rank", 5)
    assert unseen == ranked[:5] and seen == ranked[5:]
    folds = [gene_split(ranked, "5-fold", 10, fold=i) for i in range(5)]
    assert [u for _, u in folds] == [ranked[i:10:5] for i in range(5)]  # by rank mod 5
    assert sorted(g for _, u in folds for g in u) == sorted(ranked[:10])
    for seen, unseen in folds:
        assert not set(seen) & set(unseen) and set(seen) | set(unseen) == set(ranked[:10])
    assert gene_split(ranked, "5-fold", 10, fold=7) == folds[2]
    with pytest.raises(ValueError, match="split must be one of"):
        gene_split(ranked, "leave-one-out", 5)
    with pytest.raises(ValueError, match="more than the 20 test genes"):
        gene_split(ranked, "rank", 20)


def _train(model: str, section, out: Path, cache: Path, **kw) -> Path:
    from napari_histoexpress.training.train import train

    cfg = TrainConfig.for_model(
        model, device="cpu", feature_cache=str(cache), gene_file=None, n_genes=None, **kw
    )
    train([section], out, cfg, genes=SEEN, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def align_st_run(sample_section, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zero_shot")
    run = _train(
        "align-st",
        sample_section,
        root / "run",
        root / "features",
        epochs=40,
        lr=2e-3,
        model_config=dict(TINY_ALIGN_ST),
    )
    return run, root / "features"


def test_evaluate_unseen_scores_the_model_and_the_baseline(align_st_run, sample_section) -> None:
    run, cache = align_st_run
    report = evaluate_unseen(run, [sample_section], UNSEEN, device="cpu", feature_cache=str(cache))
    assert report["unseen_genes"] == UNSEEN and report["baseline_encoder"] == "minilm"
    for block in ("zero_shot", "similarity_baseline"):
        res = report[block]["sections"]["synthetic"]
        assert res["n_genes"] == 4 and np.isfinite(res["pcc_mean"])
        assert set(res["per_gene"]) == set(UNSEEN)
    assert report["seen"]["sections"]["synthetic"]["n_genes"] == len(SEEN)
    # the stroma genes borrow from the collagens: the baseline finds them
    baseline = report["similarity_baseline"]["sections"]["synthetic"]["per_gene"]
    assert baseline["DCN"]["pcc"] > 0.3 and baseline["LUM"]["pcc"] > 0.3
    with pytest.raises(UnseenGenesError, match="trained on"):
        evaluate_unseen(run, [sample_section], ["COL1A1", "DCN"], device="cpu")


def test_a_given_description_replaces_the_table(align_st_run, sample_section) -> None:
    """The same symbol described as a collagen or as a keratin gets another column."""
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.evaluate import spot_graph_features

    run, cache = align_st_run
    model, meta = load_checkpoint(run)
    import torch

    _, nodes = spot_graph_features(model, meta, sample_section, torch.device("cpu"), str(cache))
    table, _ = model.unseen_gene_head(["DCN"], nodes=nodes)
    other, _ = model.unseen_gene_head(
        ["DCN"], nodes=nodes, descriptions={"DCN": "keratin of simple epithelia"}
    )
    assert not np.allclose(table, other)
    with pytest.raises(ValueError, match="description"):
        model.unseen_gene_head(["NOT-A-GENE-XYZ"], nodes=nodes)


def test_a_model_that_is_not_zero_shot_gets_the_baseline_only(sample_section, tmp_path) -> None:
    ridge = {"backbone": "resnet18", "pretrained": None, "patch_um": 64.0, "input_px": 32}
    run = _train(
        "ridge",
        sample_section,
        tmp_path / "ridge",
        tmp_path / "features",
        model_config={**ridge, "n_components": 8, "cv_folds": 2},
    )
    report = evaluate_unseen(run, [sample_section], UNSEEN, device="cpu")
    assert report["zero_shot"] is None
    assert np.isfinite(report["similarity_baseline"]["mean"]["pcc_mean"])


def test_zero_shot_cross_validation(sample_section, tmp_path) -> None:
    from napari_histoexpress.training.cross_validation import cross_validate

    other = copy.copy(sample_section)
    other.adata = sample_section.adata.copy()
    other.adata.uns["spatial"] = {"synthetic2": other.adata.uns["spatial"]["synthetic"]}
    other.name = "synthetic2"
    cfg = TrainConfig.for_model(
        "align-st",
        device="cpu",
        n_genes=10,
        epochs=2,
        feature_cache=str(tmp_path / "features"),
        model_config=dict(TINY_ALIGN_ST),
    )
    report = cross_validate(
        [sample_section, other],
        tmp_path / "cv",
        cfg,
        progress=False,
        log=lambda _: None,
        zero_shot="5-fold",
    )
    rows = report["rows"]
    assert [r["fold"] for r in rows] == ["synthetic", "synthetic2", "mean"]
    assert [r["n_unseen"] for r in rows[:2]] == [2, 2] and rows[0]["n_seen"] == 8
    meta = json.loads((tmp_path / "cv" / "fold-synthetic" / "config.json").read_text())
    assert len(meta["genes"]) == 8  # trained on the seen genes only
    assert report["zero_shot"]["scored"] == "model"
    assert all(np.isfinite(r["baseline_pcc_mean"]) for r in rows)
    assert "baseline_pcc_mean" in (tmp_path / "cv" / "cv.md").read_text()


def test_cli_evaluate_unseen_genes(align_st_run, tmp_path: Path, capsys) -> None:
    from napari_histoexpress.cli import main
    from napari_histoexpress.io.synthetic import sample_paths

    run, cache = align_st_run
    genes = tmp_path / "unseen.txt"
    genes.write_text("\n".join(UNSEEN) + "\n")
    out = tmp_path / "zs.json"
    args = ["evaluate", "--run", str(run), "--data", str(sample_paths()["spots"])]
    common = ["--device", "cpu", "--feature-cache", str(cache)]
    assert main([*args, "--unseen-genes", str(genes), "--json", str(out), *common]) == 0
    text = capsys.readouterr().out
    assert "zero-shot: pcc_mean" in text and "similarity baseline: pcc_mean" in text
    assert json.loads(out.read_text())["unseen_genes"] == UNSEEN
    genes.write_text("COL1A1\n")
    assert main([*args, "--unseen-genes", str(genes), *common]) != 0
    assert "--unseen-genes" in capsys.readouterr().err


def test_pixnet_text_head_predicts_unseen_genes(sample_section, tmp_path) -> None:
    """PixNet with ``head="text"``: each column is a projection of the gene's description
    vector, so the run is zero-shot; its own genes' columns are what the projection gives
    for their descriptions, and the protocol scores it beside the baseline."""
    from napari_histoexpress.models.checkpoint import load_checkpoint
    from napari_histoexpress.training.train import train

    tiny = {"backbone": "resnet18", "out_indices": [1, 2], "decoder_dim": 16, "head": "text"}
    cfg = TrainConfig(
        model="pixnet",
        epochs=2,
        crops_per_epoch=8,
        batch_size=4,
        mpp=4.0,
        crop_um=256.0,
        device="cpu",
        model_config=tiny,
    )
    train([sample_section], tmp_path / "run", cfg, genes=SEEN, progress=False, log=lambda _: None)
    model, meta = load_checkpoint(tmp_path / "run")
    assert model.zero_shot and "MiniLM" in meta["extra"]["gene_embeddings"]["encoder"]
    W, b = model.gene_head()
    again, b2 = model.unseen_gene_head(["COL1A1", "KRT8"])  # their table descriptions
    np.testing.assert_allclose(again, W[:, [0, 5]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b2, b[[0, 5]], rtol=1e-5, atol=1e-6)
    report = evaluate_unseen(tmp_path / "run", [sample_section], UNSEEN, device="cpu")
    assert report["zero_shot"]["sections"]["synthetic"]["n_genes"] == len(UNSEEN)
    assert np.isfinite(report["zero_shot"]["mean"]["pcc_mean"])
    # the linear head is not zero-shot
    linear = TrainConfig(**{**cfg.to_dict(), "model_config": {**tiny, "head": "linear"}})
    train([sample_section], tmp_path / "lin", linear, genes=SEEN, progress=False, log=print)
    assert (
        evaluate_unseen(tmp_path / "lin", [sample_section], UNSEEN, device="cpu")["zero_shot"]
        is None
    )
