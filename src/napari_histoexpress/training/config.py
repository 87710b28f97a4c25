"""The training-run configuration (no torch import, so the CLI's ``--help`` stays instant)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Settings of a training run (saved in ``config.json`` under ``"config"``)."""

    model: str = "pixnet"
    n_genes: int | None = 250
    gene_file: str | None = None
    epochs: int = 20
    lr: float = 5e-4
    weight_decay: float = 1e-4
    lam: float = 0.5
    batch_size: int = 8
    crops_per_epoch: int = 512
    mpp: float = 2.0
    crop_um: float = 512.0
    jitter_um: float = 100.0
    colour_jitter: float = 0.1
    target_sum: float = 1e4
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    model_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
