"""The one registry that maps model names to classes (CLI, widgets, checkpoints and tests).

A registered class must provide ``from_config(config: dict) -> model`` (a classmethod) and,
to be saved with :func:`~napari_histoexpress.models.checkpoint.save_checkpoint`,
``config_dict() -> dict`` (JSON-able). Register with the decorator::

    @register_model("pixnet")
    class PixNet(nn.Module): ...

Built-in models live in modules that are imported lazily on first lookup (so importing the
registry stays cheap and a broken optional model does not break the others).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

__all__ = [
    "available_models",
    "build_model",
    "get_model",
    "get_model_class",
    "model_name_of",
    "register_model",
]

T = TypeVar("T", bound=type)


class ModelClass(Protocol):
    """A registered model class (the class object itself, not an instance)."""

    __name__: str
    __qualname__: str

    def from_config(self, config: dict[str, Any], /) -> Any:
        """The ``from_config`` classmethod: a model built from a plain config dict."""
        ...


# name -> module that registers it when imported
_BUILTIN_MODULES: dict[str, str] = {
    "pixnet": "napari_histoexpress.models.pixnet",
    "ridge": "napari_histoexpress.models.ridge",
}
_REGISTRY: dict[str, ModelClass] = {}


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: register ``cls`` under ``name`` (lower-case) and set
    ``cls.registry_name``. Re-registering the same class (module reload) is allowed; another
    class under a taken name raises ``ValueError``."""
    key = name.lower()

    def decorator(cls: T) -> T:
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"{cls.__name__} must define a from_config(dict) classmethod")
        old = _REGISTRY.get(key)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {key!r} is already registered to {old.__qualname__}")
        _REGISTRY[key] = cast(ModelClass, cls)  # from_config checked just above
        cls.registry_name = key  # type: ignore[attr-defined]
        return cls

    return decorator


def _import_builtin(name: str) -> None:
    module = _BUILTIN_MODULES.get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module)


def get_model_class(name: str) -> ModelClass:
    """The class registered under ``name``; ``KeyError`` listing the available names."""
    key = name.lower()
    try:
        _import_builtin(key)
    except ImportError as exc:
        raise KeyError(f"model {name!r} is known but cannot be imported: {exc}") from exc
    if key not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[key]


#: Alias of :func:`get_model_class`.
get_model = get_model_class


def available_models() -> list[str]:
    """Sorted names of all models (built-ins whose module cannot be imported are left out)."""
    for key in _BUILTIN_MODULES:
        try:
            _import_builtin(key)
        except ImportError:
            continue
    return sorted(_REGISTRY)


def build_model(name: str, config: dict[str, Any] | None = None) -> Any:
    """``get_model_class(name).from_config(config or {})``."""
    return get_model_class(name).from_config(dict(config or {}))


def model_name_of(model: Any) -> str:
    """The registry name of a model instance (``ValueError`` if its class is unregistered)."""
    name = getattr(type(model), "registry_name", None)
    if name is None or _REGISTRY.get(name) is not type(model):
        raise ValueError(f"{type(model).__name__} is not a registered model class")
    return name
