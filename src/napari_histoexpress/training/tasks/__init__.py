"""Training tasks, one module per model, found by convention (no list of names here).

The task of the registered model ``NAME`` (:mod:`napari_histoexpress.models.registry`) is the
:class:`~napari_histoexpress.training.loop.TrainingTask` subclass that the module
``napari_histoexpress.training.tasks.NAME`` exposes as ``TASK`` (hyphens in ``NAME`` become
underscores: ``align-st`` → ``tasks/align_st.py``). A model is *trainable* when
that module exists: :func:`trainable_models` asks the registry for its models and keeps those
with a task module (found with :func:`importlib.util.find_spec`, which imports no task, so
listing them stays cheap). So a new model is one model file and one task file; the CLI's
``--model`` choices, :func:`~napari_histoexpress.training.train.train` and cross-validation
pick it up from here.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..loop import TrainingTask

__all__ = ["TASK_ATTRIBUTE", "has_task", "task_class", "trainable_models"]

#: the module attribute that holds a task module's TrainingTask subclass
TASK_ATTRIBUTE = "TASK"


def _module_name(model: str) -> str | None:
    name = model.lower().replace("-", "_")  # "align-st" -> tasks/align_st.py
    return f"{__name__}.{name}" if name.isidentifier() else None


def has_task(model: str) -> bool:
    """Whether a task module exists for ``model`` (without importing it)."""
    module = _module_name(model)
    return module is not None and importlib.util.find_spec(module) is not None


def trainable_models() -> list[str]:
    """Sorted names of the registered models that have a training task."""
    from ...models.registry import available_models

    return [name for name in available_models() if has_task(name)]


def task_class(model: str) -> type[TrainingTask]:
    """The :class:`~..loop.TrainingTask` subclass of ``model``.

    Raises ``KeyError`` naming the trainable models when ``model`` is not registered or has
    no task module, ``TypeError`` when the module's ``TASK`` is not a ``TrainingTask``.
    """
    from ...models.registry import get_model_class
    from ..loop import TrainingTask

    get_model_class(model)  # KeyError listing the registered models
    module = _module_name(model)
    if module is None or not has_task(model):
        raise KeyError(
            f"model {model!r} has no training task "
            f"(training/tasks/{model.lower().replace('-', '_')}.py); "
            f"trainable: {', '.join(trainable_models())}"
        )
    cls = getattr(importlib.import_module(module), TASK_ATTRIBUTE, None)
    if not (isinstance(cls, type) and issubclass(cls, TrainingTask)):
        raise TypeError(f"{module}.{TASK_ATTRIBUTE} must be a TrainingTask subclass, got {cls!r}")
    return cls
