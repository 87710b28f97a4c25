"""Measured ST spots vs a dense-map prediction of the same slide: per-gene Pearson correlation.

Protocol (the one of :mod:`napari_histoexpress.metrics`, so the numbers compare
with the training/evaluation reports):

- **Predicted** values are the map aggregated over each measured spot's true disk
  (:func:`napari_histoexpress.inference.spots.predict_circles`, mean over the disk):
  circle centres are the spots' ``obsm['spatial']`` full-resolution pixels and the diameter
  is ``scalefactors['spot_diameter_fullres']``, both converted to µm with the **map's slide
  µm/px** (the spot pixels are pixels of that slide image; using the store's own µm/px keeps
  the circles where the map was computed even if the AnnData records another value).
- **Measured** values are normalised as the model's targets were
  (:func:`napari_histoexpress.expression.expression_matrix`: library size over *all*
  measured genes, scaled to ``target_sum`` counts, ``log1p``). ``target_sum`` is read from
  the training run the map was predicted with (``provenance.run_dir`` of the store →
  ``config.json``: ``config.target_sum``, else ``extra.normalisation.target_sum``); when the
  store records no readable run, the package's training default ``1e4`` is used and
  :attr:`MeasuredVsPredicted.normalisation_source` says so.
- **Spots used**: those whose centre lies on a *computed* tile of the map (``coverage == 1``)
  and whose prediction is finite. Spots on pending tiles (a partial map) or on tiles the
  tissue detector skipped would only get the head's bias, so they are left out; their
  number is reported (``n_spots_used`` / ``n_spots_total``).
- **Per-gene Pearson** across the used spots
  (:func:`napari_histoexpress.metrics.pearson_per_gene`). A gene whose measured or
  predicted values are constant gets ``NaN`` and is listed in ``zero_variance_genes``; a
  gene of the model that the section does not measure gets ``NaN`` and is listed in
  ``missing_genes``. Neither is dropped; :attr:`MeasuredVsPredicted.mean_pcc` is the mean
  over the genes with a defined PCC (``n_genes_pcc`` of them).

Results are cached per (store, AnnData object) by :func:`cached_compare`.
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..expression import expression_matrix
from ..io import spatial
from ..metrics import pearson_per_gene
from .map_store import DenseMapStore
from .spots import circles_to_grid, predict_circles

__all__ = [
    "DEFAULT_TARGET_SUM",
    "MeasuredVsPredicted",
    "cached_compare",
    "clear_cache",
    "compare",
    "matches_slide",
    "measured_values",
    "model_target_sum",
    "spot_circles",
]

#: The training default (:class:`napari_histoexpress.training.config.TrainConfig`).
DEFAULT_TARGET_SUM = 1e4


@dataclass
class MeasuredVsPredicted:
    """Per-gene agreement of a map with measured spots (see the module docstring)."""

    genes: list[str]
    pcc: np.ndarray
    predicted: np.ndarray
    measured: np.ndarray
    spots: list[str]
    n_spots_total: int
    target_sum: float
    normalisation_source: str
    missing_genes: list[str] = field(default_factory=list)
    zero_variance_genes: list[str] = field(default_factory=list)

    @property
    def n_spots_used(self) -> int:
        return len(self.spots)

    @property
    def n_genes_pcc(self) -> int:
        return int(np.isfinite(self.pcc).sum())

    @property
    def mean_pcc(self) -> float:
        """Mean PCC over the genes where it is defined (``NaN`` when none is)."""
        ok = self.pcc[np.isfinite(self.pcc)]
        return float(ok.mean()) if ok.size else float("nan")

    def pcc_of(self, gene: str) -> float:
        try:
            return float(self.pcc[self.genes.index(str(gene))])
        except ValueError:
            raise KeyError(f"gene {gene!r} is not a gene of the map") from None

    def per_gene(self) -> pd.DataFrame:
        """``gene, pcc, measured`` (bool), ``zero_variance`` (bool) as a table."""
        return pd.DataFrame(
            {
                "gene": self.genes,
                "pcc": self.pcc,
                "measured": [g not in self.missing_genes for g in self.genes],
                "zero_variance": [g in self.zero_variance_genes for g in self.genes],
            }
        )


def spot_circles(adata: Any, slide_mpp: float, library_id: str | None = None) -> pd.DataFrame:
    """``id, x_um, y_um, diameter_um`` of the measured spots, in µm of a slide at ``slide_mpp``."""
    xy = spatial.spot_centres_px(adata)
    diameter_px = spatial.spot_diameter_px(adata, library_id)
    return pd.DataFrame(
        {
            "id": [str(s) for s in adata.obs_names],
            "x_um": xy[:, 0] * float(slide_mpp),
            "y_um": xy[:, 1] * float(slide_mpp),
            "diameter_um": np.full(len(xy), diameter_px * float(slide_mpp)),
        }
    )


def model_target_sum(store: DenseMapStore) -> tuple[float, str]:
    """``(target_sum, where it came from)`` of the model that predicted ``store``: the
    store's own record (:attr:`DenseMapStore.normalisation`), else the run's config, else
    the training default."""
    norm = store.normalisation
    if norm is not None:
        return norm.target_sum, "map provenance"
    run_dir = store.provenance.get("run_dir")
    if run_dir:
        cfg_path = Path(str(run_dir)) / "config.json"
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            value = (meta.get("config") or {}).get("target_sum")
            if value is None:
                value = ((meta.get("extra") or {}).get("normalisation") or {}).get("target_sum")
            if isinstance(value, int | float) and value > 0:
                return float(value), f"run config {cfg_path}"
    return DEFAULT_TARGET_SUM, "training default (the map records no readable run config)"


def measured_values(adata: Any, gene: str, target_sum: float = DEFAULT_TARGET_SUM) -> np.ndarray:
    """One gene's measured values at every spot, normalised as training targets ``(n_spots,)``."""
    return expression_matrix(adata, [str(gene)], target_sum)[:, 0]


def matches_slide(adata: Any, slide_path: str | Path, library_id: str | None = None) -> bool:
    """Whether ``adata``'s spots were measured on the slide file ``slide_path``.

    Compares ``source_image_path`` with the slide path: resolved paths when the recorded path
    is absolute, file names when it is relative (the sample data record the image relative
    to the ``.h5ad``'s folder, which the AnnData itself does not remember).
    """
    try:
        recorded = spatial.source_image_path(adata, library_id)
    except KeyError:
        return False
    if not recorded:
        return False
    rec, slide = Path(recorded), Path(slide_path)
    if rec.is_absolute():
        try:
            return rec.resolve() == slide.resolve()
        except OSError:
            return rec == slide
    return rec.name == slide.name


def _computed_at(store: DenseMapStore, centres: np.ndarray) -> np.ndarray:
    """Whether each map-grid point ``(x, y)`` lies on a computed tile (coverage 1)."""
    cov = store.coverage
    ch, cw = store.chunk
    h, w = store.map_shape
    col = np.floor(centres[:, 0] + 0.5).astype(np.int64)
    row = np.floor(centres[:, 1] + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.zeros(len(centres), bool)
    out[inside] = cov[row[inside] // ch, col[inside] // cw] == 1
    return out


def compare(
    store: DenseMapStore | str | Path,
    adata: Any,
    *,
    library_id: str | None = None,
    target_sum: float | None = None,
) -> MeasuredVsPredicted:
    """Per-gene PCC between ``adata``'s measured spots and ``store``'s prediction at them.

    Raises ``ValueError`` when fewer than two spots lie on computed parts of the map or the
    store records no µm/px.
    """
    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
    if slide_mpp is None or map_mpp is None:
        raise ValueError(f"{store.path}: the map records no µm/px; cannot place the spots")
    if target_sum is None:
        target_sum, source = model_target_sum(store)
    else:
        source = "given"
    lib_id, _ = spatial.library(adata, library_id)
    circles = spot_circles(adata, slide_mpp, lib_id)
    centres, _radii = circles_to_grid(
        circles["x_um"].to_numpy(),
        circles["y_um"].to_numpy(),
        circles["diameter_um"].to_numpy(),
        map_mpp=map_mpp,
        slide_mpp=slide_mpp,
    )
    on_map = _computed_at(store, centres)
    genes = list(store.genes)
    n_total = int(adata.n_obs)
    pred_all = np.full((n_total, len(genes)), np.nan, np.float32)
    if on_map.any():
        pred = predict_circles(store, circles[on_map].reset_index(drop=True), library_id=lib_id)
        pred_all[on_map] = np.asarray(pred.X, np.float32)
    used = on_map & np.isfinite(pred_all).all(axis=1)
    if used.sum() < 2:
        raise ValueError(
            f"only {int(used.sum())} of {n_total} measured spots lie on computed parts of the "
            f"map {store.path}; need at least 2 to correlate"
        )
    names = set(map(str, adata.var_names))
    present = [g for g in genes if g in names]
    missing = [g for g in genes if g not in names]
    measured = np.full((int(used.sum()), len(genes)), np.nan, np.float32)
    if present:
        cols = [genes.index(g) for g in present]
        measured[:, cols] = expression_matrix(adata[used], present, float(target_sum))
    predicted = pred_all[used]
    pcc = np.full(len(genes), np.nan)
    if present:
        pcc[cols] = pearson_per_gene(predicted[:, cols], measured[:, cols])
    zero_var = [g for g in present if not math.isfinite(pcc[genes.index(g)])]
    return MeasuredVsPredicted(
        genes=genes,
        pcc=pcc,
        predicted=predicted,
        measured=measured,
        spots=[str(s) for s, u in zip(adata.obs_names, used, strict=True) if u],
        n_spots_total=n_total,
        target_sum=float(target_sum),
        normalisation_source=source,
        missing_genes=missing,
        zero_variance_genes=zero_var,
    )


_CACHE: dict[tuple[Any, ...], tuple[weakref.ref[Any], MeasuredVsPredicted]] = {}


def _store_key(store: DenseMapStore) -> tuple[Any, ...]:
    """The store's path plus what changes while it is predicted (status, done tiles) or
    after (its genes: zero-shot genes added to a finished map)."""
    return (
        str(Path(store.path).resolve()),
        store.status,
        int(store.done_mask.sum()),
        tuple(store.genes),
    )


def cached_compare(
    store: DenseMapStore, adata: Any, *, library_id: str | None = None
) -> MeasuredVsPredicted:
    """:func:`compare`, cached per (store state, AnnData object)."""
    key = (*_store_key(store), id(adata), library_id)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is adata:
        return hit[1]
    result = compare(store, adata, library_id=library_id)
    for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[k]
    _CACHE[key] = (weakref.ref(adata), result)
    return result


def clear_cache() -> None:
    _CACHE.clear()
