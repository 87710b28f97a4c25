"""The one registry that maps model names to classes (CLI, widgets, checkpoints and tests).

A registered class is a :class:`~napari_histoexpress.models.base.HistoModel` subclass (a
:class:`~.base.DenseModel` or a :class:`~.base.SpotModel`): ``from_config(dict)`` builds it,
``config_dict()`` is what :func:`~napari_histoexpress.models.checkpoint.save_checkpoint`
records. Register with the decorator::

    @register_model("pixnet")
    class PixNet(nn.Module, DenseModel): ...

This module is the only place model names appear besides each model's own
``@register_model("...")``: everything else (CLI choices and help, widgets, the run
description, error messages) asks :func:`available_models`, :func:`models_of_kind` or
:func:`describe_models`.

Built-in models live in modules that are imported lazily on first lookup (so importing the
registry stays cheap and a broken optional model does not break the others).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # imported at run time only where needed: the registry stays cheap
    from .base import HistoModel, ModelKind

__all__ = [
    "available_models",
    "build_model",
    "describe_models",
    "get_model_class",
    "model_name_of",
    "models_of_kind",
    "register_model",
]

M = TypeVar("M", bound="type[HistoModel]")

# name -> module that registers it when imported
_BUILTIN_MODULES: dict[str, str] = {
    "pixnet": "napari_histoexpress.models.pixnet",
    "ridge": "napari_histoexpress.models.ridge",
    "hage": "napari_histoexpress.models.hage",
    "dkan": "napari_histoexpress.models.dkan",
    "align-st": "napari_histoexpress.models.align_st",
}
_REGISTRY: dict[str, type[HistoModel]] = {}
_KINDS = ("dense", "spot")


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register ``cls`` under ``name`` (lower-case) and set
    ``cls.registry_name``.

    Re-registering the same class (module reload) is allowed; another class under a taken
    name raises ``ValueError``; a class that is not a :class:`~.base.HistoModel` subclass
    raises ``TypeError``.
    """
    key = name.lower()

    def decorator(cls: M) -> M:
        from .base import HistoModel

        old = _REGISTRY.get(key)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {key!r} is already registered to {old.__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, HistoModel)):
            raise TypeError(
                f"{getattr(cls, '__name__', cls)!r} is not a HistoModel: subclass DenseModel or "
                "SpotModel (napari_histoexpress.models.base), which define from_config, "
                "config_dict, input_spec and gene_head"
            )
        if getattr(cls, "kind", None) not in _KINDS:
            raise TypeError(f"{cls.__name__}.kind must be 'dense' or 'spot'")
        _REGISTRY[key] = cls
        cls.registry_name = key
        return cls

    return decorator


def _import_builtin(name: str) -> None:
    module = _BUILTIN_MODULES.get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)


def get_model_class(name: str) -> type[HistoModel]:
    """The class registered under ``name``; ``KeyError`` listing the available names."""
    key = name.lower()
    try:
        _import_builtin(key)
    except ImportError as exc:
        raise KeyError(f"model {name!r} is known but cannot be imported: {exc}") from exc
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[key]


def available_models() -> list[str]:
    """Sorted names of all models (built-ins whose module cannot be imported are left out)."""
    for key in _BUILTIN_MODULES:
        try:
            _import_builtin(key)
        except ImportError:
            continue
    return sorted(_REGISTRY)


def models_of_kind(kind: ModelKind) -> list[str]:
    """Sorted names of the models of one kind: ``"dense"`` (a dense feature map, whole-slide
    prediction) or ``"spot"`` (per-spot/patch encoders)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'dense' or 'spot', got {kind!r}")
    return [name for name in available_models() if _REGISTRY[name].kind == kind]


def describe_models() -> dict[str, str]:
    """``{name: one-line summary}`` of every model, for docs and CLI help: the first line of
    each class's own docstring (not an inherited one; empty when the class has none)."""
    out: dict[str, str] = {}
    for name in available_models():
        doc = inspect.cleandoc(_REGISTRY[name].__dict__.get("__doc__") or "")
        out[name] = doc.splitlines()[0].strip() if doc else ""
    return out


def build_model(name: str, config: Mapping[str, Any] | None = None) -> HistoModel:
    """``get_model_class(name).from_config(config or {})``."""
    return get_model_class(name).from_config(dict(config or {}))


def model_name_of(model: Any) -> str:
    """The registry name of a model instance (``ValueError`` if its class is unregistered)."""
    name = getattr(type(model), "registry_name", None)
    if name is None or _REGISTRY.get(name) is not type(model):
        raise ValueError(f"{type(model).__name__} is not a registered model class")
    return name
