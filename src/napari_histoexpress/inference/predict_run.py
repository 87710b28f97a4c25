"""Whole-slide prediction with a trained run folder (Qt-free; the CLI and the Predict widget).

:func:`predict_with_run` = load the run's checkpoint (:func:`~..models.checkpoint.load_checkpoint`,
any registered model), then, by the model's kind: a dense model
(:class:`~..models.base.DenseModel`) runs :func:`~.predict_slide.predict_slide` at the run's
working resolution, a spot model (:class:`~..models.base.SpotModel`, e.g. the ridge
baseline) :func:`~.predict_lattice.predict_lattice` on a patch lattice (``pitch_um``); both
with the run's gene names, and the run folder and model name recorded in the store's
provenance.

The working µm/px is read by one accessor,
:func:`~..models.checkpoint.checkpoint_working_mpp` (``config.json`` → ``working_mpp``, or
``extra.microns_per_pixel`` for runs written before that field): :attr:`RunInfo.model_mpp`
and the loaded model's ``working_mpp`` are the same number.

Stain normalisation: a run trained with it records its settings and fitted reference in
``config.json`` (``input.stain``, the model's input spec; ``config.stain`` too). A loaded
model does not carry them, so :func:`predict_with_run` passes them to
:func:`~.predict_slide.predict_slide` (``stain=``, read by :func:`run_stain`), which
normalises every tile to that reference with the slide's own stains.

:func:`check_run` does the cheap part (read and check ``config.json``, no weights) so a user
interface can say at once whether a folder is usable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HistoExpressError, InputFileError
from .predict_slide import PredictionReport

__all__ = [
    "LoadedRun",
    "RunInfo",
    "check_run",
    "load_run",
    "predict_loaded",
    "predict_with_run",
    "run_model_mpp",
    "run_stain",
]


class RunInfo:
    """What :func:`check_run` found in a run folder's ``config.json``."""

    def __init__(self, run_dir: Path, meta: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.meta = meta
        self.model = str(meta["model"])
        #: ``"dense"`` or ``"spot"`` (recorded by newer checkpoints; ``None`` for older ones)
        self.kind: str | None = meta.get("kind")
        self.genes = [str(g) for g in meta["genes"]]
        self.model_mpp = run_model_mpp(run_dir, meta)

    def describe(self) -> str:
        return (
            f"{self.run_dir.name}: {self.model}, {len(self.genes)} genes, {self.model_mpp:g} µm/px"
        )


def run_model_mpp(run_dir: str | os.PathLike[str], meta: dict[str, Any]) -> float:
    """The working µm/px a run was trained at
    (:func:`~..models.checkpoint.checkpoint_working_mpp`); ``InputFileError`` naming its
    ``config.json`` when the run does not record one."""
    from ..models.checkpoint import CONFIG_NAME, checkpoint_working_mpp

    mpp = checkpoint_working_mpp(meta)
    if mpp is None:
        value = (meta.get("extra") or {}).get("microns_per_pixel")
        raise InputFileError(
            Path(run_dir) / CONFIG_NAME,
            f"the run does not record its working resolution (working_mpp = "
            f"{meta.get('working_mpp')!r}, extra.microns_per_pixel = {value!r}); it cannot "
            "predict a slide",
        )
    return mpp


def run_stain(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The stain settings a run was trained with
    (:func:`~napari_histoexpress.models.checkpoint.checkpoint_stain`)."""
    from ..models.checkpoint import checkpoint_stain

    return checkpoint_stain(meta)


def check_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read and check a run folder's ``config.json`` (no weights are loaded).

    Raises :class:`InputFileError` when it is not a checkpoint folder or lacks its µm/px.
    """
    from ..models.checkpoint import read_checkpoint_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputFileError(run_dir, "run folder not found")
    return RunInfo(run_dir, read_checkpoint_config(run_dir))


def predict_with_run(
    run_dir: str | os.PathLike[str],
    slide_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    tile_px: int = 512,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    pitch_um: float | None = None,
) -> PredictionReport:
    """Predict the dense map of ``slide_path`` with the run in ``run_dir`` into ``out_path``.

    Args:
        run_dir: a checkpoint folder (``config.json`` + ``weights.safetensors``).
        slide_path: the slide file.
        out_path: the map store to write (resumed when it exists and ``resume``).
        slide_mpp: the slide's µm/px when its file does not say.
        tile_px, batch_size: as :func:`~.predict_slide.predict_slide`.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'`` (an unavailable one raises
            :class:`HistoExpressError` before anything is loaded).
        precision: ``'auto'`` (bf16 autocast on CUDA, float32 elsewhere), ``'fp32'``,
            ``'bf16'`` or ``'fp16'``.
        progress: ``callable(done, total)``, a tqdm-like bar, or ``True`` for a tqdm bar.
        should_stop: polled before each batch; True stops cleanly (a partial, resumable store).
        resume: keep finished tiles of an existing compatible store.
        pitch_um: spot models only: the lattice pitch in µm (default half the model's patch
            side; see :func:`~.predict_lattice.predict_lattice`). For spot models
            ``tile_px`` is not used (a chunk is 16 × 16 lattice nodes) and ``batch_size``
            counts lattice rows of a chunk per forward pass.

    Raises:
        InputFileError: not a run folder, weights that do not fit, no µm/px in the run or
            the slide, an unreadable slide, an incompatible store to resume.
        HistoExpressError: the run's model is neither a dense nor a spot model, or the
            device is unavailable.
    """
    loaded = load_run(run_dir, device=device)
    return predict_loaded(
        loaded,
        slide_path,
        out_path,
        slide_mpp=slide_mpp,
        tile_px=tile_px,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        should_stop=should_stop,
        resume=resume,
        pitch_um=pitch_um,
    )


@dataclass(frozen=True)
class LoadedRun:
    """A run folder's model, loaded once (:func:`load_run`) for any number of slides
    (:func:`predict_loaded`; e.g. once per cohort worker)."""

    info: RunInfo
    model: Any
    meta: dict[str, Any]
    device: Any


def load_run(run_dir: str | os.PathLike[str], *, device: str = "auto") -> LoadedRun:
    """:func:`check_run`, resolve ``device`` (an unavailable one raises
    :class:`HistoExpressError` before anything is loaded), then load the checkpoint."""
    from ..devices import resolve_device
    from ..models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    info = check_run(run_dir)
    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise HistoExpressError(f"{exc}; choose 'auto' or 'cpu'") from exc
    model, meta = load_checkpoint(run_dir)
    return LoadedRun(info, model, meta, torch_device)


def predict_loaded(
    loaded: LoadedRun,
    slide_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    tile_px: int = 512,
    batch_size: int = 4,
    precision: str = "auto",
    progress: Callable[[int, int], None] | Any | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = True,
    pitch_um: float | None = None,
) -> PredictionReport:
    """:func:`predict_with_run` with a run already loaded (:func:`load_run`)."""
    from ..models.base import DenseModel, SpotModel

    info, model, meta, torch_device = loaded.info, loaded.model, loaded.meta, loaded.device
    run_dir = info.run_dir
    common: dict[str, Any] = dict(
        slide_mpp=slide_mpp,
        device=torch_device,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        should_stop=should_stop,
        resume=resume,
        genes=list(meta["genes"]),
        provenance={"run_dir": str(run_dir.resolve()), "model": meta["model"]},
        stain=run_stain(meta),
    )
    if model.kind == "spot" and isinstance(model, SpotModel):
        from .predict_lattice import predict_lattice

        return predict_lattice(model, slide_path, out_path, pitch_um=pitch_um, **common)
    if model.kind == "dense" and isinstance(model, DenseModel):
        from .predict_slide import predict_slide

        # info.model_mpp == model.working_mpp: load_checkpoint read it with the same accessor
        return predict_slide(
            model, slide_path, out_path, model_mpp=info.model_mpp, tile_px=tile_px, **common
        )
    raise HistoExpressError(
        f"{run_dir}: model {meta['model']!r} ({model.kind} model) can predict no whole-slide "
        "map: it is neither a DenseModel nor a SpotModel"
    )
