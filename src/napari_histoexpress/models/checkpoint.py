"""Checkpoints as a folder: ``weights.safetensors`` + ``config.json``. Never pickle.

``config.json`` holds everything needed to rebuild and use the model::

    {
      "format": "napari-histoexpress-checkpoint", "format_version": 1,
      "model": "pixnet",                  # registry name
      "model_config": {...},              # model.config_dict(), rebuilt via the registry
      "genes": ["ERBB2", ...],            # output order
      "config": {...},                    # the run's (training) config, as given
      "extra": {...},                     # e.g. normalisation, microns_per_pixel, metrics
      "versions": {"torch": ..., "timm": ..., "napari_histoexpress": ..., "python": ...},
      "created": "2025-01-01T12:00:00+00:00"
    }

Both files are written to temporary names in ``run_dir`` and renamed into place (weights
first, config last), so a crash never leaves a half-written checkpoint that looks complete.
On load, ``model_config["pretrained"]`` is ignored (set to ``None``): the weights come from
the checkpoint, and the original weights file need not exist on the loading machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import InputFileError
from ..io.export import write_atomic
from ..models.registry import get_model_class, model_name_of

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]


class SavableModel(Protocol):
    """What :func:`save_checkpoint` needs: a registered model (see
    :mod:`~napari_histoexpress.models.registry`) with a JSON-able config and tensors."""

    def config_dict(self) -> dict[str, Any]: ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...


WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "napari-histoexpress-checkpoint"
FORMAT_VERSION = 1


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


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


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    model: SavableModel,
    config: dict[str, Any] | None,
    genes: list[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``run_dir/weights.safetensors`` and ``run_dir/config.json`` (atomically).

    ``model`` must be an instance of a registered class with ``config_dict()``. Raises
    ``TypeError`` before writing anything if the configs are not JSON-able, ``ValueError``
    if ``len(genes)`` disagrees with the model's ``n_genes``.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    name = model_name_of(model)
    genes = [str(g) for g in genes]
    n_genes = getattr(model, "n_genes", None)
    if n_genes is not None and int(n_genes) != len(genes):
        raise ValueError(f"model predicts {n_genes} genes but {len(genes)} gene names were given")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name,
        "model_config": model.config_dict(),
        "genes": genes,
        "config": dict(config or {}),
        "extra": dict(extra or {}),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(meta, indent=2, default=_json_default, allow_nan=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        run_dir / WEIGHTS_NAME,
        lambda tmp: save_file(state, tmp, metadata={"format": FORMAT, "model": name}),
    )
    write_atomic(run_dir / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text + "\n"))


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
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model via the registry and load its weights: ``(model, config_json)``.

    The model is returned in ``eval()`` mode. Raises ``InputFileError`` naming the file when
    the folder is not a checkpoint, the model name is unknown, or the weights do not fit.
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
    if isinstance(model, torch.nn.Module):
        model.to(map_location).eval()
    return model, meta
