"""Zero-shot evaluation: genes a run never trained on, predicted from their descriptions.

The protocol (ALIGN-ST, design *spot-models* §3; README *Zero-shot genes*):

* :func:`evaluate_unseen` scores a run on genes it did not train on: the model's own
  zero-shot prediction (:meth:`~napari_histoexpress.models.base.HistoModel.unseen_gene_head`,
  for models with :attr:`~napari_histoexpress.models.base.HistoModel.zero_shot`) and, for
  **every** model, the **similarity baseline** — each unseen gene predicted as the
  description-similarity-weighted mean of the seen genes' predictions: the ``k`` seen genes
  whose description embeddings (the gene-knowledge layer's pooled vectors, MiniLM offline)
  are most cosine-similar, weighted by that similarity (clipped at 0; uniform over the ``k``
  when none is positive). A method that cannot beat it is not doing zero-shot.
* Gene splits for cross-validation (:func:`gene_split`): ``"rank"`` — train on the genes
  ranked ``n_genes + 1 … n_seen`` by mean count, test on the top ``n_genes`` (ALIGN-ST's
  split: 251–1,000 vs the top 250); ``"5-fold"`` — the top ``n_genes`` dealt into five folds
  by rank (rank mod 5, so every fold spans the expression range), fold ``i`` unseen and the
  other four seen, paired with the ``i``-th section fold (mod 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import HistoExpressError
from .sections import Section

__all__ = [
    "GENE_SPLITS",
    "UnseenGenesError",
    "evaluate_unseen",
    "gene_split",
    "similarity_weights",
]

GENE_SPLITS = ("rank", "5-fold")


class UnseenGenesError(HistoExpressError, ValueError):
    """The genes given as unseen are not (trained on by the run, or none given)."""


DEFAULT_BASELINE_K = 5
GENE_FOLDS = 5


def similarity_weights(
    seen: np.ndarray, unseen: np.ndarray, k: int = DEFAULT_BASELINE_K
) -> np.ndarray:
    """``(U, G)`` weights of the similarity baseline: each unseen gene's ``k`` most
    cosine-similar seen genes (``seen (G, D)``, ``unseen (U, D)`` description vectors),
    weighted by their similarity clipped at 0 and normalised (uniform over the ``k`` when
    none is positive); each row sums to 1."""
    s = np.asarray(seen, dtype=np.float64)
    u = np.asarray(unseen, dtype=np.float64)
    s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    sim = u @ s.T
    k = max(1, min(int(k), sim.shape[1]))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(u))[:, None]
    w = np.zeros_like(sim)
    w[rows, top] = np.clip(sim[rows, top], 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    flat = total[:, 0] <= 0
    w[flat] = 0.0
    w[np.nonzero(flat)[0][:, None], top[flat]] = 1.0 / k
    return w / w.sum(axis=1, keepdims=True)


def gene_split(
    ranked: Sequence[str], split: str, n_genes: int, fold: int = 0
) -> tuple[list[str], list[str]]:
    """``(seen, unseen)`` genes of cross-validation fold ``fold`` from genes ``ranked`` by
    mean count (highest first; see the module docstring for the splits)."""
    if split not in GENE_SPLITS:
        raise ValueError(f"zero-shot split must be one of {GENE_SPLITS}, got {split!r}")
    ranked = [str(g) for g in ranked]
    if split == "rank" and len(ranked) <= n_genes:
        raise ValueError(
            f"the 'rank' split needs more than the {n_genes} test genes, got {len(ranked)}"
        )
    if split == "5-fold" and not GENE_FOLDS <= n_genes <= len(ranked):
        raise ValueError(
            f"the '5-fold' split needs at least {GENE_FOLDS} of {len(ranked)} ranked genes "
            f"to deal, got {n_genes}"
        )
    top = ranked[:n_genes]
    if split == "rank":
        return ranked[n_genes:], top
    i = fold % GENE_FOLDS
    unseen = top[i::GENE_FOLDS]
    return [g for g in top if g not in set(unseen)], unseen


def _description_vectors(gene_encoder: str, genes: Sequence[str]) -> np.ndarray:
    from ..models.gene_knowledge.gene_embeddings import create_gene_encoder

    return create_gene_encoder(gene_encoder).embed(list(genes), missing="zero").vectors


def evaluate_unseen(
    run_dir: str | os.PathLike[str],
    sections: Sequence[Section],
    unseen_genes: Sequence[str],
    *,
    device: str = "auto",
    progress: bool = False,
    feature_cache: str = "none",
    baseline_k: int = DEFAULT_BASELINE_K,
    gene_encoder: str | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics on ``unseen_genes`` (genes the run did not train on) per section and their
    mean: ``{"zero_shot": …}`` (the model's own zero-shot prediction; ``None`` for a model
    that is not zero-shot), ``{"similarity_baseline": …}`` and ``{"seen": …}`` (the run's own
    genes, as :func:`~.evaluate.evaluate_run`). ``gene_encoder`` (the baseline's description
    vectors): the model's own, else MiniLM."""
    from ..devices import resolve_device
    from ..expression import expression_matrix
    from ..metrics import aggregate_folds, evaluate_predictions
    from ..models.checkpoint import load_checkpoint
    from .evaluate import (
        check_genes,
        dense_spot_features,
        predict_section_spots,
        spot_graph_features,
    )

    model, meta = load_checkpoint(run_dir)
    seen = list(meta["genes"])
    unseen = [str(g) for g in unseen_genes]
    trained = sorted(set(unseen) & set(seen))
    if trained:
        raise UnseenGenesError(
            f"{len(trained)} of the unseen genes were trained on by {run_dir}, e.g. "
            f"{trained[:5]}: zero-shot genes must be new to the run"
        )
    if not unseen:
        raise UnseenGenesError("no unseen genes given")
    for section in sections:
        check_genes(run_dir, seen, section)
        check_genes(run_dir, unseen, section)
    target_sum = float(meta.get("config", {}).get("target_sum", 1e4))
    encoder = str(
        gene_encoder or getattr(getattr(model, "config", None), "gene_encoder", None) or "minilm"
    )
    weights = similarity_weights(
        _description_vectors(encoder, seen), _description_vectors(encoder, unseen), baseline_k
    )
    dev = resolve_device(device)
    own: dict[str, Any] = {}
    base: dict[str, Any] = {}
    seen_res: dict[str, Any] = {}
    for section in sections:
        pred_seen = predict_section_spots(
            model, meta, section, device=device, progress=progress, feature_cache=feature_cache
        )
        true_seen = expression_matrix(section.adata, seen, target_sum)
        true = expression_matrix(section.adata, unseen, target_sum)
        seen_res[section.name] = evaluate_predictions(
            pred_seen, true_seen, seen, section=section.name
        )
        baseline = (pred_seen.astype(np.float64) @ weights.T).astype(np.float32)
        base[section.name] = evaluate_predictions(baseline, true, unseen, section=section.name)
        if not model.zero_shot:
            continue
        spot_graph = getattr(model, "needs_slide_context", False)
        if spot_graph and model.input_spec().context == "spots":
            feats_t, nodes = spot_graph_features(model, meta, section, dev, feature_cache)
            feats = feats_t.detach().double().cpu().numpy()
        elif model.kind == "dense":  # PixNet's text head: the same columns on every slide
            feats, nodes = dense_spot_features(model, meta, section, device=device), None
        else:  # pragma: no cover - no such zero-shot model yet
            raise TypeError(f"zero-shot evaluation of {meta['model']!r} is not supported")
        with torch.inference_mode():
            W, b = model.unseen_gene_head(unseen, nodes=nodes, descriptions=descriptions)
        pred = (np.asarray(feats, dtype=np.float64) @ W + b).astype(np.float32)
        own[section.name] = evaluate_predictions(pred, true, unseen, section=section.name)

    def block(results: dict[str, Any]) -> dict[str, Any] | None:
        if not results:
            return None
        return {"sections": results, "mean": aggregate_folds(list(results.values()))}

    return {
        "run": str(run_dir),
        "model": meta["model"],
        "unseen_genes": unseen,
        "baseline_k": int(baseline_k),
        "baseline_encoder": encoder,
        "zero_shot": block(own),
        "similarity_baseline": block(base),
        "seen": block(seen_res),
    }
