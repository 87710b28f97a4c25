"""The training-run configuration (no torch import, so the CLI's ``--help`` stays instant)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The model a run trains unless told otherwise (``TrainConfig.model``, the CLI's ``--model``
#: default): the one place outside the registry that names a model.
DEFAULT_MODEL = "pixnet"


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(base: float, step: int, total: int, schedule: str, warmup: float) -> float:
    """The lr at ``step`` (0-based) of ``total`` for ``schedule`` (see :class:`TrainConfig`)."""
    import math

    if schedule == "constant" or total <= 1:
        return base
    n_warm = max(1, round(warmup * total))
    if step < n_warm:
        return base * (step + 1) / n_warm
    t = (step - n_warm) / max(1, total - n_warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@dataclass
class TrainConfig:
    """Settings of a training run (saved in ``config.json`` under ``"config"``).

    Defaults are sized for a 2-core CPU (``benchmarks/her2st_cv.py``: five leave-one-out
    folds of four her2st sections each, 32 epochs × 128 crops of 384 µm at 2 µm/px, trained
    and evaluated in 51 min, i.e. about 10 min per model; the mean PCC was 0.232 at 8
    epochs, 0.256 at 16 and 0.272 at 32, where PixNet passes the ridge baseline's 0.256);
    ``model`` is a registry name with a training task (:func:`.tasks.trainable_models`);
    ``model_config`` entries are the model's own settings (for PixNet runs they override
    :data:`.tasks.pixnet.PIXNET_CPU_DEFAULTS`).

    ``lr_schedule``: ``"constant"`` (the paper's Adam at a fixed lr) or ``"cosine"`` (linear
    warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero), set per step
    from the global step so a resumed run continues the same curve.

    ``precision``: the forward pass's autocast (:func:`napari_histoexpress.devices.autocast_dtype`;
    ``"auto"`` = bfloat16 on CUDA, float32 on CPU/MPS). Spot aggregation and the loss always
    run in float32, and float16 training scales its loss (``torch.amp.GradScaler``).
    """

    model: str = DEFAULT_MODEL
    n_genes: int | None = 250
    gene_file: str | None = None
    epochs: int = 32
    lr: float = 5e-4
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.05
    weight_decay: float = 1e-4
    lam: float = 0.5
    batch_size: int = 8
    crops_per_epoch: int = 128
    mpp: float = 2.0
    crop_um: float = 384.0
    jitter_um: float = 100.0
    colour_jitter: float = 0.1
    target_sum: float = 1e4
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        from ..devices import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
