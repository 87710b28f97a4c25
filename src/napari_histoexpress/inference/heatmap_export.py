"""Predicted gene heatmaps → a pyramidal, tiled OME-TIFF (one float32 channel per gene).

:func:`export_heatmap_ome_tiff` writes the genes of a dense-map store
(:class:`~.map_store.DenseMapStore`) as the file QuPath, napari (this plugin's reader),
Bio-Formats and tifffile open: BigTIFF, OME-XML with one ``Channel`` per gene named by its
symbol and ``PhysicalSizeX/Y`` in µm, tiled (``tile_px``, default 256), deflate-compressed,
with the lower resolutions as SubIFDs of each channel's full-resolution page (the OME-TIFF
pyramid layout), halving until the longer side is at most 64 px.

Choices made here (and why):

- **Values are the viewer's**: each level is the store's own gene map of that level
  (:meth:`~.map_store.DenseMapStore.gene_map`: ``features · w + b``, float32, the units of
  the store's normalisation, log1p counts per 10k for every model this package trains), so
  a pixel of the file equals the pixel napari shows in the heatmap layer.
- **Two pixel grids** (``grid``):

  * ``"map"`` (default): the map's own pixels and µm/px (``PhysicalSizeX = map_mpp``).
    Map pixel ``(i, j)`` covers slide µm ``[j, j + 1) · map_mpp`` × ``[i, i + 1) · map_mpp``
    from the slide's top-left corner, the same corner as the slide's own pixel grid: a
    viewer that places images by physical size from their corner (QuPath's pixel
    calibration, OME) lays it on the slide. The map may reach up to one map pixel past the
    slide's right and bottom edges (its size is rounded up). napari puts pixel *centres* at
    ``index · scale``, so beside a slide layer the heatmap needs
    ``translate = (map_mpp − slide_mpp) / 2`` µm, which this plugin's reader applies (the
    file records the slide's µm/px in its annotations).
  * ``"slide"``: level 0 at the slide's full-resolution size and µm/px
    (:attr:`~.map_store.DenseMapStore.slide_shape`, ``slide_mpp``): each slide pixel gets the
    value of the map pixel under its centre (nearest neighbour: block replication for an
    integer ratio), computed lazily per band of tiles. The file then overlays the slide
    pixel for pixel in any viewer, QuPath's *Interactive image alignment* included, with no
    transform. Level ``k`` has slide pixels of ``2^k`` level-0 pixels and takes its values
    from the finest map level whose pixels are not smaller than its own (nearest
    neighbour again), so coarse levels are the store's pooled means, never aliased samples
    of level 0.
- **Background** (``background``): pixels never predicted (tissue detection skipped them,
  or tiles still pending in a partial map) are NaN in the store and transparent in napari.
  ``"zero"`` (default) writes them as 0.0, which every TIFF reader handles (QuPath's
  histograms and display range do not cope well with NaN); ``"nan"`` keeps NaN, which
  napari (and this plugin's reader) draws transparent. With ``mask=True`` a last channel
  named ``predicted`` holds 1.0 on predicted pixels and 0.0 on background (at coarse levels:
  1.0 where any of the footprint was predicted), so a zero-background file still tells
  background from a predicted 0 (QuPath: threshold it, or hide it in *Brightness &
  contrast*).
- **Memory stays flat**: the file is written from an iterator of tiles; each band of tile
  rows of one gene is computed from the store (dask, chunk by chunk) just before its tiles
  are encoded, so at most one band of ``tile_px`` rows × the level's width (float32) is
  held, whatever the size of the map or slide (:data:`ExportPlan` describes the levels).
- **Atomic**: the file is written under a temporary name beside ``out`` and renamed when
  complete (:func:`~napari_histoexpress.io.export.write_atomic`): a failed or interrupted
  export leaves no partial file and never replaces a good one.
- **Provenance in the file**: an OME ``MapAnnotation`` records the store, the genes and
  their units, grid, background, the slide's path, shape and µm/px, the map's µm/px, and
  the viewer's contrast limits per gene (robust 1–99 % percentiles of the coarsest level,
  as the Genes widget sets them).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np

from ..errors import InputFileError, MissingResolutionError
from ..io.export import write_atomic
from ..io.heatmap_tiff import MASK_CHANNEL, OME_IMAGE_NAME
from .map_store import DenseMapStore

__all__ = [
    "BACKGROUNDS",
    "GRIDS",
    "MASK_CHANNEL",
    "OME_TIFF_SUFFIXES",
    "ExportPlan",
    "HeatmapExport",
    "export_heatmap_ome_tiff",
    "plan_heatmap_export",
    "resolve_genes",
]

Grid = Literal["map", "slide"]
Background = Literal["zero", "nan"]

GRIDS: tuple[str, ...] = ("map", "slide")
BACKGROUNDS: tuple[str, ...] = ("zero", "nan")
OME_TIFF_SUFFIXES: tuple[str, ...] = (".ome.tif", ".ome.tiff")
#: Levels halve until the longer side is at most this many pixels.
MIN_LEVEL_SIDE = 64
#: Robust percentiles of the coarsest level recorded as each gene's contrast limits.
CONTRAST_PERCENTILES = (1.0, 99.0)

#: Threads compressing tiles.
_ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))

Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class _Level:
    """One output level: its shape, µm/px and the store level its values come from; in the
    ``"slide"`` grid also the store pixel (row, column) each output row and column takes."""

    shape: tuple[int, int]
    mpp: float | None
    source_level: int
    rows: np.ndarray | None = None  # (h,) int64 indices into the source level, or None
    cols: np.ndarray | None = None  # (w,) int64


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """What :func:`export_heatmap_ome_tiff` writes (no pixels computed)."""

    genes: list[str]
    channels: list[str]  # the genes, plus MASK_CHANNEL with ``mask``
    grid: str
    background: str
    tile_px: int
    levels: list[_Level]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, Y, X)`` of level 0."""
        return (len(self.channels), *self.levels[0].shape)

    @property
    def mpp(self) -> float | None:
        return self.levels[0].mpp

    @property
    def n_tiles(self) -> int:
        """Tiles written, every channel and level together."""
        t = self.tile_px
        per_channel = sum(math.ceil(h / t) * math.ceil(w / t) for h, w in self.level_shapes)
        return per_channel * len(self.channels)

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        return [lv.shape for lv in self.levels]


@dataclasses.dataclass(frozen=True)
class HeatmapExport:
    """The result of :func:`export_heatmap_ome_tiff`."""

    path: Path
    genes: list[str]
    channels: list[str]
    shape: tuple[int, int, int]  # (C, Y, X) of level 0
    mpp: float | None
    level_shapes: list[tuple[int, int]]
    grid: str
    background: str
    tile_px: int
    contrast_limits: dict[str, tuple[float, float]]
    warnings: list[str]


def resolve_genes(store: DenseMapStore, requested: Sequence[str]) -> list[str]:
    """The store's symbols for ``requested`` genes, in order, duplicates dropped.

    A symbol of the store is taken as is; otherwise a unique case-insensitive match or a
    curated alias (``HER2`` → ERBB2, :mod:`~napari_histoexpress.models.gene_aliases`) is.
    Raises ``InputFileError`` (naming the store) listing every gene not found with its close
    matches among the store's genes.
    """
    from ..models.gene_aliases import normalise, search_genes

    genes = store.genes
    known = set(genes)
    out: list[str] = []
    missing: list[str] = []
    for name in requested:
        name = str(name).strip()
        if not name:
            continue
        if name in known:
            hit: str | None = name
        else:
            hits = search_genes(name, genes)
            exact = [m.gene for m in hits if m.kind == "exact"]
            alias = [
                m.gene
                for m in hits
                if m.kind == "alias" and normalise(m.alias or "") == normalise(name)
            ]
            candidates = exact or alias
            hit = candidates[0] if len(set(candidates)) == 1 else None
        if hit is None:
            missing.append(name)
        elif hit not in out:
            out.append(hit)
    if missing:
        parts = []
        for name in missing:
            close = [m.gene for m in search_genes(name, genes)][:3]
            close += [
                g for g in difflib.get_close_matches(name.upper(), genes, n=3) if g not in close
            ]
            parts.append(f"{name} (did you mean {', '.join(close[:3])}?)" if close else name)
        shown = ", ".join(genes[:12]) + (" …" if len(genes) > 12 else "")
        raise InputFileError(
            store.path,
            f"gene(s) not in this map: {'; '.join(parts)}; its {len(genes)} genes: {shown}",
        )
    if not out:
        raise InputFileError(store.path, "no genes given to export")
    return out


def _halvings(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """``shape`` and its ceil-halvings until the longer side is at most MIN_LEVEL_SIDE."""
    h, w = shape
    out = [(h, w)]
    while max(h, w) > MIN_LEVEL_SIDE and min(h, w) > 1:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def _nearest(n_out: int, out_mpp: float, src_mpp: float, n_src: int) -> np.ndarray:
    """Index of the source pixel under the centre of each of ``n_out`` output pixels."""
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * out_mpp
    return np.clip(np.floor(centres / src_mpp).astype(np.int64), 0, n_src - 1)


def plan_heatmap_export(
    store: DenseMapStore,
    genes: Sequence[str],
    *,
    grid: str = "map",
    background: str = "zero",
    tile_px: int = 256,
    mask: bool = False,
) -> ExportPlan:
    """The levels, channels and tiles :func:`export_heatmap_ome_tiff` writes (see the
    module docstring); raises before any pixel is computed for bad choices or genes."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    tile_px = int(tile_px)
    if tile_px < 16 or tile_px % 16:
        raise ValueError(f"tile_px must be a positive multiple of 16 (TIFF tiles), got {tile_px}")
    names = resolve_genes(store, genes)
    channels = [*names, MASK_CHANNEL] if mask else names
    map_mpp = store.map_mpp
    if grid == "map":
        levels = [
            _Level(shape, None if map_mpp is None else map_mpp * 2**k, k)
            for k, shape in enumerate(_halvings(store.map_shape))
        ]
        # the store's own levels: the same ceil-halving rule (checked, not assumed)
        assert len(levels) == store.n_levels
        return ExportPlan(names, channels, grid, background, tile_px, levels)

    slide_mpp, slide_shape = store.slide_mpp, store.slide_shape
    if map_mpp is None or slide_mpp is None:
        raise MissingResolutionError(
            store.path,
            "the map does not record the slide's and the map's µm/px, which the slide's "
            "pixel grid needs; export it on the map's own grid instead",
        )
    if slide_shape is None:
        raise InputFileError(
            store.path,
            "the map does not record the slide's size, which the slide's pixel grid needs; "
            "export it on the map's own grid instead",
        )
    src_shapes = _halvings(store.map_shape)
    src_mpps = [map_mpp * 2**m for m in range(len(src_shapes))]
    levels = []
    for k, (h, w) in enumerate(_halvings(slide_shape)):
        out_mpp = slide_mpp * 2**k
        # the finest store level whose pixels are not smaller than the output's (rounding
        # tolerance: a level of equal size counts as not smaller)
        m = max([0, *[i for i, s in enumerate(src_mpps) if s <= out_mpp * (1 + 1e-9)]])
        sh, sw = src_shapes[m]
        rows = _nearest(h, out_mpp, src_mpps[m], sh)
        cols = _nearest(w, out_mpp, src_mpps[m], sw)
        levels.append(_Level((h, w), out_mpp, m, rows, cols))
    return ExportPlan(names, channels, grid, background, tile_px, levels)


def _contrast_limits(store: DenseMapStore, genes: list[str]) -> dict[str, tuple[float, float]]:
    """Each gene's robust 1–99 % percentiles over the predicted pixels of the coarsest level
    (the Genes widget's contrast limits for a map with a built pyramid)."""
    values = np.asarray(store.gene_maps(genes, store.n_levels - 1), dtype=np.float32)
    out: dict[str, tuple[float, float]] = {}
    for j, g in enumerate(genes):
        v = values[..., j]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        lo, hi = (float(x) for x in np.percentile(v, CONTRAST_PERCENTILES))
        out[g] = (lo, hi if hi > lo else lo + 1e-6)
    return out


def _channel_source(store: DenseMapStore, channel: str, level: int) -> da.Array:
    """Lazy ``(h, w)`` float32 of one channel at a store level (NaN on background)."""
    if channel == MASK_CHANNEL:
        return (store.predicted_fraction(level) > 0).astype(np.float32)
    return store.gene_map(channel, level=level)


def _bands(
    store: DenseMapStore, plan: ExportPlan, channel: str, lv: _Level
) -> Iterator[np.ndarray]:
    """One band of ``tile_px`` output rows × the level's width after another (float32)."""
    t = plan.tile_px
    h, _w = lv.shape
    src = _channel_source(store, channel, lv.source_level)
    for y0 in range(0, h, t):
        y1 = min(h, y0 + t)
        if lv.rows is None or lv.cols is None:
            band = np.array(src[y0:y1], dtype=np.float32)
        else:
            rows = lv.rows[y0:y1]
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            window = np.asarray(src[r0:r1], dtype=np.float32)
            band = window[np.ix_(rows - r0, lv.cols)]
        if plan.background == "zero" and channel != MASK_CHANNEL:
            band[np.isnan(band)] = 0.0  # in place: the band is this function's own copy
        yield band


def _tiles(
    store: DenseMapStore,
    plan: ExportPlan,
    level: int,
    progress: Progress | None,
    counter: list[int],
) -> Iterator[np.ndarray]:
    """Every tile of one level, channel by channel, row-major (tifffile's order for a
    multi-page tiled series); the last tiles of a row or column are smaller (tifffile pads)."""
    t = plan.tile_px
    lv = plan.levels[level]
    total = plan.n_tiles
    for channel in plan.channels:
        for band in _bands(store, plan, channel, lv):
            for x0 in range(0, lv.shape[1], t):
                counter[0] += 1  # counted when handed over (the writer never resumes
                if progress is not None:  # the generator after a level's last tile)
                    progress(counter[0], total)
                yield band[:, x0 : x0 + t]


def _annotation(
    store: DenseMapStore, plan: ExportPlan, limits: dict[str, tuple[float, float]]
) -> dict[str, str]:
    norm = store.normalisation
    units = "predicted expression"
    if norm is not None:
        units = (
            f"{norm.transform}(counts per {norm.target_sum:g})"
            if norm.transform
            else f"counts per {norm.target_sum:g} (transform not recorded)"
        )
    ann = {
        "histoexpress": "heatmap",
        "map_store": str(store.path),
        "genes": " ".join(plan.genes),
        "channels": " ".join(plan.channels),
        "units": units,
        "grid": plan.grid,
        "background": plan.background,
        "map_mpp": "" if store.map_mpp is None else repr(store.map_mpp),
        "slide_mpp": "" if store.slide_mpp is None else repr(store.slide_mpp),
        "slide_path": store.slide_path or "",
        "slide_shape": "" if store.slide_shape is None else " ".join(map(str, store.slide_shape)),
        "map_shape": " ".join(map(str, store.map_shape)),
        "store_status": store.status,
    }
    for g, (lo, hi) in limits.items():
        ann[f"contrast_limits.{g}"] = f"{lo!r} {hi!r}"
    return ann


def _write(
    tmp: Path,
    store: DenseMapStore,
    plan: ExportPlan,
    limits: dict[str, tuple[float, float]],
    progress: Progress | None,
) -> None:
    import tifffile

    n_sub = len(plan.levels) - 1
    counter = [0]
    mpp = plan.mpp
    lv0 = plan.levels[0]
    metadata: dict[str, Any] = {
        "axes": "CYX",
        "Name": OME_IMAGE_NAME,
        "Channel": {"Name": list(plan.channels)},
        "MapAnnotation": _annotation(store, plan, limits),
    }
    if mpp is not None:
        metadata.update(
            PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm"
        )
    common: dict[str, Any] = {
        "dtype": np.float32,
        "tile": (plan.tile_px, plan.tile_px),
        "photometric": "minisblack",
        "compression": "zlib",
        "software": "napari-histoexpress",
        # tiles are encoded by a few threads, a bounded number at a time (tifffile's default
        # buffer would queue up to 128 MB of tiles)
        "maxworkers": _ENCODE_THREADS,
        "buffersize": _ENCODE_THREADS * 4 * plan.tile_px**2 * 4,
    }

    def resolution(level_mpp: float | None) -> dict[str, Any]:
        if level_mpp is None:
            return {}
        return {"resolution": (1e4 / level_mpp, 1e4 / level_mpp), "resolutionunit": "CENTIMETER"}

    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        tif.write(
            _tiles(store, plan, 0, progress, counter),
            shape=(len(plan.channels), *lv0.shape),
            subifds=n_sub,
            metadata=metadata,
            **resolution(lv0.mpp),
            **common,
        )
        for k in range(1, len(plan.levels)):
            lv = plan.levels[k]
            tif.write(
                _tiles(store, plan, k, progress, counter),
                shape=(len(plan.channels), *lv.shape),
                subfiletype=1,
                metadata=None,
                **resolution(lv.mpp),
                **common,
            )


def export_heatmap_ome_tiff(
    store: DenseMapStore | str | Path,
    genes: Sequence[str],
    out: str | Path,
    *,
    grid: Grid | str = "map",
    background: Background | str = "zero",
    tile_px: int = 256,
    mask: bool = False,
    progress: Progress | None = None,
) -> HeatmapExport:
    """Write ``genes`` of a dense-map store as a pyramidal, tiled OME-TIFF at ``out``.

    Args:
        store: the map (or its path).
        genes: symbols of the map (case-insensitive; curated aliases such as HER2 work),
            one channel each, in this order.
        out: the file, ending in ``.ome.tif`` or ``.ome.tiff``; its folder must exist. An
            existing file is replaced only once the new one is complete.
        grid: ``"map"`` (the map's pixels and µm/px) or ``"slide"`` (the slide's
            full-resolution pixel grid, pixel for pixel); see the module docstring.
        background: ``"zero"`` or ``"nan"`` for pixels never predicted.
        tile_px: the TIFF tile side (a multiple of 16).
        mask: add a last channel :data:`MASK_CHANNEL` (1.0 predicted, 0.0 background).
        progress: called with ``(tiles written, tiles in all)`` after each tile.

    Returns a :class:`HeatmapExport`. Raises ``InputFileError`` for a wrong suffix, a
    missing output folder or genes the map lacks (with close matches), before any pixel is
    computed.
    """
    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    out = Path(out)
    if not out.name.lower().endswith(OME_TIFF_SUFFIXES):
        raise InputFileError(out, "an OME-TIFF heatmap file name ends in .ome.tif or .ome.tiff")
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputFileError(out, f"output folder {folder} {what}")
    plan = plan_heatmap_export(
        store, genes, grid=grid, background=background, tile_px=tile_px, mask=mask
    )
    notes: list[str] = []
    if store.status != "complete":
        notes.append(
            f"{store.path}: the map is not complete (a prediction still running or "
            "interrupted); tiles not yet predicted are written as background"
        )
    if plan.mpp is None:
        notes.append(
            f"{store.path}: the map's µm/px is unknown; the OME-TIFF has no physical pixel size"
        )
    limits = _contrast_limits(store, plan.genes)
    write_atomic(out, lambda tmp: _write(tmp, store, plan, limits, progress))
    return HeatmapExport(
        path=out,
        genes=plan.genes,
        channels=plan.channels,
        shape=plan.shape,
        mpp=plan.mpp,
        level_shapes=plan.level_shapes,
        grid=plan.grid,
        background=plan.background,
        tile_px=plan.tile_px,
        contrast_limits=limits,
        warnings=notes,
    )
