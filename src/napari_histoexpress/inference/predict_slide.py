"""Whole-slide dense inference, tile by tile, into a resumable :class:`DenseMapStore`.

:func:`predict_slide` runs a dense model (a :class:`~..models.base.DenseModel`, e.g. PixNet)
over a whole slide at the model's working resolution and streams the *features* (not the gene
maps: see :mod:`.map_store`) to a zarr store. Everything it needs from the model comes from
the one model interface: ``input_spec()`` (stride, window alignment, receptive field, RGB
normalisation), ``features(x)`` and ``gene_head()`` (``W (C, G)``, ``b (G,)``).

It is five named steps, each a function a cohort runner can call on its own:

1. :func:`plan_prediction` — geometry: working size, feature-map size, tiles, halo, genes,
   head (:class:`PredictionPlan`); no I/O besides the slide's header;
2. :func:`open_map_store` — create the store, or reopen a compatible one to resume;
3. :func:`mark_background` — tissue detection on a thumbnail, background tiles flagged;
4. :func:`run_tiles` — the tiles still to do, in batches with one batch read ahead,
   progress and cancellation (:class:`TileRun`);
5. :func:`finish_prediction` — pyramid and ``'complete'`` status once every tile is done,
   and the :class:`PredictionReport`.

Choices made here (and why):

- **Bounded memory.** Tiles are read one batch at a time through
  :func:`napari_histoexpress.io.slides.read_region_at_mpp` (which decodes only the touched
  file tiles) and each tile's core is written to disk at once; neither the slide nor the map
  is ever materialised. One batch is read ahead in a background thread while the model runs
  (I/O overlaps compute; at most two batches are in memory).
- **Exact tile geometry.** Each window's top-left corner is placed at an exact multiple of
  the working pixel size in level-0 coordinates, so every working pixel has the same source
  footprint whichever tile reads it, and windows sit on the model's stride grid
  (:mod:`.tiling`): with a halo of at least half the receptive field the tiled map equals the
  whole-image map (tested).
- **Halo default**: half the ``receptive_field_px`` of the model's input spec when it
  declares one, else
  :data:`DEFAULT_HALO_PX` (rounded up to the alignment). A ResNet U-Net's theoretical receptive
  field is several hundred pixels but its effective one is far smaller; 64 px of context on
  each side of a 512 px core costs 1.56x the pixels of the core alone.
- **Background tiles are skipped** (:mod:`.tissue` on the coarsest level): never read, never
  computed; their chunks keep the fill value, ``coverage`` marks them 2 and the store reads
  them as missing (NaN, see :mod:`.map_store`). Progress counts only the tiles computed
  (a slide that is 80 % glass does not start at 80 %); the report gives the skipped count.
- **Resumable.** ``done`` is persisted after each tile's features; a re-run with
  ``resume=True`` recomputes only the missing tiles (after checking the store was made with
  the same geometry and head). ``should_stop`` is polled before each batch: a cancelled run
  leaves a valid store with ``status='partial'``. The store is ``'complete'`` only once every
  tile is done and the pyramid is built.
- **Precision.** ``torch.inference_mode``; ``precision="auto"`` autocasts the forward pass
  to bfloat16 on CUDA (float16 where bf16 is not supported) and runs float32 on CPU/MPS
  (:func:`napari_histoexpress.devices.autocast_dtype`; ``"fp32"``, ``"bf16"``, ``"fp16"``
  force one). Features leave the model as float32 and are stored float16 by default
  (``dtype``); the precision used is recorded in the store's provenance. On CUDA, tiles are
  copied from pinned host memory without blocking.
- **Stain normalisation** (when the model's ``input_spec().stain`` — or the ``stain`` given
  to :func:`plan_prediction`, e.g. a loaded run's ``config.json`` ``input.stain`` —
  normalises): the slide's own stains are fixed **once**
  (:meth:`~napari_histoexpress.stain.StainNormalizer.with_source`, :func:`slide_stain`) from
  up to :data:`STAIN_SOURCE_WINDOWS` windows of :data:`STAIN_SOURCE_WINDOW_PX` working px
  read at the working µm/px: the windows of a fixed grid over the slide (independent of the
  tiling) with the largest tissue fraction (Macenko's tissue criterion,
  :func:`napari_histoexpress.stain.tissue_mask`, on the slide's thumbnail; ties in row-major
  order), side by side. Each uint8 window is then normalised
  (:meth:`~napari_histoexpress.stain.StainNormalizer.apply_numpy`) in the reader thread
  before the model: a fixed function of each pixel's colour, so tiles stay seamless and a
  tiled map equals the whole-image one. The normaliser, source stains included, is recorded
  in the store's provenance (``stain_normalizer``) when the store is created, and a resumed
  run reuses it; the reference (``stain``) is part of the resume check. A slide with too
  little tissue for one estimate falls back to per-window estimates (a warning).
  Augmentation is never applied at prediction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import dask.array as da
import numpy as np
import torch

from .. import devices
from ..devices import resolve_device
from ..errors import InputFileError, MissingResolutionError, StoreMismatchError
from ..inference.map_store import DenseMapStore
from ..inference.tiling import Tile, grid_shape, plan_tiles
from ..io.slides import Slide, open_slide, read_region, read_region_at_mpp
from ..io.tissue import slide_thumbnail_for_tiles, slide_tissue, tissue_in_box
from ..models.base import DenseModel, HistoModel, InputSpec, check_gene_head
from ..stain import StainConfig, StainNormalizer
from ..stain import tissue_mask as stain_tissue_mask

__all__ = [
    "DEFAULT_HALO_PX",
    "PredictionPlan",
    "PredictionReport",
    "TileRun",
    "default_halo_px",
    "finish_prediction",
    "mark_background",
    "mark_background_boxes",
    "open_map_store",
    "plan_prediction",
    "predict_slide",
    "resolve_device",
    "run_tiles",
    "slide_stain",
]

log = logging.getLogger(__name__)

#: Halo (working px per side) when the model does not declare a receptive field.
DEFAULT_HALO_PX = 64
#: Stain normalisation: the slide's source stains are estimated from at most this many
#: windows of this side (working px), the ones of most tissue (see the module docstring).
STAIN_SOURCE_WINDOWS = 8
STAIN_SOURCE_WINDOW_PX = 256


class TiledPlan(Protocol):
    """What :func:`finish_prediction` needs of a plan: its store chunks (``tiles``, the
    tiles of a :class:`PredictionPlan` or the chunks of a lattice plan)."""

    @property
    def tiles(self) -> Sequence[Any]: ...


class StainPlan(Protocol):
    """What :func:`slide_stain` needs of a plan (a :class:`PredictionPlan` or a lattice plan):
    the stain settings and the working-resolution geometry."""

    @property
    def stain(self) -> dict[str, Any] | None: ...
    @property
    def working_shape(self) -> tuple[int, int]: ...
    @property
    def factor(self) -> float: ...
    @property
    def working_mpp(self) -> float | None: ...


@dataclass(frozen=True)
class PredictionReport:
    """What one :func:`predict_slide` call did."""

    n_tiles: int
    n_skipped_background: int
    n_computed: int
    n_already_done: int
    seconds: float
    tiles_per_s: float
    out_path: Path
    status: str

    def summary(self) -> str:
        return (
            f"{self.n_computed} tiles computed in {self.seconds:.1f} s "
            f"({self.tiles_per_s:.2f} tiles/s); {self.n_skipped_background} background, "
            f"{self.n_already_done} already done, {self.n_tiles} in all; "
            f"store {self.status}: {self.out_path}"
        )


@dataclass(frozen=True)
class PredictionPlan:
    """The geometry of one slide's dense prediction (:func:`plan_prediction`).

    Attributes:
        spec: the model's input spec.
        stride: input px per feature px; align: the grid windows sit on (a multiple of
            ``stride``); halo_px: context per side; tile_px: the core side (working px).
        factor: level-0 px per working px (1.0 when the model runs at the slide's level 0).
        working_shape: ``(H, W)`` of the slide at the working resolution.
        working_mpp: µm/px of the working resolution (``None`` when unknown).
        model_mpp: the requested working µm/px (``None``: the slide's level 0).
        map_shape: ``(h, w)`` of the feature map; grid: ``(rows, cols)`` of the tile grid.
        tiles: every tile, row-major.
        feature_dim: ``C``; genes: names of the head's outputs; head: ``W (C, G)``, ``b (G,)``
            as float32 (what the store keeps).
        stain: the stain settings (:meth:`~napari_histoexpress.stain.StainConfig.to_dict`)
            whose normalisation the tiles get, ``None`` when they get none.
    """

    spec: InputSpec
    stride: int
    align: int
    halo_px: int
    tile_px: int
    factor: float
    working_shape: tuple[int, int]
    working_mpp: float | None
    model_mpp: float | None
    map_shape: tuple[int, int]
    grid: tuple[int, int]
    tiles: list[Tile]
    feature_dim: int
    genes: list[str]
    head: tuple[np.ndarray, np.ndarray]
    stain: dict[str, Any] | None = None

    @property
    def stain_reference(self) -> dict[str, Any] | None:
        """The normaliser's reference (:meth:`~napari_histoexpress.stain.StainNormalizer.to_dict`
        without a source; what the resume check compares), ``None`` without normalisation."""
        if self.stain is None:
            return None
        return StainConfig.from_dict(self.stain).normalizer().to_dict()

    @property
    def map_mpp(self) -> float | None:
        """µm per feature-map pixel (``None`` when the working µm/px is unknown)."""
        return None if self.working_mpp is None else self.working_mpp * self.stride


@dataclass(frozen=True)
class TileRun:
    """What :func:`run_tiles` did: tiles computed, whether it was stopped, compute time."""

    n_computed: int
    stopped: bool
    seconds: float


def default_halo_px(spec: InputSpec, align: int) -> int:
    """Half the spec's ``receptive_field_px`` (or :data:`DEFAULT_HALO_PX`), rounded up to a
    multiple of ``align``."""
    rf = spec.receptive_field_px
    half = math.ceil(float(rf) / 2) if rf else DEFAULT_HALO_PX
    return int(math.ceil(half / align) * align)


def predict_slide(
    model: DenseModel,
    slide: str | os.PathLike[str] | Slide | np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    model_mpp: float | None,
    slide_mpp: float | None = None,
    tile_px: int = 512,
    halo_px: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 4,
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    skip_background: bool = True,
    genes: Sequence[str] | None = None,
    dtype: str = "float16",
    precision: str = "auto",
    build_pyramid: bool = True,
    provenance: Mapping[str, Any] | None = None,
    stain: Mapping[str, Any] | None = None,
) -> PredictionReport:
    """Predict the dense feature map of a whole slide into a zarr store at ``out_path``.

    Args:
        model: a :class:`~napari_histoexpress.models.base.DenseModel` (anything else raises
            ``TypeError``).
        slide: a path (opened with :func:`~napari_histoexpress.io.slides.open_slide`), an
            open :class:`Slide`, or an ``(H, W, 3)`` uint8 array (an in-memory slide).
        out_path: the store's directory.
        model_mpp: working resolution of the model (µm/px); ``None`` runs at the slide's own
            level-0 resolution.
        slide_mpp: overrides the slide's µm/px (needed when the file does not say).
        tile_px: tile core side in working pixels; halo_px: context per side (default
            :func:`default_halo_px`). Both multiples of the model's alignment.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'mps'`` or a ``torch.device``.
        batch_size: tiles per forward pass.
        progress: ``callable(done, total)`` called once before the first tile (``done =
            0``) and after each computed tile; ``total`` counts only the tiles this call
            computes (tissue tiles not done yet): skipped background and tiles kept from a
            resumed store are not in it (the report says how many there were). Or a
            tqdm-like object with ``update``/``total``, or ``True`` for a tqdm bar.
        should_stop: polled before each batch; returning True stops cleanly (partial store).
        resume: keep the finished tiles of an existing compatible store; ``False`` replaces
            any store at ``out_path``.
        skip_background: detect tissue and skip tiles without it.
        genes: names of the head outputs (default ``model.gene_names``).
        dtype: stored feature dtype (``'float16'`` or ``'float32'``).
        precision: ``'auto'`` (bf16 autocast on CUDA, float32 elsewhere), ``'fp32'``,
            ``'bf16'`` or ``'fp16'`` (see :func:`~napari_histoexpress.devices.autocast_dtype`).
        build_pyramid: build the pooled levels once all tiles are done.
        provenance: extra provenance (e.g. ``run_dir``, checkpoint) stored in the attrs.
        stain: the stain settings whose normalisation the tiles get (a
            :meth:`~napari_histoexpress.stain.StainConfig.to_dict`, e.g. a run's recorded
            ``input.stain``); ``None`` (default): the model's ``input_spec().stain``.
    """
    t_start = time.perf_counter()
    out_path = Path(out_path)
    _require_dense(model)
    slide_obj, own_slide = _as_slide(slide, slide_mpp)
    try:
        torch_device = resolve_device(device)
        plan = plan_prediction(
            model,
            slide_obj,
            model_mpp=model_mpp,
            tile_px=tile_px,
            halo_px=halo_px,
            genes=genes,
            stain=stain,
        )
        store, resumed = open_map_store(
            model,
            plan,
            slide_obj,
            out_path,
            resume=resume,
            dtype=dtype,
            device=torch_device,
            precision=precision,
            provenance=provenance,
        )
        n_already = int(store.done_mask.sum())
        if skip_background:
            mark_background(store, slide_obj, plan)
        run = run_tiles(
            model,
            slide_obj,
            store,
            plan,
            device=torch_device,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
            should_stop=should_stop,
        )
        report = finish_prediction(
            store,
            plan,
            run,
            n_already_done=n_already,
            build_pyramid=build_pyramid,
            t_start=t_start,
        )
        if resumed:
            log.debug("resumed %s with %d tiles already done", out_path, n_already)
        return report
    finally:
        if own_slide:
            slide_obj.close()


# ------------------------------------------------------------------------------------ steps


def plan_prediction(
    model: DenseModel,
    slide: Slide,
    *,
    model_mpp: float | None,
    tile_px: int,
    halo_px: int | None = None,
    genes: Sequence[str] | None = None,
    stain: Mapping[str, Any] | None = None,
) -> PredictionPlan:
    """Step 1: the geometry of predicting ``slide`` with ``model`` (no pixels are read).

    The window grid is the spec's ``input_multiple`` (made a multiple of the stride), the
    halo :func:`default_halo_px` unless given, the genes ``genes`` or ``model.gene_names``,
    the stain settings ``stain`` or the spec's (kept only when they normalise; a
    ``SettingError`` when they normalise without a fitted reference).
    Raises :class:`~napari_histoexpress.errors.MissingResolutionError` when the model has a
    working µm/px and the slide's is unknown, ``SettingError`` for a ``tile_px`` off the
    grid, ``ValueError`` when the head does not fit the features and genes.
    """
    _require_dense(model)
    spec = model.input_spec()
    stride = int(model.feature_stride)
    if stride < 1 or spec.stride != stride:
        raise ValueError(
            f"{type(model).__name__}: feature_stride {stride} disagrees with its input "
            f"spec's stride {spec.stride}"
        )
    feature_dim = int(model.feature_dim)
    align = math.lcm(max(1, int(spec.input_multiple)), stride)
    halo = default_halo_px(spec, align) if halo_px is None else int(halo_px)

    f, (h_work, w_work), work_mpp = _working_geometry(slide, model_mpp)
    map_shape = (math.ceil(h_work / stride), math.ceil(w_work / stride))
    tiles = plan_tiles(map_shape, tile_px, halo, stride, align=align)
    grid = grid_shape(map_shape, tile_px, stride)

    gene_names = [str(g) for g in (genes or model.gene_names)]
    W, b = model.gene_head()
    W, b = check_gene_head(W, b, feature_dim, len(gene_names), who=type(model).__name__)
    head = (np.ascontiguousarray(W, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
    stain_cfg = StainConfig.from_dict(spec.stain if stain is None else stain)
    stain_cfg.normalizer()  # a normalisation without its reference fails here, before any I/O
    return PredictionPlan(
        spec=spec,
        stride=stride,
        align=align,
        halo_px=halo,
        tile_px=int(tile_px),
        factor=f,
        working_shape=(h_work, w_work),
        working_mpp=work_mpp,
        model_mpp=None if model_mpp is None else float(model_mpp),
        map_shape=map_shape,
        grid=grid,
        tiles=tiles,
        feature_dim=feature_dim,
        genes=gene_names,
        head=head,
        stain=None if stain_cfg.normalize == "none" else stain_cfg.to_dict(),
    )


def open_map_store(
    model: DenseModel,
    plan: PredictionPlan,
    slide: Slide,
    out_path: str | os.PathLike[str],
    *,
    resume: bool = True,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
    precision: str = "auto",
    provenance: Mapping[str, Any] | None = None,
) -> tuple[DenseMapStore, bool]:
    """Step 2: create the store at ``out_path``, or reopen it to resume: ``(store, resumed)``.

    With ``resume`` an existing store is kept only when it was made with the same geometry,
    genes and head (else :class:`~napari_histoexpress.errors.StoreMismatchError`; an
    unreadable one is an ``InputFileError`` whose setting is ``'restart'``); without it any
    store there is replaced. ``precision`` is checked first (``ValueError``) and recorded,
    with the device, in the provenance. When the plan normalises stains, a new store's
    provenance records the slide's normaliser (:func:`slide_stain`, read from the slide
    here) under ``stain_normalizer``; a resumed store keeps the one it has.
    """
    out_path = Path(out_path)
    device = torch.device(device)
    autocast_name = str(devices.autocast_dtype(device, precision) or "float32")
    slide_info = {"path": str(slide.path), "shape": list(slide.shape), "mpp": slide.mpp}
    expected = _resume_fields(plan, slide)

    def create_kwargs() -> dict[str, Any]:
        attrs = {k: v for k, v in expected.items() if k not in ("slide_shape",)}
        prov = {**_provenance(model, provenance), "device": str(device), "autocast": autocast_name}
        if plan.stain is not None:
            prov["input"] = {**prov["input"], "stain": plan.stain}
            prov["stain_normalizer"] = slide_stain(slide, plan).to_dict()
        attrs.update(
            working_shape=list(plan.working_shape),
            input_multiple=plan.align,
            slide=slide_info,
            provenance=prov,
        )
        W, b = plan.head
        return dict(
            map_shape=plan.map_shape,
            feature_dim=plan.feature_dim,
            genes=plan.genes,
            head_W=W,
            head_b=b,
            map_mpp=plan.map_mpp,
            attrs=attrs,
            chunk=plan.tile_px // plan.stride,
            dtype=dtype,
        )

    return _open_or_create(out_path, resume, expected, plan.head, create_kwargs)


def mark_background(store: DenseMapStore, slide: Slide, plan: PredictionPlan) -> int:
    """Step 3: detect tissue on a thumbnail and flag the pending tiles without any as
    background (never read, never computed). Records the tissue mask in the store; does
    nothing when every tile is done. Returns the number of background tiles in the store."""
    return mark_background_boxes(
        store,
        slide,
        plan.tiles,
        level0_per_map_px=plan.factor * plan.stride,
        tile_level0_px=plan.tile_px * plan.factor,
    )


def mark_background_boxes(
    store: DenseMapStore,
    slide: Slide,
    tiles: Sequence[Any],
    *,
    level0_per_map_px: float,
    tile_level0_px: float,
) -> int:
    """:func:`mark_background` for any store chunks: ``tiles`` have ``row, col`` (the store's
    tile grid) and ``map_y0, map_x0, map_y1, map_x1`` (map px), a map pixel spans
    ``level0_per_map_px`` level-0 px and a chunk about ``tile_level0_px`` (which sets the
    thumbnail's resolution). Returns the number of background chunks in the store."""
    done = store.done_mask
    if not done.all():
        mask, downsample = slide_tissue(slide, tile_level0_px)
        store.set_tissue(mask, downsample=downsample)
        scale = (level0_per_map_px / downsample,) * 2  # map px -> thumbnail px
        background = np.zeros(store.tile_grid, dtype=bool)
        for t in tiles:
            if not done[t.row, t.col]:
                box = (t.map_y0, t.map_x0, t.map_y1, t.map_x1)
                background[t.row, t.col] = not tissue_in_box(mask, scale, box)
        if background.any():
            store.mark_background(background)
    return int((store.coverage == 2).sum())


def run_tiles(
    model: DenseModel,
    slide: Slide,
    store: DenseMapStore,
    plan: PredictionPlan,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    precision: str = "auto",
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TileRun:
    """Step 4: compute every tile the store does not have yet and write its core.

    Batches of ``batch_size`` tiles; the next batch is read in a background thread while
    the model runs. ``progress`` is told ``(0, total)`` first and after each tile (see
    :func:`predict_slide`); ``should_stop`` is polled before each batch. Each tile is marked
    done right after its features are written, so a stop or a crash leaves a resumable store.
    When the plan normalises stains, each window is normalised (uint8, in the reader thread)
    with the normaliser of the store's provenance (see the module docstring).
    """
    device = torch.device(device)
    done = store.done_mask
    todo = [t for t in plan.tiles if not done[t.row, t.col]]  # tissue tiles still to compute
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.to(device)
    normalise = _normaliser(plan.spec, device)
    autocast = devices.autocast(device, precision)
    stain = _store_stain(store, slide, plan) if todo else None

    def load(batch: list[Tile]) -> np.ndarray:
        windows = [_read_window(slide, plan.factor, plan.working_mpp, t) for t in batch]
        if stain is not None:
            windows = [stain.apply_numpy(w) for w in windows]
        return np.stack(windows)

    bar = _Progress(progress, len(todo))
    bar(0, 0)
    n_computed = 0
    stopped = False
    t_compute = time.perf_counter()
    batches = list(_batches(todo, max(1, int(batch_size))))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoexpress-read") as pool:
        pending: Future[np.ndarray] | None = pool.submit(load, batches[0]) if batches else None
        try:
            for i, batch in enumerate(batches):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                assert pending is not None
                pixels = pending.result()
                pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
                feats = _forward(
                    model, pixels, normalise, device, autocast, plan.stride, plan.feature_dim
                )
                for t, tile_feats in zip(batch, feats, strict=True):
                    mh, mw = t.map_shape
                    core = tile_feats[:, t.crop : t.crop + mh, t.crop : t.crop + mw]
                    store.write_tile(t, np.moveaxis(core, 0, -1))
                    store.mark_done(t, computed=True)
                    n_computed += 1
                    bar(n_computed, 1)
        finally:
            if pending is not None:
                pending.cancel()
            bar.close()
    return TileRun(n_computed=n_computed, stopped=stopped, seconds=time.perf_counter() - t_compute)


def finish_prediction(
    store: DenseMapStore,
    plan: TiledPlan,
    run: TileRun,
    *,
    n_already_done: int,
    build_pyramid: bool = True,
    t_start: float,
) -> PredictionReport:
    """Step 5: when every tile is done and the run was not stopped, build the pyramid (if
    asked) and mark the store ``'complete'``; the report of the call (logged), its
    ``seconds`` counted from ``t_start`` (a :func:`time.perf_counter` value) to the end."""
    complete = not run.stopped and bool(store.done_mask.all())
    if complete:
        if build_pyramid:
            store.build_pyramid()
        store.set_status("complete")
    seconds = time.perf_counter() - t_start
    report = PredictionReport(
        n_tiles=len(plan.tiles),
        n_skipped_background=int((store.coverage == 2).sum()),
        n_computed=run.n_computed,
        n_already_done=n_already_done,
        seconds=seconds,
        tiles_per_s=run.n_computed / run.seconds if run.seconds > 0 else 0.0,
        out_path=store.path,
        status=store.status,
    )
    log.info(report.summary())
    return report


# ------------------------------------------------------------------------------------ internals


def _require_dense(model: Any) -> None:
    if not isinstance(model, DenseModel):
        raise TypeError(
            f"{type(model).__name__} is not a DenseModel (napari_histoexpress.models.base): "
            "whole-slide prediction needs a model with a dense feature map"
        )


def _as_slide(
    slide: str | os.PathLike[str] | Slide | np.ndarray, slide_mpp: float | None
) -> tuple[Slide, bool]:
    if isinstance(slide, Slide):
        if slide_mpp is not None:
            slide = dataclasses.replace(slide, mpp=float(slide_mpp), mpp_source="user")
        return slide, False
    if isinstance(slide, np.ndarray):
        if slide.ndim != 3 or slide.shape[2] != 3 or slide.dtype != np.uint8:
            raise ValueError(f"an in-memory slide must be (H, W, 3) uint8, got {slide.shape}")
        level0 = da.from_array(slide, chunks=(2048, 2048, 3))
        mpp = None if slide_mpp is None else float(slide_mpp)
        source = "user" if mpp else "unknown"
        return Slide(path=Path("<array>"), levels=[level0], mpp=mpp, mpp_source=source), False
    return open_slide(slide, mpp=slide_mpp), True


def _working_geometry(
    slide: Slide, model_mpp: float | None
) -> tuple[float, tuple[int, int], float | None]:
    """``(f, (H_work, W_work), working mpp)``: f = level-0 px per working px."""
    h0, w0 = slide.shape
    if model_mpp is None:
        return 1.0, (h0, w0), slide.mpp
    if slide.mpp is None:
        raise MissingResolutionError(
            slide.path,
            f"the slide's µm/px is unknown (its file does not record it) and the model runs "
            f"at {model_mpp:g} µm/px: set the slide's µm/px (e.g. 0.5 for a 20x scan)",
        )
    f = float(model_mpp) / float(slide.mpp)
    return f, (max(1, round(h0 / f)), max(1, round(w0 / f))), float(model_mpp)


def _read_window(slide: Slide, f: float, work_mpp: float | None, tile: Tile) -> np.ndarray:
    """The tile's input window, ``(n, n, 3)`` uint8, white outside the slide."""
    return _read_working(slide, f, work_mpp, tile.in_x0, tile.in_y0, tile.in_size)


def _read_working(
    slide: Slide, f: float, work_mpp: float | None, x0: int, y0: int, n: int
) -> np.ndarray:
    """The ``(n, n, 3)`` uint8 window at working px ``(x0, y0)``, white outside the slide."""
    if f == 1.0:
        return read_region(slide, 0, x0, y0, n, n)
    # top-left corner exactly at x0 * f level-0 px: the same footprint for every tile
    centre = ((x0 + n / 2) * f, (y0 + n / 2) * f)
    assert work_mpp is not None
    return read_region_at_mpp(slide, centre, (n, n), work_mpp)


def slide_stain(slide: Slide, plan: StainPlan) -> StainNormalizer:
    """The plan's stain normaliser with ``slide``'s own stains fixed (identity when the plan
    does not normalise), from its windows of most tissue (see the module docstring); the
    normaliser without a source (per-window estimates, with a warning) when they hold too
    little tissue for one estimate."""
    from ..errors import SettingError

    if plan.stain is None:
        return StainNormalizer()
    base = StainConfig.from_dict(plan.stain).normalizer()
    h, w = plan.working_shape
    n = max(1, min(STAIN_SOURCE_WINDOW_PX, h, w))
    thumb, downsample = slide_thumbnail_for_tiles(slide, 0.0)
    mask = stain_tissue_mask(thumb)
    scale = plan.factor / downsample  # working px -> thumbnail px
    scored: list[tuple[float, int, int]] = []
    for y0 in range(0, h - n + 1, n):
        for x0 in range(0, w - n + 1, n):
            ty0, tx0 = int(y0 * scale), int(x0 * scale)
            ty1 = max(ty0 + 1, math.ceil((y0 + n) * scale))
            tx1 = max(tx0 + 1, math.ceil((x0 + n) * scale))
            box = mask[ty0:ty1, tx0:tx1]
            fraction = float(box.mean()) if box.size else 0.0
            if fraction > 0:
                scored.append((-fraction, y0, x0))
    chosen = sorted(scored)[:STAIN_SOURCE_WINDOWS]  # most tissue first, ties row-major
    if chosen:
        f, mpp = plan.factor, plan.working_mpp
        windows = [_read_working(slide, f, mpp, x0, y0, n) for _, y0, x0 in chosen]
        try:
            return base.with_source(np.concatenate(windows, axis=1))
        except SettingError:
            pass
    log.warning(
        "%s: too little stained tissue for one stain estimate of the slide; each tile's "
        "stains are estimated on their own (tile borders may show)",
        slide.path,
    )
    return base


def _store_stain(store: DenseMapStore, slide: Slide, plan: StainPlan) -> StainNormalizer | None:
    """The tiles' normaliser: the one the store's provenance records (``None`` when the plan
    does not normalise); estimated afresh (:func:`slide_stain`) for a store without one."""
    if plan.stain is None:
        return None
    recorded = store.provenance.get("stain_normalizer")
    if recorded is None:
        return slide_stain(slide, plan)
    return StainNormalizer.from_dict(recorded)


def _provenance(model: HistoModel, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        version = importlib.metadata.version("napari-histoexpress")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    prov: dict[str, Any] = {
        "model_name": type(model).__name__,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_kind": model.kind,
        "model_config": model.config_dict(),
        "input": model.input_spec().to_dict(),
        "package_version": version,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    prov.update(dict(extra or {}))
    return prov


def _resume_fields(plan: PredictionPlan, slide: Slide) -> dict[str, Any]:
    """What a store must match to be resumed (and the attrs it is created with)."""
    return {
        "map_shape": list(plan.map_shape),
        "feature_dim": plan.feature_dim,
        "genes": plan.genes,
        "stride": plan.stride,
        "model_mpp": plan.model_mpp,
        "tile_px": plan.tile_px,
        "halo_px": plan.halo_px,
        "stain": plan.stain_reference,
        "slide_shape": list(slide.shape),
    }


def _open_or_create(
    out_path: Path,
    resume: bool,
    expected: dict[str, Any],
    head: tuple[np.ndarray, np.ndarray],
    create_kwargs: Callable[[], dict[str, Any]],
) -> tuple[DenseMapStore, bool]:
    """Open a compatible store to resume, or create a new one with ``create_kwargs()``
    (called only then); returns (store, resumed). A store is compatible when its attrs
    equal every entry of ``expected`` (``slide_shape``: its ``slide.shape``) and its head
    ``head``."""
    if resume and out_path.exists():
        try:
            store = DenseMapStore.open(out_path, mode="r+")
        except InputFileError as exc:
            raise InputFileError(
                out_path,
                f"cannot resume this map store ({exc.problem}); starting over replaces it",
                setting="restart",
            ) from exc
        attrs = store.attrs
        want = dict(expected)
        stored = {k: attrs.get(k) for k in want if k != "slide_shape"}
        stored["slide_shape"] = attrs.get("slide", {}).get("shape")
        diff = [k for k in want if _norm(stored.get(k)) != _norm(want[k])]
        W, b = store.head
        if not diff and not (
            W.shape == head[0].shape
            and np.allclose(W, head[0], atol=1e-6)
            and np.allclose(b, head[1], atol=1e-6)
        ):
            diff.append("head weights")
        if diff:
            raise StoreMismatchError(
                out_path,
                f"cannot resume: the existing store differs in {', '.join(diff)}; "
                "starting over replaces it, or write the map elsewhere",
            )
        return store, True
    store = DenseMapStore.create(out_path, overwrite=True, **create_kwargs())
    return store, False


def _norm(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, float):
        return round(value, 9)
    return value


class _Progress:
    def __init__(self, progress: Any, total: int) -> None:
        self._cb: Callable[[int, int], None] | None = None
        self._bar: Any = None
        self._own = False
        self.total = total
        if progress is True:
            from tqdm.auto import tqdm

            self._bar, self._own = tqdm(total=total, unit="tile"), True
        elif progress is not None and hasattr(progress, "update"):
            self._bar = progress
            with contextlib.suppress(Exception):
                progress.total = total
        elif callable(progress):
            self._cb = progress

    def __call__(self, done: int, delta: int) -> None:
        if self._cb is not None:
            self._cb(done, self.total)
        if self._bar is not None and delta:
            self._bar.update(delta)

    def close(self) -> None:
        if self._own:
            self._bar.close()


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(tiles), size):
        yield tiles[i : i + size]


def _normaliser(spec: InputSpec, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """RGB in [0, 1] -> the model's input: unchanged when the model normalises itself
    (``spec.normalizes_input``), else ``(x - mean) / std`` with the spec's statistics."""
    if spec.normalizes_input:
        return lambda x: x
    mean = torch.as_tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1).to(device)
    std = torch.as_tensor(spec.std, dtype=torch.float32).reshape(1, 3, 1, 1).to(device)
    return lambda x: (x - mean) / std


def _forward(
    model: DenseModel,
    pixels: np.ndarray,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    autocast: Any,
    stride: int,
    feature_dim: int,
) -> np.ndarray:
    """uint8 ``(B, n, n, 3)`` -> float32 features ``(B, C, n/s, n/s)`` on the CPU."""
    host = torch.from_numpy(pixels)
    if device.type == "cuda":
        host = host.pin_memory()
    x = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = normalise(x)
    with torch.inference_mode(), autocast:
        y = model.features(x)
    n = pixels.shape[1]
    expected = (pixels.shape[0], feature_dim, n // stride, n // stride)
    if tuple(y.shape) != expected:
        raise ValueError(
            f"model.features returned shape {tuple(y.shape)} for input {tuple(x.shape)}; "
            f"expected {expected} (feature_dim={feature_dim}, feature_stride={stride})"
        )
    return y.float().cpu().numpy()
