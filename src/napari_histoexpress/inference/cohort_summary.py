"""A cohort's maps as one AnnData, one observation per slide (Qt-free; ``histoexpress cohort
summarize``), and its offline HTML report.

:func:`summarize_cohort` reads the cohort folder's ``manifest.csv``
(:mod:`~..io.cohort_files`) and, for every slide whose row and map store are both
``complete``:

Every number of a slide comes from one set of map pixels, the **tissue pixels**: the pixels
of one pyramid level, the finest with at most ``quantile_pixels`` map pixels (default
65,536), that have a finite prediction and whose centre lies on the store's tissue mask
(all finite pixels where the store has no mask). The mask matters for spot models, whose
lattice predicts every node of a chunk, glass included; pooled pixels (a coarser level on a
large slide) are those of a slightly smoothed map. The level is ``obs['quantile_level']``.

* ``X``: each gene's **tissue mean** over those pixels;
* ``layers['q10']``, ``['q50']``, ``['q90']`` (``quantiles``): its quantiles over them;
* ``obs``: ``slide`` (path), ``tissue_area_mm2`` (the tissue mask's area at the slide's
  µm/px; without a mask, the summarised area), ``summarised_area_mm2`` (the tissue pixels'
  area), the timing columns of the manifest (``tiles``, ``tiles_per_s``, ``wall_s``), the
  model provenance (``model``, ``run_dir``, ``map``, ``checksum``) and every metadata column
  of the slide list (patient, grade, …), as text;
* ``--circles`` (``circles=``, a table with ``x_um, y_um, diameter_um`` and a ``name`` or
  ``id`` column): the same named regions aggregated on every slide
  (:func:`~.spots.predict_circles`, the mean over the circle's predicted pixels): one layer
  ``region:<name>`` per region and ``obs['region:<name>:area_fraction']``.

Slides that are failed, pending or whose map is missing are not observations: they are
listed in ``uns['cohort']['not_summarised']`` (name, slide, status, error). Genes: the
union over the maps in first-seen order (a map lacking a gene gives NaN there).

:func:`write_cohort_report` writes ``report.html`` with one PNG per slide (its thumbnail
beside the heatmaps of the chosen genes), the status table of every slide and the timing;
it uses no script, no web font and no remote file, so it opens offline in any browser.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..io.cohort_files import MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest
from ..io.export import h5ad_safe
from .map_store import DenseMapStore

__all__ = [
    "DEFAULT_QUANTILES",
    "QUANTILE_PIXELS",
    "CohortMaps",
    "cohort_maps",
    "summarize_cohort",
    "write_cohort_report",
]

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
#: Most map pixels of the pyramid level the quantiles are taken at.
QUANTILE_PIXELS = 65_536
#: Genes per block when the quantiles are computed (memory: pixels × block × 4 bytes).
_GENE_BLOCK = 32


@dataclass(frozen=True)
class CohortMaps:
    """The manifest of a cohort folder split into summarisable and other slides."""

    folder: Path
    complete: list[tuple[dict[str, Any], DenseMapStore]]
    others: list[dict[str, Any]]
    #: every manifest row, as read (the report's status table)
    rows: list[dict[str, Any]]
    metadata_columns: list[str]


def cohort_maps(folder: str | os.PathLike[str]) -> CohortMaps:
    """Read the manifest of ``folder`` and open every complete map store."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise InputFileError(
            folder,
            f"not a cohort folder: no {MANIFEST_NAME} (predict it with histoexpress cohort "
            "predict first)",
        )
    rows = read_manifest(manifest)
    meta_cols = [c for c in rows[0] if c not in MANIFEST_COLUMNS] if rows else []
    complete, others = [], []
    for row in rows:
        store = None
        if row.get("status") == "complete":
            try:
                store = DenseMapStore.open(folder / str(row["map"]), mode="r")
            except Exception as exc:  # a missing or broken store: listed, not fatal
                row = {**row, "status": "missing map", "error": str(exc)}
            else:
                if store.status != "complete":
                    row = {**row, "status": f"map {store.status}"}
                    store = None
        if store is None:
            others.append(row)
        else:
            complete.append((row, store))
    return CohortMaps(folder, complete, others, rows, meta_cols)


def _quantile_level(store: DenseMapStore, max_pixels: int) -> int:
    h, w = store.map_shape
    level = 0
    while h * w > max_pixels and level < store.n_levels - 1:
        h, w, level = -(-h // 2), -(-w // 2), level + 1
    return level


def _tissue_pixels(store: DenseMapStore, level: int) -> np.ndarray | None:
    """``(h, w)`` bool: the pixels of ``level`` whose centre lies on the store's tissue mask
    (nearest mask pixel), ``None`` without a mask or µm/px."""
    mask, down = store.tissue, store.tissue_downsample
    slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
    if mask is None or down is None or not slide_mpp or not map_mpp:
        return None
    h, w = (int(v) for v in store.features_level(level).shape[:2])
    step = map_mpp * 2**level / slide_mpp / down  # mask px per map px
    rows = np.clip(((np.arange(h) + 0.5) * step).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(((np.arange(w) + 0.5) * step).astype(int), 0, mask.shape[1] - 1)
    return np.asarray(mask[np.ix_(rows, cols)], dtype=bool)


@dataclass(frozen=True)
class _SlideStats:
    mean: np.ndarray  # (G,)
    quantiles: np.ndarray  # (Q, G)
    n_pixels: int
    pixel_um: float


def _slide_stats(
    store: DenseMapStore, genes: list[str], qs: Sequence[float], level: int
) -> _SlideStats:
    """Mean and quantiles of each gene over the tissue pixels of ``level`` with a finite
    prediction (every finite pixel when the store has no tissue mask)."""
    tissue = _tissue_pixels(store, level)
    mean = np.full(len(genes), np.nan)
    quant = np.full((len(qs), len(genes)), np.nan)
    n = 0
    for start in range(0, len(genes), _GENE_BLOCK):
        block = genes[start : start + _GENE_BLOCK]
        maps = np.asarray(store.gene_maps(block, level).compute(), dtype=np.float32)
        keep = np.isfinite(maps).all(axis=2)
        if tissue is not None:
            keep &= tissue
        pixels = maps[keep]
        n = len(pixels)
        if n:
            mean[start : start + len(block)] = pixels.mean(axis=0, dtype=np.float64)
            quant[:, start : start + len(block)] = np.quantile(pixels, qs, axis=0)
    map_mpp = store.map_mpp
    pixel_um = map_mpp * 2**level if map_mpp else float("nan")
    return _SlideStats(mean, quant, n, pixel_um)


def _tissue_area_mm2(store: DenseMapStore) -> float:
    """The tissue mask's area in mm² (NaN without a mask or µm/px)."""
    mask, down, slide_mpp = store.tissue, store.tissue_downsample, store.slide_mpp
    if mask is None or down is None or slide_mpp is None:
        return float("nan")
    return float(mask.sum()) * (down * slide_mpp) ** 2 / 1e6


def _region_names(circles: pd.DataFrame) -> list[str]:
    column = "name" if "name" in circles else "id" if "id" in circles else None
    names = [str(v) for v in circles[column]] if column else [str(i) for i in range(len(circles))]
    if len(set(names)) != len(names):
        raise ValueError(f"region names must be unique, got {names}")
    return names


def summarize_cohort(
    folder: str | os.PathLike[str],
    *,
    circles: pd.DataFrame | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    quantile_pixels: int = QUANTILE_PIXELS,
) -> Any:
    """The cohort AnnData (module docstring)."""
    import anndata as ad

    from .spots import predict_circles

    maps = cohort_maps(folder)
    qs = [float(q) for q in quantiles]
    if any(not 0 <= q <= 1 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    genes: list[str] = []
    for _, store in maps.complete:
        genes += [g for g in store.genes if g not in set(genes)]
    n, g = len(maps.complete), len(genes)
    col = {gene: j for j, gene in enumerate(genes)}
    X = np.full((n, g), np.nan)
    q_layers = {f"q{round(q * 100):02d}": np.full((n, g), np.nan) for q in qs}
    regions = _region_names(circles) if circles is not None else []
    r_layers = {f"region:{r}": np.full((n, g), np.nan) for r in regions}
    obs_rows: list[dict[str, Any]] = []
    for i, (row, store) in enumerate(maps.complete):
        idx = [col[gene] for gene in store.genes]
        level = _quantile_level(store, quantile_pixels)
        stats = _slide_stats(store, list(store.genes), qs, level)
        X[i, idx] = stats.mean
        for k, name in enumerate(q_layers):
            q_layers[name][i, idx] = stats.quantiles[k]
        summarised_mm2 = stats.n_pixels * stats.pixel_um**2 / 1e6
        tissue = _tissue_area_mm2(store)
        prov = store.provenance
        obs: dict[str, Any] = {
            "slide": str(row["slide"]),
            "tissue_area_mm2": summarised_mm2 if np.isnan(tissue) else tissue,
            "summarised_area_mm2": summarised_mm2,
            "tiles": _number(row.get("tiles")),
            "tiles_per_s": _number(row.get("tiles_per_s")),
            "wall_s": _number(row.get("wall_s")),
            "model": str(prov.get("model", "")),
            "run_dir": str(prov.get("run_dir", "")),
            "map": str(store.path),
            "checksum": str(row.get("checksum", "")),
            "quantile_level": level,
        }
        if circles is not None:
            adata = predict_circles(store, circles)
            for r, name in enumerate(regions):
                r_layers[f"region:{name}"][i, idx] = np.asarray(adata.X)[r]
                obs[f"region:{name}:area_fraction"] = float(adata.obs["area_fraction"].iloc[r])
        obs.update({c: str(row.get(c, "")) for c in maps.metadata_columns})
        obs_rows.append(obs)
    obs_df = pd.DataFrame(obs_rows, index=[str(r["name"]) for r, _ in maps.complete])
    first_sources: dict[str, Any] = {}
    for _, store in maps.complete:
        for gene, src in zip(store.genes, store.gene_sources, strict=True):
            first_sources.setdefault(gene, src)
    var = pd.DataFrame(
        {
            "zero_shot": [first_sources[gene].source == "zero-shot" for gene in genes],
            "n_slides": [
                int(sum(gene in store.genes for _, store in maps.complete)) for gene in genes
            ],
        },
        index=genes,
    )
    adata = ad.AnnData(X=X, obs=obs_df, var=var, layers={**q_layers, **r_layers})
    not_summarised = {
        key: [str(r.get(key, "")) for r in maps.others]
        for key in ("name", "slide", "status", "error")
    }
    adata.uns["cohort"] = h5ad_safe(
        {
            "folder": str(Path(folder).resolve()),
            "quantiles": qs,
            "quantile_pixels": int(quantile_pixels),
            "not_summarised": not_summarised,
            "X": "per-gene mean over each slide's predicted pixels",
            "regions": regions,
        }
    )
    return adata


def _number(value: Any) -> float:
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------- report


def report_genes(adata: Any, n: int = 3) -> list[str]:
    """The ``n`` genes whose tissue mean varies most across the slides (then by name)."""
    X = np.asarray(adata.X, dtype=float)
    if X.shape[0] == 0:
        return []
    var = np.nan_to_num(np.nanvar(X, axis=0) if X.shape[0] > 1 else np.zeros(X.shape[1]))
    order = np.lexsort((np.arange(X.shape[1]), -var))
    return [str(adata.var_names[j]) for j in order[:n]]


def _slide_figure(store: DenseMapStore, genes: list[str], path: Path, title: str) -> None:
    """One PNG: the slide thumbnail beside each gene's heatmap on the tissue pixels (coarse
    pyramid level; colour range: the 1st–99th percentile of the tissue)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io.overview import slide_thumbnail
    from ..io.slides import open_slide

    panels = 1 + len(genes)
    fig = Figure(figsize=(2.6 * panels, 2.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    try:
        slide = open_slide(str(store.slide_path), mpp=store.slide_mpp)
    except Exception as exc:  # the slide moved: the heatmaps still stand
        axes[0].text(0.5, 0.5, f"slide not readable:\n{exc}"[:120], ha="center", va="center",
                     wrap=True, fontsize=7)  # fmt: skip
    else:
        try:
            thumb, _ = slide_thumbnail(slide, max_side=400)
        finally:
            slide.close()
        axes[0].imshow(thumb)
    axes[0].set_title(title, fontsize=9)
    level = _quantile_level(store, 40_000)
    on_tissue = _tissue_pixels(store, level)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
    for ax, gene in zip(axes[1:], genes, strict=True):
        if gene in store.genes:
            img = np.asarray(store.gene_map(gene, level).compute(), dtype=np.float32)
            if on_tissue is not None:  # glass is no expression (spot lattices predict it)
                img = np.where(on_tissue, img, np.nan)
            finite = img[np.isfinite(img)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-6))
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.set_title(gene, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)


def write_cohort_report(
    folder: str | os.PathLike[str],
    adata: Any,
    *,
    genes: Sequence[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``report.html`` (default in the cohort folder) and its PNGs (``report/``).

    ``genes``: the heatmaps of each slide (default :func:`report_genes`, the 3 most variable
    tissue means). Returns the HTML file's path."""
    folder = Path(folder)
    html_path = Path(out) if out is not None else folder / "report.html"
    png_dir = html_path.parent / (html_path.stem + "_files")
    png_dir.mkdir(parents=True, exist_ok=True)
    maps = cohort_maps(folder)
    genes = list(genes) if genes is not None else report_genes(adata)
    unknown = [gene for gene in genes if gene not in set(adata.var_names)]
    if unknown:
        raise ValueError(f"gene(s) {unknown} are in none of the cohort's maps")
    figures = []
    for row, store in maps.complete:
        name = str(row["name"])
        png = png_dir / f"{name}.png"
        _slide_figure(store, genes, png, name)
        meta = ", ".join(f"{c}: {row.get(c, '')}" for c in maps.metadata_columns)
        caption = f"{name} ({row['slide']})" + (f"; {meta}" if meta else "")
        figures.append((caption, png.relative_to(html_path.parent).as_posix()))
    status_cols = ["name", "status", "tiles", "tiles_computed", "tiles_per_s", "wall_s", "error"]
    status_cols += maps.metadata_columns
    table = pd.DataFrame(maps.rows, columns=status_cols)
    counts = table["status"].value_counts().to_dict()
    wall = pd.to_numeric(table["wall_s"], errors="coerce")
    tiles = pd.to_numeric(table["tiles_computed"], errors="coerce")
    timing = (
        f"{len(table)} slides: "
        + ", ".join(f"{v} {html.escape(str(k))}" for k, v in sorted(counts.items()))
        + f". Slide wall time {np.nansum(wall):.1f} s in all (median {np.nanmedian(wall):.1f} s"
        f" per slide); {np.nansum(tiles):.0f} tiles computed."
        if len(table)
        else "no slides"
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Cohort report: {html.escape(folder.name)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:110em}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #bbb;"
        "padding:2px 6px;text-align:left}td.failed{background:#fde2e2}"
        "td.pending{background:#fff6d5}figure{margin:0.5em 0}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>Cohort report: {html.escape(str(folder.resolve()))}</h1>",
        f"<p>{timing}</p>",
        f"<p>Heatmaps (predicted expression, model scale): {html.escape(', '.join(genes))}</p>",
        "<h2>Slides</h2>",
        table.to_html(index=False, escape=True, na_rep="", classes="status"),
        "<h2>Maps</h2>",
    ]
    for caption, src in figures:
        parts.append(
            f"<figure><img src='{html.escape(src)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    text = "\n".join(parts)
    for status in ("failed", "pending"):  # colour the rows of unfinished slides
        text = text.replace(f"<td>{status}</td>", f"<td class='{status}'>{status}</td>")
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path
