"""Evaluate a trained run on sections with the literature's metrics.

Spot predictions follow the model's kind (:mod:`napari_histoexpress.models.base`), never its
name:

* **dense models** (:class:`~napari_histoexpress.models.base.DenseModel`, e.g. PixNet): a crop
  of ``crop_um`` µm centred on each spot at the run's working µm/px (the same context the
  model was trained with), the dense map averaged inside the spot's disk
  (``model.spot_predictions``);
* **spot models** (:class:`~napari_histoexpress.models.base.SpotModel`, e.g. the ridge
  baseline): each spot's patch (``input_spec().patch_px`` px at its working µm/px, RGB in
  [0, 1]) encoded by the model's own
  :meth:`~napari_histoexpress.models.base.SpotModel.encode_spots`, then the gene head
  ``features @ W + b`` in float64. Models that need context beyond the patch
  (``input_spec().context != "none"``) get the whole section in one call, with every spot's
  position in µm. Encoders run in float32 (metrics independent of the GPU's autocast).

Stain normalisation: when the run was trained with it (:func:`run_stain`: ``config.json``'s
``input.stain``, else ``config.stain``), every crop or patch of a section is normalised to the
run's reference before the model sees it, with the section's own source stains estimated from
its own crops (:func:`~.stain_fit.section_normalizer` on :func:`~.stain_fit.stain_crops`, the
training rule) — the prediction-time rule: it uses the section's pixels, never its labels.

Metrics per section: :func:`~napari_histoexpress.metrics.evaluate_predictions`. Every section
must measure all the run's genes (checked before predicting anything).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputFileError
from .sections import Section

if TYPE_CHECKING:
    from ..stain import StainConfig, StainNormalizer

log = logging.getLogger(__name__)


def run_stain(meta: Mapping[str, Any]) -> StainConfig:
    """The stain settings a run was trained with: ``config.json``'s ``input.stain`` (the
    model's input spec), else ``config.stain``; the defaults (none) for runs without."""
    from ..models.checkpoint import checkpoint_stain
    from ..stain import StainConfig

    return StainConfig.from_dict(checkpoint_stain(meta))


def section_stain(
    meta: Mapping[str, Any], section: Section, *, mpp: float, size_px: int
) -> StainNormalizer | None:
    """The run's stain normaliser with ``section``'s own source stains (from its crops of
    ``size_px`` at ``mpp``), or ``None`` when the run does not normalise."""
    from .stain_fit import section_normalizer, stain_crops

    stain = run_stain(meta)
    if stain.normalize == "none":
        return None
    crops = stain_crops(section.pair(), mpp, size_px)
    return section_normalizer(stain.normalizer(), crops, name=section.name, log=log.warning)


def check_genes(run_dir: str | os.PathLike[str], genes: Sequence[str], section: Section) -> None:
    """Raise :class:`InputFileError` naming the section's file when it lacks genes the run
    predicts (checked before any prediction: a mismatch is a wrong pair of files, not
    something to find out after minutes of work)."""
    present = set(map(str, section.adata.var_names))
    missing = [g for g in genes if g not in present]
    if missing:
        raise InputFileError(
            section.path,
            f"lacks {len(missing)} of the {len(genes)} genes that the run {run_dir} predicts, "
            f"e.g. {missing[:5]}: evaluate on sections that measure them",
        )


def _place(model: Any, device: torch.device) -> None:
    """Move ``model`` to ``device`` for float32 inference: ``nn.Module.to`` + ``eval()``, or,
    for models that are not torch modules (they move only their encoder), the
    ``to(device, precision)`` convention of
    :class:`~napari_histoexpress.models.ridge.RidgeBaseline`."""
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    elif callable(getattr(model, "to", None)):
        model.to(device, precision="fp32")


def predict_section_spots(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    *,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = False,
    feature_cache: str = "none",
) -> np.ndarray:
    """``(n_spots, n_genes)`` predictions (normalised log1p scale) for every spot, by the
    model's kind (see the module docstring). ``feature_cache``: for spot models on a frozen
    encoder (``SpotModel.frozen_encoder()`` not ``None``), where their spot features are
    cached (``"none"``, ``"auto"`` or a folder, as a run's ``feature_cache``)."""
    from ..devices import resolve_device

    dev = resolve_device(device)
    kind = getattr(model, "kind", None)
    if kind == "dense":
        return _dense_spots(model, meta, section, batch_size, dev, progress)
    if kind == "spot" and model.needs_slide_context and model.input_spec().context == "spots":
        return _spot_graph_spots(model, meta, section, dev, feature_cache)
    if kind == "spot" and model.needs_slide_context:
        return _section_context_spots(model, meta, section, dev, feature_cache, progress)
    if kind == "spot":
        cacheable = model.frozen_encoder() is not None and model.input_spec().context == "none"
        if feature_cache != "none" and cacheable:
            return _cached_feature_spots(model, meta, section, dev, feature_cache)
        return _spot_model_spots(model, meta, section, batch_size, dev, progress)
    raise ValueError(f"no spot evaluation for model {meta.get('model')!r} (kind {kind!r})")


def _dense_spots(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    batch_size: int,
    dev: torch.device,
    progress: bool,
    *,
    features: bool = False,
) -> np.ndarray:
    """Spot means of the dense map of a crop centred on each spot (``features``: of the
    feature channels, ``(N, C)``, for another head: zero-shot genes)."""
    from tqdm.auto import tqdm

    from .config import TrainConfig
    from .spot_crops import SpotCropDataset

    if not callable(getattr(model, "spot_predictions", None)):
        raise TypeError(f"{type(model).__name__} has no spot_predictions(): no spot evaluation")
    cfg = TrainConfig.from_dict(meta.get("config", {}))
    spec = model.input_spec()
    mpp = float(spec.mpp) if spec.mpp is not None else cfg.mpp
    # a model that normalises its input itself gets RGB in [0, 1]
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if not spec.normalizes_input:
        mean, std = spec.mean, spec.std
    _place(model, dev)
    genes = list(meta["genes"])
    normalizer = section_stain(meta, section, mpp=mpp, size_px=round(cfg.crop_um / mpp))
    dataset = SpotCropDataset(
        [section.pair()],
        genes,
        stain=None if normalizer is None else [normalizer],
        mpp=mpp,
        crop_um=cfg.crop_um,
        jitter_um=0.0,
        augment=False,
        seed=0,
        target_sum=cfg.target_sum,
        mean=mean,
        std=std,
    )
    width = int(model.feature_dim) if features else len(genes)
    out = np.zeros((len(dataset), width), dtype=np.float32)
    size = dataset.config.size_px
    items = range(len(dataset))
    batches = [list(items[i : i + batch_size]) for i in range(0, len(dataset), batch_size)]
    with torch.inference_mode():
        for idx in tqdm(batches, disable=not progress, desc=section.name, unit="batch"):
            images = torch.stack([dataset[i]["image"] for i in idx]).to(dev)
            feats = model.features(images)
            # the anchor spot sits at the crop centre (pixel-centre convention of PixNet)
            centres = torch.full((len(idx), 2), size / 2.0 - 0.5)
            radii = torch.full((len(idx),), float(dataset.spot_radius_um(0) / mpp))
            where = (feats, centres, radii, images.shape[-2:])
            if features:
                sums, area = model.spot_feature_sums(*where, batch_index=torch.arange(len(idx)))
                out[idx] = (sums / area[:, None]).float().cpu().numpy()
                continue
            pred = model.spot_predictions(*where, batch_index=torch.arange(len(idx)))
            out[idx] = pred.float().cpu().numpy()
    return out


def _spot_model_spots(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    batch_size: int,
    dev: torch.device,
    progress: bool,
) -> np.ndarray:
    """``encode_spots`` of each spot's (stain-normalised) patch, then the gene head
    (float64)."""
    from tqdm.auto import tqdm

    from ..io.slides import read_region_at_mpp
    from ..io.spatial import spot_centres_px
    from ..models.base import SpotInputs
    from .spot_crops import section_mpp

    spec = model.input_spec()
    if spec.patch_px is None or spec.mpp is None:
        raise ValueError(f"{type(model).__name__}: its input spec gives no patch size or µm/px")
    _place(model, dev)
    adata, slide = section.pair()
    xy = spot_centres_px(adata)
    positions_um = xy * section_mpp(adata, slide)
    W, b = model.gene_head()
    p = int(spec.patch_px)
    normalizer = section_stain(meta, section, mpp=float(spec.mpp), size_px=p)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    step = batch_size if spec.context == "none" else max(1, len(xy))  # context: whole section
    out = np.zeros((len(xy), W.shape[1]), dtype=np.float32)
    chunks = [np.arange(i, min(i + step, len(xy))) for i in range(0, len(xy), step)]
    with torch.inference_mode():
        for idx in tqdm(chunks, disable=not progress, desc=section.name, unit="batch"):
            read = [
                np.asarray(read_region_at_mpp(slide, (float(x), float(y)), (p, p), spec.mpp))
                for x, y in xy[idx]
            ]
            if normalizer is not None:
                read = [normalizer.apply_numpy(patch) for patch in read]
            patches = np.stack(read)
            images = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
            if not spec.normalizes_input:
                images = (images - mean) / std
            spots = SpotInputs(images=images, positions_um=torch.from_numpy(positions_um[idx]))
            feats = model.encode_spots(spots).detach().double().cpu().numpy()
            out[idx] = (feats @ W + b).astype(np.float32)
    return out


def _frozen_spot_features(
    model: Any, meta: dict[str, Any], section: Section, dev: torch.device, feature_cache: str
) -> np.ndarray:
    """The raw frozen-encoder features of the section's spots (stain-normalised as the run
    was trained), through the feature cache unless ``feature_cache == "none"``; the model
    placed on ``dev``."""
    from .frozen_features import section_features

    spec = model.input_spec()
    _place(model, dev)
    normalizer = section_stain(meta, section, mpp=float(spec.mpp), size_px=int(spec.patch_px))
    (raw,) = section_features(
        [section.pair()],
        model.loaded_encoder(),
        feature_cache=feature_cache,
        normalizers=[normalizer],
        progress=False,
    )
    return raw


def _cached_feature_spots(
    model: Any, meta: dict[str, Any], section: Section, dev: torch.device, feature_cache: str
) -> np.ndarray:
    """A frozen-encoder spot model's predictions from its spot features, read from (or
    written to) the feature cache: ``encode_spots(features=...)``, then the gene head."""
    from ..models.base import SpotInputs

    raw = _frozen_spot_features(model, meta, section, dev, feature_cache)
    W, b = model.gene_head()
    with torch.inference_mode():
        feats = model.encode_spots(SpotInputs(features=torch.from_numpy(raw)))
    return (feats.detach().double().cpu().numpy() @ W + b).astype(np.float32)


def _spot_graph_spots(
    model: Any, meta: dict[str, Any], section: Section, dev: torch.device, feature_cache: str
) -> np.ndarray:
    """A spot model whose slide graph is over the measured spots (``context == "spots"``,
    ALIGN-ST): :func:`spot_graph_features`, then that slide's head."""
    feats, nodes = spot_graph_features(model, meta, section, dev, feature_cache)
    with torch.inference_mode():
        W, b = model.slide_gene_head(nodes)
    return (feats.detach().double().cpu().numpy() @ W + b).astype(np.float32)


def dense_spot_features(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    *,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """A dense model's spot means of its feature channels ``(N, C)`` (as its spot
    evaluation reads the map; any head ``W (C, k)``, ``b`` then gives ``feats @ W + b``)."""
    from ..devices import resolve_device

    if not callable(getattr(model, "spot_feature_sums", None)):
        raise TypeError(f"{type(model).__name__} has no spot_feature_sums()")
    return _dense_spots(
        model, meta, section, batch_size, resolve_device(device), progress, features=True
    )


def spot_graph_features(
    model: Any, meta: dict[str, Any], section: Section, dev: torch.device, feature_cache: str
) -> tuple[torch.Tensor, Any]:
    """The spots' store features and the nodes they were computed on, for a model whose
    slide graph is over the measured spots: the spots' frozen features (through the cache
    unless ``feature_cache == "none"``) as the slide's nodes
    (:func:`~.frozen_features.spot_nodes`), then
    :meth:`~..models.base.SpotModel.slide_context`."""
    from .frozen_features import spot_nodes

    raw = _frozen_spot_features(model, meta, section, dev, feature_cache)
    nodes = spot_nodes(section.pair(), raw, float(model.lattice_pitch_um))
    nodes.features = nodes.features.to(dev)
    with torch.inference_mode():
        feats = model.slide_context(nodes)
    return feats, nodes


def _section_context_spots(
    model: Any,
    meta: dict[str, Any],
    section: Section,
    dev: torch.device,
    feature_cache: str,
    progress: bool,
) -> np.ndarray:
    """A spot model with slide context: the section's lattice
    (:func:`~.section_lattice.section_lattice`, features through the cache unless
    ``feature_cache == "none"``), then :meth:`~..models.base.SpotModel.spot_context` of the
    spots and the gene head."""
    from .section_lattice import section_lattice

    spec = model.input_spec()
    _place(model, dev)
    normalizer = section_stain(meta, section, mpp=float(spec.mpp), size_px=int(spec.patch_px))
    lattice = section_lattice(
        section.pair(),
        model.loaded_encoder(),
        pitch_um=float(model.lattice_pitch_um),
        feature_cache=feature_cache,
        normalizer=normalizer,
        progress=progress,
    )
    W, b = model.gene_head()
    with torch.inference_mode():
        feats = model.spot_context(
            torch.from_numpy(lattice.spot_features),
            torch.from_numpy(lattice.spot_rc),
            lattice.nodes(dev),
        )
    return (feats.detach().double().cpu().numpy() @ W + b).astype(np.float32)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    sections: Sequence[Section],
    *,
    device: str = "auto",
    progress: bool = True,
    feature_cache: str = "none",
) -> dict[str, Any]:
    """Per-section metrics and their mean over sections: ``{'sections': {...}, 'mean': {...}}``
    (``feature_cache``: as for :func:`predict_section_spots`)."""
    from ..expression import expression_matrix
    from ..metrics import aggregate_folds, evaluate_predictions
    from ..models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(run_dir)
    genes = list(meta["genes"])
    for section in sections:
        check_genes(run_dir, genes, section)
    target_sum = float(meta.get("config", {}).get("target_sum", 1e4))
    results: dict[str, Any] = {}
    for section in sections:
        pred = predict_section_spots(
            model, meta, section, device=device, progress=progress, feature_cache=feature_cache
        )
        true = expression_matrix(section.adata, genes, target_sum)
        results[section.name] = evaluate_predictions(pred, true, genes, section=section.name)
    return {
        "run": str(Path(run_dir)),
        "model": meta["model"],
        "sections": results,
        "mean": aggregate_folds(list(results.values())),
    }
