"""Dense zero-shot: add genes a model never trained on to a **finished** map.

A model whose head is a dot product with gene embeddings (ALIGN-ST: ``ŷ = F^v · F^g``)
can predict a new gene anywhere on a slide it has already predicted: the stored features
stay as they are, and the gene's head column comes from its description alone
(:meth:`~napari_histoexpress.models.base.HistoModel.unseen_gene_head`, with the slide's
state the predictor kept in the map: ALIGN-ST's visual prompts and its genes' ASIG vectors).
:func:`add_zero_shot_genes` appends the columns with
:meth:`~.map_store.DenseMapStore.add_genes`, marked ``"zero-shot"`` with the encoder and, when
given, the description text in the map's gene provenance
(:attr:`~.map_store.DenseMapStore.gene_sources`), so viewers, spot tables and exports see
them like any gene.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HistoExpressError
from .map_store import DenseMapStore

__all__ = ["ZeroShotError", "ZeroShotResult", "add_zero_shot_genes", "zero_shot_model"]


class ZeroShotError(HistoExpressError, ValueError):
    """The map, the run or the genes do not allow a zero-shot gene (the message says why)."""


@dataclass(frozen=True)
class ZeroShotResult:
    """What :func:`add_zero_shot_genes` added: the ``genes`` and the ``encoder`` named in
    their provenance."""

    genes: list[str]
    encoder: str


def zero_shot_model(run_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The run's model and metadata, checked to be zero-shot (:class:`ZeroShotError`
    naming the run otherwise)."""
    from ..models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(run_dir)
    if not getattr(model, "zero_shot", False):
        raise ZeroShotError(
            f"{run_dir}: the {meta.get('model')!r} model predicts only the genes it was "
            "trained on; zero-shot genes need a zero-shot model (ALIGN-ST, or PixNet trained "
            "with --head text)"
        )
    return model, meta


def _check_pair(store: DenseMapStore, meta: Mapping[str, Any], run_dir: Path) -> None:
    prov = store.provenance
    if prov.get("model") not in (None, meta.get("model")):
        raise ZeroShotError(
            f"{store.path} was predicted by a {prov.get('model')!r} model, not by the run "
            f"{run_dir} ({meta.get('model')!r})"
        )
    trained = [str(g) for g in meta["genes"]]
    own = [s.symbol for s in store.gene_sources if s.source == "model"]
    if own != trained:
        raise ZeroShotError(
            f"{store.path}: its model genes are not those of the run {run_dir} (another run "
            "predicted this map): add zero-shot genes with the run that predicted it"
        )


def add_zero_shot_genes(
    map_path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    genes: Sequence[str],
    *,
    descriptions: Mapping[str, str] | None = None,
    replace: bool = False,
    model: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> ZeroShotResult:
    """Add ``genes`` to the finished map at ``map_path`` predicted by ``run_dir``'s
    zero-shot model, from their descriptions (the gene-knowledge table, or
    ``descriptions``: symbol → text). ``replace``: recompute a zero-shot gene already in the
    map (a gene the model was trained on is never replaced). ``model``/``meta``: the run
    already loaded (the widget keeps it). Raises :class:`ZeroShotError` for a model that is
    not zero-shot, a map of another run, a map without the slide state (predicted before
    it was kept: predict it again) and genes the model was trained on."""
    run = Path(run_dir)
    if model is None or meta is None:
        model, meta = zero_shot_model(run)
    names = [str(g).strip() for g in genes]
    if not names or not all(names):
        raise ZeroShotError("give at least one gene symbol")
    store = DenseMapStore.open(map_path, mode="r+")
    if store.status != "complete":
        raise ZeroShotError(f"{store.path}: the map is not finished ({store.status})")
    _check_pair(store, meta, run)
    trained = set(map(str, meta["genes"]))
    clash = [g for g in names if g in trained]
    if clash:
        raise ZeroShotError(
            f"{clash} are genes the model was trained on: their columns are the model's own"
        )
    present = [g for g in names if g in store.genes]
    if present and not replace:
        raise ZeroShotError(f"{store.path} already has {present} (replace to recompute them)")
    state = store.model_state()
    if getattr(model, "needs_slide_context", False) and not state:
        raise ZeroShotError(
            f"{store.path} keeps no slide state for zero-shot genes (predicted by an older "
            "version): predict the slide again"
        )
    try:
        W, b = model.unseen_gene_head(names, state=state, descriptions=descriptions)
    except ValueError as exc:
        raise ZeroShotError(str(exc)) from exc
    cfg = getattr(model, "config", None)
    encoder = f"{meta.get('model')} {run.name} + {getattr(cfg, 'gene_encoder', 'text')}"
    store.add_genes(
        names,
        W,
        b,
        source="zero-shot",
        encoder=encoder,
        replace=replace,
        descriptions={k: v for k, v in (descriptions or {}).items() if k in names},
    )
    return ZeroShotResult(names, encoder)
