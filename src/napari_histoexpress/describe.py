"""What is in a file or folder of this project, as short text lines (``histoexpress info``).

:func:`describe_path` recognises, by content rather than by name alone:

* a **slide** (any :data:`~.io.slides.SLIDE_SUFFIXES` file): size, µm/px and its source,
  the levels;
* an **.h5ad** (imported spots or exported predictions): spots, genes, whether ``X`` holds
  raw counts, and per library the µm/px (and where it came from), spot diameter, the image
  the spots refer to (and whether it exists), and what the import dropped;
* a **dense-map store** (``histoexpress predict`` output, a zarr folder): genes, the model
  and run that made it, map resolution and size, pyramid levels, and completeness (tiles
  computed, background, pending);
* a **run folder** (``config.json`` + weights): model, its kind (dense map or per-spot) and
  the registry's one-line description, the input it expects (working µm/px, RGB
  normalisation, stride and window grid or patch size; runs saved before checkpoints
  recorded it say so), genes, training settings, the training sections and the last loss,
  and the metrics of ``metrics.json`` when the run was evaluated (``histoexpress evaluate``
  and cross-validation folds write it). Epoch-training settings (epochs, learning rate,
  batch, ...) are shown for runs that record a training history; a closed-form fit (the
  ridge baseline) shows only its resolution, crop and seed.

Only headers and metadata are read: no pixel data, no weights. Unrecognised or unreadable
paths raise :class:`~napari_histoexpress.errors.InputFileError` naming the path.
Qt-free; the lines are plain text for a terminal.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputFileError

__all__ = [
    "METRICS_NAME",
    "describe_h5ad",
    "describe_map_store",
    "describe_path",
    "describe_run",
    "describe_slide",
]

#: The evaluation report a run folder may hold (:func:`~.training.evaluate.evaluate_run`).
METRICS_NAME = "metrics.json"
_SHOWN_GENES = 8


def _genes(genes: Sequence[str]) -> str:
    shown = ", ".join(map(str, genes[:_SHOWN_GENES]))
    more = len(genes) - _SHOWN_GENES
    return f"{shown}, … (+{more:,})" if more > 0 else shown


def _mpp(value: Any, source: Any = None) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    text = f"{v:.4g} µm/px" if math.isfinite(v) and v > 0 else "µm/px unknown"
    return f"{text} ({source})" if source else text


def describe_path(path: str | os.PathLike[str], *, mpp: float | None = None) -> list[str]:
    """Describe a slide, ``.h5ad``, dense-map store or run folder (see module docstring).

    ``mpp`` overrides a slide's µm/px (ignored for the other kinds).
    """
    from .io.slides import SLIDE_SUFFIXES, is_slide_path

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file or folder not found")
    if path.is_dir():
        if (path / "zarr.json").is_file() or (path / ".zgroup").is_file():
            return describe_map_store(path)
        from .models.checkpoint import CONFIG_NAME

        if (path / CONFIG_NAME).is_file():
            return describe_run(path)
        raise InputFileError(
            path,
            "not a map store (zarr) or a run folder (config.json); info describes those, "
            "slides and .h5ad files",
        )
    if path.suffix.lower() == ".h5ad":
        return describe_h5ad(path)
    if is_slide_path(path):
        return describe_slide(path, mpp=mpp)
    raise InputFileError(
        path,
        f"cannot describe {''.join(path.suffixes[-2:]) or 'a file without suffix'!r}: info "
        f"describes slides ({', '.join(SLIDE_SUFFIXES)}), .h5ad files, map stores and run "
        "folders",
    )


def describe_slide(path: str | os.PathLike[str], *, mpp: float | None = None) -> list[str]:
    """Size, µm/px (and its source) and levels of a slide."""
    from .io.slides import open_slide

    with open_slide(path, mpp=mpp) as slide:
        lines = [
            f"{slide.path}: slide, {slide.shape[1]} x {slide.shape[0]} px, "
            f"{_mpp(slide.mpp, slide.mpp_source if slide.mpp else None)}"
        ]
        for k, level in enumerate(slide.levels):
            kind = "stored" if k < slide.n_stored_levels else "computed"
            lines.append(
                f"  level {k}: {level.shape[1]} x {level.shape[0]} px ({kind}), "
                f"chunks {level.chunksize[:2]}"
            )
    return lines


def _is_counts(adata: Any) -> str:
    import numpy as np
    import scipy.sparse as sp

    from .expression import raw_counts

    X = raw_counts(adata)
    where = "layers['counts']" if X is not adata.X else "X"
    sample = X[: min(adata.n_obs, 200)]
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    if values.size and np.all(values >= 0) and np.allclose(values, np.round(values)):
        return f"raw counts in {where}"
    return f"{where} holds non-integer values (not raw counts)"


def describe_h5ad(path: str | os.PathLike[str]) -> list[str]:
    """Spots, genes and spatial libraries of an ``.h5ad``."""
    import anndata

    from .io import spatial

    path = Path(path)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a non-h5ad file
        raise InputFileError(path, f"not a readable .h5ad file ({type(exc).__name__})") from exc
    lines = [
        f"{path}: .h5ad, {adata.n_obs:,} spots x {adata.n_vars:,} genes, {_is_counts(adata)}",
        f"  genes: {_genes(list(map(str, adata.var_names)))}",
    ]
    libs = spatial.library_ids(adata)
    if not libs:
        lines.append("  no spatial library (uns['spatial']): spots have no image")
    for lib_id in libs:
        _, lib = spatial.library(adata, lib_id)
        meta = lib.get("metadata", {}) or {}
        mpp = spatial.microns_per_pixel(adata, lib_id)
        diameter = (lib.get("scalefactors", {}) or {}).get("spot_diameter_fullres")
        parts = [f"  library {lib_id}: {_mpp(mpp, meta.get('mpp_source'))}"]
        if diameter:
            um = f"{float(diameter) * mpp:.4g} µm = " if mpp else ""
            parts.append(f"spot diameter {um}{float(diameter):.4g} px")
        if meta.get("technology"):
            parts.append(str(meta["technology"]))
        lines.append(", ".join(parts))
        image = spatial.source_image_path(adata, lib_id, relative_to=path)
        if image:
            missing = "" if Path(image).exists() else " (missing)"
            lines.append(f"    image: {image}{missing}")
        else:
            lines.append("    image: not recorded")
        dropped = [
            (meta.get("n_dropped_spots"), "spots without counts"),
            (meta.get("n_dropped_count_rows"), "count rows without a selected spot"),
        ]
        shown = [f"{int(n):,} {what}" for n, what in dropped if n]
        if shown:
            lines.append(f"    dropped at import: {', '.join(shown)}")
    return lines


def describe_map_store(path: str | os.PathLike[str]) -> list[str]:
    """Genes, model, levels and completeness of a dense-map store."""
    import numpy as np

    from .inference.map_store import DenseMapStore

    path = Path(path)
    store = DenseMapStore.open(path, mode="r")
    coverage = store.coverage
    n_tiles = int(coverage.size)
    computed = int((coverage == 1).sum())
    background = int((coverage == 2).sum())
    pending = int(np.count_nonzero(~store.done_mask))
    state = store.status
    if state != "complete":
        state = f"partial ({pending:,} of {n_tiles:,} tiles pending: predict again to finish)"
    h, w = store.map_shape
    prov = store.provenance
    model = prov.get("model") or prov.get("model_name") or "unknown model"
    run = f" from run {prov['run_dir']}" if prov.get("run_dir") else ""
    lines = [
        f"{path}: dense-map store, {state}",
        f"  tiles: {computed:,} computed, {background:,} background, {pending:,} pending "
        f"of {n_tiles:,}",
        f"  {len(store.genes):,} genes: {_genes(store.genes)}",
        f"  model: {model}{run}",
        f"  map: {w} x {h} px, {_mpp(store.map_mpp)}, {store.feature_dim} features, "
        f"{store.n_levels} level{'s' if store.n_levels != 1 else ''}",
    ]
    if store.slide_path:
        shape = store.slide_shape or ()
        size = f", {shape[1]} x {shape[0]} px" if len(shape) == 2 else ""
        lines.append(f"  slide: {store.slide_path}{size}, {_mpp(store.slide_mpp)}")
    if prov.get("created"):
        lines.append(f"  created: {prov['created']}")
    return lines


def _settings(config: dict[str, Any], epoch_trained: bool, crops: bool = True) -> str:
    """The run's training settings; ``crops=False`` (spot models: their input line gives
    the patch) leaves out the dense models' crop settings."""
    keys: list[tuple[str, str, str]] = [
        ("epochs", "epochs", "{}"),
        ("lr", "lr", "{:g}"),
        ("lr_schedule", "schedule", "{}"),
        ("batch_size", "batch", "{}"),
        ("crops_per_epoch", "crops/epoch", "{}"),
        ("mpp", "working", "{:g} µm/px"),
        ("crop_um", "crop", "{:g} µm"),
        ("seed", "seed", "{}"),
    ]
    if not epoch_trained:  # a closed-form fit (no history): no epochs, lr, ...
        keys = [k for k in keys if k[0] in ("mpp", "crop_um", "seed")]
    if not crops:
        keys = [k for k in keys if k[0] not in ("crops_per_epoch", "mpp", "crop_um")]
    parts = []
    for key, label, fmt in keys:
        if config.get(key) is not None:
            try:
                parts.append(f"{label} {fmt.format(config[key])}")
            except (TypeError, ValueError):
                parts.append(f"{label} {config[key]}")
    return ", ".join(parts)


def describe_run(path: str | os.PathLike[str]) -> list[str]:
    """Model, genes, training settings and (when evaluated) metrics of a run folder."""
    from .models.checkpoint import WEIGHTS_NAME, read_checkpoint_config

    path = Path(path)
    meta = read_checkpoint_config(path)
    model = str(meta["model"])
    model_config = meta.get("model_config", {}) or {}
    config = meta.get("config", {}) or {}
    extra = meta.get("extra", {}) or {}
    genes = [str(g) for g in meta["genes"]]
    backbone = f" ({model_config['backbone']})" if model_config.get("backbone") else ""
    weights = "" if (path / WEIGHTS_NAME).is_file() else f" — no {WEIGHTS_NAME}!"
    lines = [
        f"{path}: run folder, {model}{backbone}{weights}",
        _kind_line(model, meta.get("kind")),
        _input_line(meta),
        f"  {len(genes):,} genes: {_genes(genes)}",
    ]
    history = extra.get("history") or []
    spot = meta.get("kind") == "spot"
    settings = _settings(config, epoch_trained=bool(history), crops=not spot)
    if settings:
        lines.append(f"  training: {settings}")
    trained_on = [str(s) for s in extra.get("sections", []) or []]
    if trained_on:
        lines.append(f"  trained on: {', '.join(trained_on)}")
    if history and isinstance(history[-1], dict) and "loss" in history[-1]:
        last = history[-1]
        lines.append(f"  last loss: {float(last['loss']):.4g} (epoch {last.get('epoch', '?')})")
    if meta.get("created"):
        lines.append(f"  created: {meta['created']}")
    lines += _metrics_lines(path / METRICS_NAME, trained_on)
    return lines


_KIND_WORDS = {"dense": "dense map", "spot": "per spot"}


def _kind_line(model: str, kind: Any) -> str:
    """``  kind: dense map — <the registry's one-line description>``. The kind comes from
    the checkpoint, else (older runs) from the registered class; the description from the
    registry (left out when this installation does not know the model)."""
    from .models.registry import describe_models, get_model_class

    summary = describe_models().get(model.lower(), "")
    if kind is None:
        try:
            kind = get_model_class(model).kind
        except KeyError:
            kind = None
    words = _KIND_WORDS.get(str(kind), "unknown (model not installed)" if kind is None else kind)
    return f"  kind: {words}" + (f" — {summary}" if summary else "")


def _rgb(values: Any) -> str:
    try:
        return " ".join(f"{float(v):.4g}" for v in values)
    except (TypeError, ValueError):
        return str(values)


def _input_line(meta: dict[str, Any]) -> str:
    """``  input: ...`` from the checkpoint's input spec (``config.json`` → ``input``)."""
    from .models.base import InputSpec

    raw = meta.get("input")
    if not isinstance(raw, dict):
        mpp = (meta.get("extra") or {}).get("microns_per_pixel")
        return f"  input: {_mpp(mpp)} (input spec not recorded: a run saved before it was)"
    try:
        spec = InputSpec.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        return f"  input: unreadable input spec {raw!r}"
    parts = [_mpp(spec.mpp if spec.mpp is not None else meta.get("working_mpp"))]
    if spec.patch_px is not None:
        um = f" = {spec.patch_um:.4g} µm" if spec.patch_um is not None else ""
        parts.append(f"patches {spec.patch_px} px{um}")
    else:
        grid = f", windows multiple of {spec.input_multiple} px" if spec.input_multiple > 1 else ""
        parts.append(f"stride {spec.stride}{grid}")
        if spec.receptive_field_px:
            parts.append(f"receptive field {spec.receptive_field_px:g} px")
    who = "by the model" if spec.normalizes_input else "by the caller"
    parts.append(f"RGB normalised {who} (mean {_rgb(spec.mean)}, std {_rgb(spec.std)})")
    if spec.context != "none":
        parts.append(f"context: {spec.context}")
    return "  input: " + ", ".join(parts)


def _metrics_lines(path: Path, trained_on: Sequence[str]) -> list[str]:
    if not path.is_file():
        return ["  not evaluated (histoexpress evaluate records its metrics here)"]
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        sections = dict(report["sections"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputFileError(path, f"not an evaluation report ({exc})") from exc
    lines = [f"  metrics ({path.name}):"]
    for name, res in sections.items():
        seen = " (a training section)" if name.split("#")[0] in trained_on else ""
        values = "  ".join(
            f"{key} {float(res[key]):.3f}" for key in ("pcc_mean", "pcc_heg50", "mse") if key in res
        )
        lines.append(f"    {name}: {values}  ({res.get('n_spots', '?')} spots){seen}")
    return lines
