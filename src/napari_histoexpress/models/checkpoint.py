"""Checkpoints as a folder: ``weights.safetensors`` + ``config.json``. Never pickle.

``config.json`` holds everything needed to rebuild and use the model::

    {
      "format": "napari-histoexpress-checkpoint", "format_version": 1,
      "model": "pixnet",                  # registry name
      "kind": "dense",                    # HistoModel.kind ("dense" or "spot")
      "model_config": {...},              # model.config_dict(), rebuilt via the registry
      "genes": ["ERBB2", ...],            # output order
      "working_mpp": 4.0,                 # the model's working µm/px (or null)
      "input": {...},                     # model.input_spec().to_dict()
      "config": {...},                    # the run's (training) config, as given
      "extra": {...},                     # e.g. normalisation, microns_per_pixel, metrics
      "versions": {"torch": ..., "timm": ..., "napari_histoexpress": ..., "python": ...},
      "created": "2025-01-01T12:00:00+00:00"
    }

Choices:

* **One working µm/px.** ``working_mpp`` (top level) is the model's own
  (``model.working_mpp``), else the ``extra.microns_per_pixel`` a caller passes (what runs
  recorded before the field existed); the two must agree. It is also written to
  ``extra.microns_per_pixel`` so that older readers keep working. On load,
  :func:`checkpoint_working_mpp` reads it back (top level first, then
  ``extra.microns_per_pixel`` for older runs such as the bundled demo run) and
  :func:`load_checkpoint` hands it to ``model.set_genes``: ``RunInfo.model_mpp`` of
  :mod:`..inference.predict_run` uses the same accessor, so both always agree.
* ``kind`` and ``input`` are descriptive (``histoexpress info`` shows them without
  building the model); the model is always rebuilt from ``model_config``.
* JSON through the package's one sanitiser (:func:`~napari_histoexpress.io.export.to_jsonable`,
  strict: a config that is not JSON-able raises ``TypeError`` before anything is written;
  NaN is kept, as Python's ``json`` writes it).
* Both files are written to temporary names in ``run_dir`` and renamed into place (weights
  first, config last; :func:`~napari_histoexpress.io.export.write_atomic`), so a crash never
  leaves a half-written checkpoint that looks complete.
* On load, ``model_config["pretrained"]`` is ignored (set to ``None``): the weights come
  from the checkpoint, and the original weights file need not exist on the loading machine.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputFileError
from ..io.export import to_jsonable, write_atomic, write_text_atomic
from ..models.base import HistoModel
from ..models.registry import get_model_class, model_name_of

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "checkpoint_working_mpp",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]


WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "napari-histoexpress-checkpoint"
FORMAT_VERSION = 1
#: key of the working µm/px in ``extra`` (runs written before the top-level field)
LEGACY_MPP_KEY = "microns_per_pixel"


def _versions() -> dict[str, str]:
    import timm

    from .. import __version__

    return {
        "napari_histoexpress": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _positive_mpp(value: Any) -> float | None:
    """``value`` as a positive finite float, or ``None``."""
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def checkpoint_working_mpp(meta: Mapping[str, Any]) -> float | None:
    """The working µm/px a checkpoint records: top-level ``working_mpp``, else (runs written
    before that field) ``extra.microns_per_pixel``; ``None`` when neither is a positive
    number. The one accessor: :func:`load_checkpoint` and ``predict_run.RunInfo`` use it."""
    mpp = _positive_mpp(meta.get("working_mpp"))
    if mpp is None:
        mpp = _positive_mpp((meta.get("extra") or {}).get(LEGACY_MPP_KEY))
    return mpp


def checkpoint_stain(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stain settings a checkpoint records: ``input.stain`` (the model's input spec),
    else ``config.stain``; ``None`` for runs without them. The one accessor: evaluation,
    prediction and :func:`load_checkpoint` use it."""
    raw = (meta.get("input") or {}).get("stain")
    if raw is None:
        raw = (meta.get("config") or {}).get("stain")
    return None if raw is None else dict(raw)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    model: HistoModel,
    config: Mapping[str, Any] | None,
    genes: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``run_dir/weights.safetensors`` and ``run_dir/config.json`` (atomically).

    Args:
        run_dir: the checkpoint folder (created with its parents).
        model: an instance of a registered :class:`~.base.HistoModel` class.
        config: the run's (training) settings, recorded as given.
        genes: names of the head's outputs; default ``model.gene_names``.
        extra: anything else to record (normalisation, metrics, ...). A
            ``microns_per_pixel`` here is the working µm/px when the model has none.

    Raises ``TypeError`` before writing anything if the configs are not JSON-able,
    ``ValueError`` if ``len(genes)`` disagrees with the model's head or the model's working
    µm/px disagrees with ``extra["microns_per_pixel"]``.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    name = model_name_of(model)
    genes = [str(g) for g in (model.gene_names if genes is None else genes)]
    n_genes = int(model.gene_head()[1].shape[0])
    if n_genes != len(genes):
        raise ValueError(f"model predicts {n_genes} genes but {len(genes)} gene names were given")
    extra = dict(extra or {})
    working_mpp = _working_mpp_to_save(model, extra)
    if working_mpp is not None:
        extra[LEGACY_MPP_KEY] = working_mpp  # for readers of runs before ``working_mpp``
    spec = model.input_spec()
    if spec.mpp is None and working_mpp is not None:
        spec = dataclasses.replace(spec, mpp=working_mpp)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "kind": model.kind,
        "model_config": model.config_dict(),
        "genes": genes,
        "working_mpp": working_mpp,
        "input": spec.to_dict(),
        "config": dict(config or {}),
        "extra": extra,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(to_jsonable(meta, strict=True, nan_to_none=False), indent=2)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        run_dir / WEIGHTS_NAME,
        lambda tmp: save_file(state, tmp, metadata={"format": FORMAT, "model": name}),
    )
    write_text_atomic(text + "\n", run_dir / CONFIG_NAME)


def _working_mpp_to_save(model: HistoModel, extra: Mapping[str, Any]) -> float | None:
    """The model's working µm/px, else ``extra["microns_per_pixel"]``; both must agree."""
    own = _positive_mpp(model.working_mpp)
    given = extra.get(LEGACY_MPP_KEY)
    passed = _positive_mpp(given)
    if given is not None and passed is None:
        raise ValueError(f"extra[{LEGACY_MPP_KEY!r}] must be a positive number, got {given!r}")
    if own is not None and passed is not None and not math.isclose(own, passed, rel_tol=1e-9):
        raise ValueError(
            f"the model works at {own:g} µm/px but extra[{LEGACY_MPP_KEY!r}] says {passed:g}"
        )
    return own if own is not None else passed


def read_checkpoint_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``run_dir/config.json`` (``InputFileError`` on any problem)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputFileError(run_dir, f"not a checkpoint folder (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot parse checkpoint config: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputFileError(path, f"not a {FORMAT} config")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise InputFileError(
            path,
            f"checkpoint format version {meta['format_version']} is newer than this package "
            f"supports ({FORMAT_VERSION}); upgrade napari-histoexpress",
        )
    for key in ("model", "model_config", "genes"):
        if key not in meta:
            raise InputFileError(path, f"checkpoint config has no {key!r}")
    return meta


def load_checkpoint(
    run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[HistoModel, dict[str, Any]]:
    """Rebuild the model via the registry and load its weights: ``(model, config_json)``.

    The model's genes and working µm/px are set from the checkpoint
    (``model.set_genes(meta["genes"], checkpoint_working_mpp(meta))``); a torch model is
    returned on ``map_location`` in ``eval()`` mode. Raises ``InputFileError`` naming the
    file when the folder is not a checkpoint, the model name is unknown, or the weights or
    gene list do not fit.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = read_checkpoint_config(run_dir)
    try:
        cls = get_model_class(meta["model"])
    except KeyError as exc:
        raise InputFileError(run_dir / CONFIG_NAME, str(exc.args[0])) from exc
    model_config = dict(meta["model_config"])
    if "pretrained" in model_config:
        model_config["pretrained"] = None
    model = cls.from_config(model_config)
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise InputFileError(run_dir, f"checkpoint has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:
        raise InputFileError(weights, f"cannot read weights: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputFileError(weights, f"weights do not fit model {meta['model']!r}: {exc}") from exc
    try:
        model.set_genes(meta["genes"], checkpoint_working_mpp(meta))
        model.stain = checkpoint_stain(meta)
    except ValueError as exc:
        raise InputFileError(run_dir / CONFIG_NAME, str(exc)) from exc
    if isinstance(model, torch.nn.Module):
        model.to(map_location).eval()
    return model, meta
