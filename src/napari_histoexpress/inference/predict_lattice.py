"""Whole-slide prediction with a spot model, on a patch lattice, into a :class:`DenseMapStore`.

A :class:`~..models.base.SpotModel` (the ridge baseline; later HAGE, DKAN, ALIGN-ST) encodes
patches, not tiles. :func:`predict_lattice` lays a square **lattice** of nodes over the slide,
encodes the patch centred on every node and stores the node's ``C`` features as one pixel
of the same dense-map store :func:`~.predict_slide.predict_slide` writes (features + the
model's gene head + µm/px + provenance, resumable), so every reader of a map (Genes, Spots
with circles of any size, Export, measured vs predicted) works on it unchanged.

Geometry:

- **Pitch** ``pitch_um`` (default: half the model's patch side, ``input_spec().patch_um /
  2``), rounded to a whole number of working pixels (``pitch_px``); the store's map µm/px is
  that pitch. Map pixel ``(i, j)`` covers slide µm ``[j, j + 1) · pitch`` × ``[i, i + 1) ·
  pitch`` from the slide's corner (the convention of :mod:`.spots`) and holds the features
  of the ``patch_px`` patch (at the model's working µm/px) **centred** on that pixel's
  centre; the lattice covers the slide (``ceil(extent / pitch)`` nodes per side). Patches
  overlap when the pitch is below the patch side (by half at the default).
- **Circles.** The head is affine, so a circle's mean of the stored features through the
  head equals the same weighted mean of the node predictions (tested); a spot's prediction
  is the area-weighted mean of the patch predictions of the nodes it covers.

It reuses :mod:`.predict_slide`'s steps where they fit: the store is opened/resumed by the
same code (the resume check compares the lattice geometry and the head), tissue detection
flags background chunks the same way (:func:`~.predict_slide.mark_background_boxes`), the
stain normalisation of the slide is fixed once the same way, and
:func:`~.predict_slide.finish_prediction` builds the pyramid and writes the report. Its own
steps are :func:`plan_lattice` and :func:`run_lattice`.

Choices made here (and why):

- **Chunks of nodes.** The store's chunk is ``chunk_nodes`` × ``chunk_nodes`` nodes (the
  "tiles" of the report and of progress). A chunk is written (and marked done) as soon as
  its nodes are encoded, so a killed run resumes from the store's ``done`` mask; memory is
  one chunk of features plus two batches of patches, whatever the slide size.
- **Reading.** Each lattice row of a chunk is read as one band of ``patch_px`` working
  pixels at the working µm/px (:func:`~..io.slides.read_region_at_mpp`, sub-pixel placed),
  and its patches are crops of the band at multiples of ``pitch_px``: every patch has the
  source footprint it would have if read on its own. One batch (``batch_size`` rows of a
  chunk) is read ahead in a background thread while the model encodes the current one.
- **Features are stored float32** by default (a lattice map is small: one pixel per
  patch), so a stored value is the model's feature to float32 rounding.
- **Two passes for slide context.** When the model :attr:`~..models.base.SpotModel.
  needs_slide_context` (DKAN's global encoder, ALIGN-ST's spot graph), pass 1 writes every
  tissue chunk's ``D`` pass-1 features (``node_feature_dim``) to a scratch zarr beside the
  store (``.NAME.pass1``, with its own ``done`` mask: pass 1 resumes too); pass 2 hands all
  tissue nodes at once (:class:`~..models.base.LatticeNodes`) to
  :meth:`~..models.base.SpotModel.slide_context` and writes its ``C`` features chunk by
  chunk into the store, then deletes the scratch. Pass 2 holds ``N × (D + C)`` floats for
  the ``N`` tissue nodes — what a model with slide-wide context needs by definition; pass 1
  is bounded as above. Context-free models (the default hook is the identity) run one pass.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .. import devices
from ..devices import resolve_device
from ..errors import InputFileError, MissingResolutionError
from ..geometry import LATTICE_CHUNK_NODES, LatticeGrid, lattice_grid
from ..io.slides import Slide, read_region_at_mpp
from ..io.tissue import tissue_at
from ..models.base import InputSpec, LatticeNodes, SpotInputs, SpotModel, check_gene_head
from ..stain import StainConfig, StainNormalizer
from .map_store import DenseMapStore, _array
from .predict_slide import (
    PredictionReport,
    TileRun,
    _as_slide,
    _normaliser,
    _open_or_create,
    _Progress,
    _provenance,
    _store_stain,
    finish_prediction,
    mark_background_boxes,
    slide_stain,
)

__all__ = [
    "DEFAULT_CHUNK_NODES",
    "LatticeChunk",
    "LatticeGrid",
    "LatticePlan",
    "default_pitch_um",
    "lattice_grid",
    "open_lattice_store",
    "plan_lattice",
    "predict_lattice",
    "run_lattice",
]

#: Lattice nodes per side of a store chunk (one "tile" of progress and resume).
DEFAULT_CHUNK_NODES = LATTICE_CHUNK_NODES


@dataclass(frozen=True)
class LatticeChunk:
    """One store chunk of lattice nodes (end-exclusive, clipped to the lattice)."""

    index: int
    row: int
    col: int
    map_y0: int
    map_x0: int
    map_y1: int
    map_x1: int

    @property
    def map_shape(self) -> tuple[int, int]:
        return self.map_y1 - self.map_y0, self.map_x1 - self.map_x0


@dataclass(frozen=True)
class LatticePlan:
    """The geometry of one slide's lattice prediction (:func:`plan_lattice`).

    Attributes:
        spec: the model's input spec; patch_px: the patch side (working px).
        pitch_px: node spacing in working px; pitch_um: the same in µm (= the map µm/px).
        factor: level-0 px per working px; working_shape: ``(H, W)`` of the slide at the
            working µm/px ``working_mpp`` (= ``model_mpp``).
        map_shape: ``(rows, cols)`` of the lattice; chunk_nodes: nodes per chunk side;
            grid: ``(rows, cols)`` of chunks; tiles: every chunk, row-major.
        feature_dim: ``C``; node_feature_dim: ``D`` (pass 1); two_pass: the model needs
            slide context; genes, head (float32 ``W (C, G)``, ``b (G,)``); stain: as
            :class:`~.predict_slide.PredictionPlan`.
    """

    spec: InputSpec
    patch_px: int
    pitch_px: int
    factor: float
    working_shape: tuple[int, int]
    working_mpp: float
    model_mpp: float
    map_shape: tuple[int, int]
    chunk_nodes: int
    grid: tuple[int, int]
    tiles: list[LatticeChunk]
    feature_dim: int
    node_feature_dim: int
    two_pass: bool
    genes: list[str]
    head: tuple[np.ndarray, np.ndarray]
    stain: dict[str, Any] | None = None

    @property
    def pitch_um(self) -> float:
        return self.pitch_px * self.working_mpp

    @property
    def map_mpp(self) -> float:
        """µm per map pixel: the pitch."""
        return self.pitch_um

    @property
    def stain_reference(self) -> dict[str, Any] | None:
        if self.stain is None:
            return None
        return StainConfig.from_dict(self.stain).normalizer().to_dict()

    def node_centres_level0(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(N, 2)`` ``(x, y)`` centres of nodes in level-0 px (continuous: pixel ``k``
        spans ``[k, k + 1)``)."""
        s = self.pitch_px * self.factor
        return np.stack([(np.asarray(cols) + 0.5) * s, (np.asarray(rows) + 0.5) * s], axis=1)

    def node_positions_um(self, rows: np.ndarray, cols: np.ndarray, slide_mpp: float) -> np.ndarray:
        """``(N, 2)`` node centres in µm, napari's convention (slide pixel ``p`` at
        ``p · slide_mpp``, so the slide's corner is at ``-slide_mpp / 2``)."""
        return np.asarray(self.node_centres_level0(rows, cols) * slide_mpp - slide_mpp / 2.0)


def default_pitch_um(spec: InputSpec) -> float:
    """Half the model's patch side in µm (``ValueError`` when the spec has none)."""
    if spec.patch_um is None:
        raise ValueError("the spot model's input spec has no patch size (patch_px and mpp)")
    return spec.patch_um / 2.0


def _pitch_fits(model: SpotModel, pitch_px: int, own_px: float) -> bool:
    """Whether a lattice of ``pitch_px`` working pixels suits a model trained at ``own_px``:
    the same (rounded), or — for models with :attr:`~..models.base.SpotModel.
    lattice_subdivisions` — a whole factor ``K`` finer, ``K · pitch_px`` within 2 % of the
    trained pitch (rounding to whole pixels)."""
    if pitch_px == max(1, round(own_px)):
        return True
    if not model.lattice_subdivisions:
        return False
    k = round(own_px / pitch_px)
    return k >= 1 and abs(k * pitch_px - own_px) <= 0.02 * own_px


def _require_spot(model: Any) -> None:
    if not isinstance(model, SpotModel):
        raise TypeError(
            f"{type(model).__name__} is not a SpotModel (napari_histoexpress.models.base): "
            "lattice prediction needs a model that encodes patches"
        )


def plan_lattice(
    model: SpotModel,
    slide: Slide,
    *,
    pitch_um: float | None = None,
    chunk_nodes: int = DEFAULT_CHUNK_NODES,
    genes: Sequence[str] | None = None,
    stain: Mapping[str, Any] | None = None,
) -> LatticePlan:
    """Step 1: the lattice of ``slide`` for ``model`` (no pixels are read).

    ``pitch_um`` defaults to :func:`default_pitch_um` and is rounded to whole working
    pixels (at least one). Raises ``MissingResolutionError`` when the slide's µm/px is
    unknown, ``ValueError`` for a non-positive pitch or chunk, a model without a patch size
    or working µm/px, or a head that does not fit.
    """
    _require_spot(model)
    spec = model.input_spec()
    if spec.patch_px is None or spec.mpp is None:
        raise ValueError(
            f"{type(model).__name__}: the input spec needs patch_px and mpp for lattice "
            f"prediction (got patch_px={spec.patch_px}, mpp={spec.mpp})"
        )
    if slide.mpp is None:
        raise MissingResolutionError(
            slide.path,
            f"the slide's µm/px is unknown (its file does not record it) and the model runs "
            f"at {spec.mpp:g} µm/px: set the slide's µm/px (e.g. 0.5 for a 20x scan)",
        )
    own = model.lattice_pitch_um
    if pitch_um is None:
        pitch = default_pitch_um(spec) if own is None else float(own)
    else:
        pitch = float(pitch_um)
    if not (math.isfinite(pitch) and pitch > 0):
        raise ValueError(f"the lattice pitch must be positive, got {pitch_um!r} µm")
    if int(chunk_nodes) < 1:
        raise ValueError(f"chunk_nodes must be positive, got {chunk_nodes!r}")
    work_mpp = float(spec.mpp)
    lattice = lattice_grid(slide.shape, float(slide.mpp), work_mpp, pitch)
    if own is not None and not _pitch_fits(model, lattice.pitch_px, float(own) / work_mpp):
        finer = (
            ", or that pitch divided by a whole number (finer maps)"
            if model.lattice_subdivisions
            else ""
        )
        raise ValueError(
            f"{type(model).__name__} was trained on a lattice of {float(own):g} µm pitch "
            f"(its neighbours are lattice nodes); predict with that pitch{finer}, "
            f"not {pitch:g} µm"
        )
    pitch_px, f = lattice.pitch_px, lattice.factor
    h_work, w_work = lattice.working_shape
    map_shape = lattice.map_shape
    n = int(chunk_nodes)
    grid = (math.ceil(map_shape[0] / n), math.ceil(map_shape[1] / n))
    tiles = [
        LatticeChunk(
            index=r * grid[1] + c,
            row=r,
            col=c,
            map_y0=r * n,
            map_x0=c * n,
            map_y1=min((r + 1) * n, map_shape[0]),
            map_x1=min((c + 1) * n, map_shape[1]),
        )
        for r in range(grid[0])
        for c in range(grid[1])
    ]
    feature_dim = int(model.feature_dim)
    gene_names = [str(g) for g in (genes or model.gene_names)]
    W, b = model.gene_head()
    W, b = check_gene_head(W, b, feature_dim, len(gene_names), who=type(model).__name__)
    head = (np.ascontiguousarray(W, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
    stain_cfg = StainConfig.from_dict(spec.stain if stain is None else stain)
    stain_cfg.normalizer()  # a normalisation without its reference fails here
    return LatticePlan(
        spec=spec,
        patch_px=int(spec.patch_px),
        pitch_px=int(pitch_px),
        factor=f,
        working_shape=(h_work, w_work),
        working_mpp=work_mpp,
        model_mpp=work_mpp,
        map_shape=map_shape,
        chunk_nodes=n,
        grid=grid,
        tiles=tiles,
        feature_dim=feature_dim,
        node_feature_dim=int(model.node_feature_dim),
        two_pass=bool(model.needs_slide_context),
        genes=gene_names,
        head=head,
        stain=None if stain_cfg.normalize == "none" else stain_cfg.to_dict(),
    )


def _resume_fields(plan: LatticePlan, slide: Slide) -> dict[str, Any]:
    """What a lattice store must match to be resumed (and the attrs it is created with)."""
    return {
        "map_shape": list(plan.map_shape),
        "feature_dim": plan.feature_dim,
        "genes": plan.genes,
        "stride": plan.pitch_px,
        "model_mpp": plan.model_mpp,
        "tile_px": plan.chunk_nodes * plan.pitch_px,
        "lattice": {
            "pitch_px": plan.pitch_px,
            "pitch_um": plan.pitch_um,
            "patch_px": plan.patch_px,
            "chunk_nodes": plan.chunk_nodes,
            "two_pass": plan.two_pass,
        },
        "stain": plan.stain_reference,
        "slide_shape": list(slide.shape),
    }


def open_lattice_store(
    model: SpotModel,
    plan: LatticePlan,
    slide: Slide,
    out_path: str | os.PathLike[str],
    *,
    resume: bool = True,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    precision: str = "auto",
    provenance: Mapping[str, Any] | None = None,
) -> tuple[DenseMapStore, bool]:
    """Step 2: create the store, or reopen a compatible one to resume (same rules as
    :func:`~.predict_slide.open_map_store`); a new store drops any stale pass-1 scratch."""
    out_path = Path(out_path)
    device = torch.device(device)
    autocast_name = str(devices.autocast_dtype(device, precision) or "float32")
    slide_info = {"path": str(slide.path), "shape": list(slide.shape), "mpp": slide.mpp}
    expected = _resume_fields(plan, slide)

    def create_kwargs() -> dict[str, Any]:
        attrs = {k: v for k, v in expected.items() if k != "slide_shape"}
        prov = {**_provenance(model, provenance), "device": str(device), "autocast": autocast_name}
        prov["prediction"] = "lattice"
        if plan.stain is not None:
            prov["input"] = {**prov["input"], "stain": plan.stain}
            prov["stain_normalizer"] = slide_stain(slide, plan).to_dict()
        attrs.update(working_shape=list(plan.working_shape), slide=slide_info, provenance=prov)
        W, b = plan.head
        return dict(
            map_shape=plan.map_shape,
            feature_dim=plan.feature_dim,
            genes=plan.genes,
            head_W=W,
            head_b=b,
            map_mpp=plan.map_mpp,
            attrs=attrs,
            chunk=plan.chunk_nodes,
            dtype=dtype,
        )

    store, resumed = _open_or_create(out_path, resume, expected, plan.head, create_kwargs)
    if not resumed:
        shutil.rmtree(_scratch_path(store.path), ignore_errors=True)
    return store, resumed


def predict_lattice(
    model: SpotModel,
    slide: str | os.PathLike[str] | Slide | np.ndarray,
    out_path: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    pitch_um: float | None = None,
    chunk_nodes: int = DEFAULT_CHUNK_NODES,
    device: str | torch.device = "auto",
    batch_size: int = 4,
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    skip_background: bool = True,
    genes: Sequence[str] | None = None,
    dtype: str = "float32",
    precision: str = "auto",
    build_pyramid: bool = True,
    provenance: Mapping[str, Any] | None = None,
    stain: Mapping[str, Any] | None = None,
) -> PredictionReport:
    """Predict a slide with a spot model on a patch lattice into the store at ``out_path``.

    Args as :func:`~.predict_slide.predict_slide`, except: ``pitch_um`` (node spacing, default
    half the patch side; the map's µm/px), ``chunk_nodes`` (nodes per chunk side: the
    "tiles" of progress, resume and the report), ``batch_size`` (lattice rows of a chunk per
    forward pass: ``batch_size × chunk_nodes`` patches), ``dtype`` (default float32). The
    model runs at its own working µm/px (``input_spec().mpp``); the slide's must be known.
    """
    t_start = time.perf_counter()
    _require_spot(model)
    slide_obj, own_slide = _as_slide(slide, slide_mpp)
    try:
        torch_device = resolve_device(device)
        plan = plan_lattice(
            model, slide_obj, pitch_um=pitch_um, chunk_nodes=chunk_nodes, genes=genes, stain=stain
        )
        store, _ = open_lattice_store(
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
            mark_background_boxes(
                store,
                slide_obj,
                plan.tiles,
                level0_per_map_px=plan.pitch_px * plan.factor,
                tile_level0_px=plan.chunk_nodes * plan.pitch_px * plan.factor,
            )
        run = run_lattice(
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
        if report.status == "complete":
            shutil.rmtree(_scratch_path(store.path), ignore_errors=True)
        return report
    finally:
        if own_slide:
            slide_obj.close()


# ------------------------------------------------------------------------------------ step 4


@dataclass(frozen=True)
class _Batch:
    chunk: LatticeChunk
    rows: range  # lattice rows of the chunk in this batch
    last: bool  # the chunk's last batch


def run_lattice(
    model: SpotModel,
    slide: Slide,
    store: DenseMapStore,
    plan: LatticePlan,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    precision: str = "auto",
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TileRun:
    """Step 4: encode every chunk the store does not have yet (pass 1) and, for a model with
    slide context, run pass 2 once every tissue chunk is encoded (see the module docstring).

    ``progress`` counts the chunks encoded by this call (``(0, total)`` first);
    ``should_stop`` is polled before each batch (a chunk is written only when complete).
    A non-torch model's ``to(device, precision)`` is called when it has one (the ridge
    baseline's frozen encoder)."""
    device = torch.device(device)
    _move(model, device, precision)
    done = store.done_mask
    scratch = _Scratch.open(store, plan) if plan.two_pass else None
    encoded = scratch.done_mask if scratch is not None else np.zeros_like(done)
    todo = [t for t in plan.tiles if not done[t.row, t.col] and not encoded[t.row, t.col]]
    normalise = _normaliser(plan.spec, device)
    autocast = devices.autocast(device, precision)
    stain = _store_stain(store, slide, plan) if todo else None
    slide_mpp = float(slide.mpp) if slide.mpp is not None else plan.working_mpp / plan.factor
    rows_per_batch = max(1, int(batch_size))

    def load(batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
        return _read_rows(slide, plan, batch.chunk, batch.rows, stain, slide_mpp)

    batches = [
        _Batch(t, range(r, min(r + rows_per_batch, t.map_y1)), r + rows_per_batch >= t.map_y1)
        for t in todo
        for r in range(t.map_y0, t.map_y1, rows_per_batch)
    ]
    bar = _Progress(progress, len(todo))
    bar(0, 0)
    n_encoded = 0
    n_written = 0
    stopped = False
    t_compute = time.perf_counter()
    buffer: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="histoexpress-read") as pool:
        pending: Future[tuple[np.ndarray, np.ndarray]] | None = (
            pool.submit(load, batches[0]) if batches else None
        )
        try:
            for i, batch in enumerate(batches):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                assert pending is not None
                patches, positions = pending.result()
                pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
                t = batch.chunk
                h, w = t.map_shape
                if batch.rows.start == t.map_y0:
                    buffer = np.empty((h, w, plan.node_feature_dim), dtype=np.float32)
                assert buffer is not None
                feats = _encode(
                    model, patches, positions, normalise, device, autocast, plan.node_feature_dim
                )
                y0 = batch.rows.start - t.map_y0
                buffer[y0 : y0 + len(batch.rows)] = feats.reshape(len(batch.rows), w, -1)
                if batch.last:
                    if scratch is None:
                        store.write_tile(t, buffer)
                        store.mark_done(t, computed=True)
                        n_written += 1
                    else:
                        scratch.write(t, buffer)
                    buffer = None
                    n_encoded += 1
                    bar(n_encoded, 1)
        finally:
            if pending is not None:
                pending.cancel()
            bar.close()
    if scratch is not None and not stopped:
        n_written = _second_pass(model, store, plan, scratch, device, slide_mpp)
    return TileRun(n_computed=n_written, stopped=stopped, seconds=time.perf_counter() - t_compute)


def _move(model: SpotModel, device: torch.device, precision: str) -> None:
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.to(device)
        return
    mover = getattr(model, "to", None)
    if callable(mover):
        mover(device, precision)


def _read_rows(
    slide: Slide,
    plan: LatticePlan,
    chunk: LatticeChunk,
    rows: range,
    stain: StainNormalizer | None,
    slide_mpp: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(patches (n, p, p, 3) uint8, positions_um (n, 2))`` of the nodes of ``rows`` ×
    the chunk's columns, row-major: one band per lattice row, patches cropped from it."""
    p, s, f = plan.patch_px, plan.pitch_px, plan.factor
    cols = np.arange(chunk.map_x0, chunk.map_x1)
    n = len(cols)
    band_w = (n - 1) * s + p
    patches: list[np.ndarray] = []
    for r in rows:
        left = (chunk.map_x0 + 0.5) * s - p / 2.0  # working px, continuous coordinates
        top = (r + 0.5) * s - p / 2.0
        centre = ((left + band_w / 2.0) * f, (top + p / 2.0) * f)
        band = read_region_at_mpp(slide, centre, (band_w, p), plan.working_mpp)
        if stain is not None:
            band = stain.apply_numpy(band)
        patches.extend(band[:, k * s : k * s + p] for k in range(n))
    rr = np.repeat(np.asarray(list(rows)), n)
    cc = np.tile(cols, len(rows))
    return np.stack(patches), plan.node_positions_um(rr, cc, slide_mpp)


def _encode(
    model: SpotModel,
    patches: np.ndarray,
    positions_um: np.ndarray,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    autocast: Any,
    dim: int,
) -> np.ndarray:
    """uint8 ``(N, p, p, 3)`` → float32 ``(N, dim)`` features of :meth:`encode_spots`."""
    host = torch.from_numpy(np.ascontiguousarray(patches))
    if device.type == "cuda":
        host = host.pin_memory()
    x = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    spots = SpotInputs(images=normalise(x), positions_um=torch.from_numpy(positions_um))
    with torch.inference_mode(), autocast:
        y = model.encode_spots(spots)
    if tuple(y.shape) != (len(patches), dim):
        raise ValueError(
            f"{type(model).__name__}.encode_spots returned shape {tuple(y.shape)} for "
            f"{len(patches)} patches; expected ({len(patches)}, {dim})"
        )
    return np.asarray(y.float().cpu().numpy(), dtype=np.float32)


# ------------------------------------------------------------------------------------ pass 2


def _scratch_path(store_path: Path) -> Path:
    return store_path.with_name(f".{store_path.name}.pass1")


class _Scratch:
    """Pass-1 features of a two-pass prediction: a zarr group beside the store with
    ``features (rows, cols, D)`` (chunked like the store) and a ``done`` chunk mask."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._features = _array(group, "features", path)
        self._done = _array(group, "done", path)

    @classmethod
    def open(cls, store: DenseMapStore, plan: LatticePlan) -> _Scratch:
        path = _scratch_path(store.path)
        shape = (*plan.map_shape, plan.node_feature_dim)
        if path.exists():
            group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
            try:
                scratch = cls(group, path)
            except InputFileError:
                scratch = None
            if (
                scratch is not None
                and tuple(scratch._features.shape) == shape
                and tuple(scratch._done.shape) == plan.grid
            ):
                return scratch
            shutil.rmtree(path)
        group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
        n = plan.chunk_nodes
        group.create_array(
            "features", shape=shape, chunks=(n, n, plan.node_feature_dim), dtype=np.float32
        )
        group.create_array("done", shape=plan.grid, dtype=bool, fill_value=False)
        return cls(group, path)

    @property
    def done_mask(self) -> np.ndarray:
        return np.asarray(self._done[...], dtype=bool)

    def write(self, chunk: LatticeChunk, feats: np.ndarray) -> None:
        self._features[chunk.map_y0 : chunk.map_y1, chunk.map_x0 : chunk.map_x1, :] = feats
        self._done[chunk.row, chunk.col] = True

    def read(self, chunk: LatticeChunk) -> np.ndarray:
        block = self._features[chunk.map_y0 : chunk.map_y1, chunk.map_x0 : chunk.map_x1, :]
        return np.asarray(block, dtype=np.float32)


def _slide_head(
    model: SpotModel, store: DenseMapStore, plan: LatticePlan, nodes: LatticeNodes
) -> None:
    """A model whose head depends on the slide (:meth:`~..models.base.SpotModel.
    slide_gene_head`, e.g. ALIGN-ST's prompted gene embeddings) gets this slide's head in
    the store (source ``"model"``) before any pass-2 features are written, and the store
    keeps the model's :meth:`~..models.base.SpotModel.slide_state` (for zero-shot genes)."""
    with torch.inference_mode():
        W, b = model.slide_gene_head(nodes)
        state = model.slide_state(nodes)
    if state:  # what adding genes to this map later needs (zero-shot)
        store.set_model_state(state)
    W, b = check_gene_head(W, b, plan.feature_dim, len(plan.genes), who=type(model).__name__)
    W32, b32 = W.astype(np.float32), b.astype(np.float32)
    current_W, current_b = store.head
    if np.array_equal(current_W, W32) and np.array_equal(current_b, b32):
        return
    store.add_genes(plan.genes, W32, b32, source="model", replace=True)


def _second_pass(
    model: SpotModel,
    store: DenseMapStore,
    plan: LatticePlan,
    scratch: _Scratch,
    device: torch.device,
    slide_mpp: float,
) -> int:
    """Pass 2: every tissue node's pass-1 features → :meth:`slide_context` → the store's
    chunks still to do; returns how many were written (0 when none is pending)."""
    done, coverage = store.done_mask, store.coverage
    tissue = [t for t in plan.tiles if coverage[t.row, t.col] != 2]
    pending = [t for t in tissue if not done[t.row, t.col]]
    if not pending:
        return 0
    encoded = scratch.done_mask
    missing = [t for t in tissue if not encoded[t.row, t.col]]
    if missing:
        raise RuntimeError(f"pass 1 left {len(missing)} tissue chunks unencoded")
    feats, rcs = [], []
    for t in tissue:
        block = scratch.read(t)
        rr, cc = np.mgrid[t.map_y0 : t.map_y1, t.map_x0 : t.map_x1]
        feats.append(block.reshape(-1, block.shape[-1]))
        rcs.append(np.stack([rr.ravel(), cc.ravel()], axis=1))
    rc = np.concatenate(rcs).astype(np.int64)
    mask, downsample = store.tissue, store.tissue_downsample
    on_tissue = None
    if mask is not None and downsample is not None:
        centres = plan.node_centres_level0(rc[:, 0], rc[:, 1])
        on_tissue = torch.from_numpy(tissue_at(mask, downsample, centres))
    nodes = LatticeNodes(
        features=torch.from_numpy(np.concatenate(feats)).to(device),
        positions_um=torch.from_numpy(plan.node_positions_um(rc[:, 0], rc[:, 1], slide_mpp)),
        grid_rc=torch.from_numpy(rc),
        lattice_shape=plan.map_shape,
        pitch_um=plan.pitch_um,
        tissue=on_tissue,
    )
    with torch.inference_mode():
        out = model.slide_context(nodes)
    if tuple(out.shape) != (len(nodes), plan.feature_dim):
        raise ValueError(
            f"{type(model).__name__}.slide_context returned shape {tuple(out.shape)} for "
            f"{len(nodes)} nodes; expected ({len(nodes)}, {plan.feature_dim})"
        )
    final = np.asarray(out.float().cpu().numpy(), dtype=np.float32)
    _slide_head(model, store, plan, nodes)
    start = 0
    n_written = 0
    for t in tissue:
        h, w = t.map_shape
        block = final[start : start + h * w].reshape(h, w, -1)
        start += h * w
        if not done[t.row, t.col]:
            store.write_tile(t, block)
            store.mark_done(t, computed=True)
            n_written += 1
    return n_written
