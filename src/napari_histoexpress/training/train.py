"""Training: :func:`train`, the one entry point for every trainable model.

``train(sections, out_dir, config)`` looks up the task of ``config.model`` by convention
(:func:`.tasks.task_class`: ``training/tasks/<registry name>.py``), chooses the genes unless
given (:func:`choose_genes`) and runs the one training loop (:func:`.loop.run`: epochs,
resume, schedule, precision, checkpoint). What each model trains on and with which loss is
in its task module (:mod:`.tasks.pixnet`, :mod:`.tasks.ridge`).

:data:`TRAINABLE_MODELS` is derived, never listed: the registered models that have a task
(:func:`.tasks.trainable_models`; read lazily, since listing the models imports them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..devices import resolve_device
from .config import TrainConfig
from .sections import Section
from .tasks import trainable_models

__all__ = [  # and TRAINABLE_MODELS (module __getattr__)
    "TrainConfig",
    "choose_genes",
    "resolve_device",
    "train",
    "trainable_models",
]


def __getattr__(name: str) -> Any:
    """``TRAINABLE_MODELS``: a tuple of :func:`trainable_models`, computed when read."""
    if name == "TRAINABLE_MODELS":
        return tuple(trainable_models())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def choose_genes(sections: Sequence[Section], config: TrainConfig) -> list[str]:
    """The run's genes: ``config.gene_file``, else the ``config.n_genes`` highest-mean genes
    shared by the sections (:func:`~napari_histoexpress.expression.select_genes`)."""
    from ..expression import select_genes

    return select_genes([s.adata for s in sections], n=config.n_genes, gene_file=config.gene_file)


def train(
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    genes: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the model named by ``config.model`` on ``sections`` into the run folder
    ``out_dir`` (resumable); returns the run folder.

    ``genes`` default to :func:`choose_genes`. Raises ``ValueError`` naming the available
    models when ``config.model`` is not registered, or the trainable ones when it has no task.
    """
    from .loop import run
    from .tasks import task_class

    try:
        task = task_class(config.model)
    except KeyError as exc:  # unknown, or registered without a task: the message says which
        raise ValueError(str(exc.args[0])) from None
    genes = list(genes) if genes is not None else choose_genes(sections, config)
    return run(task, sections, out_dir, config, genes, progress=progress, log=log)
