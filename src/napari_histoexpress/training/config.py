"""The training-run configuration (no torch import, so the CLI's ``--help`` stays instant)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The model a run trains unless told otherwise (``TrainConfig.model``, the CLI's ``--model``
#: default): the one place outside the registry that names a model.
DEFAULT_MODEL = "pixnet"


LR_SCHEDULES = ("constant", "cosine", "step")

#: settings a training task may give defaults for (:attr:`TrainingTask.train_defaults
#: <napari_histoexpress.training.loop.TrainingTask.train_defaults>`): a run of that model
#: uses the task's value unless the run sets it (:meth:`TrainConfig.for_model`)
TASK_DEFAULTABLE = (
    "epochs",
    "lr",
    "lr_schedule",
    "lr_step_epochs",
    "lr_gamma",
    "weight_decay",
    "batch_size",
)


def default_stain() -> dict[str, Any]:
    """``StainConfig().to_dict()`` (no augmentation, no normalisation), spelled out so that
    this module imports neither :mod:`napari_histoexpress.stain` nor torch."""
    return {"augment_sigma": 0.0, "augment_bias": 0.0, "normalize": "none", "reference": None}


def learning_rate(
    base: float,
    step: int,
    total: int,
    schedule: str,
    warmup: float,
    *,
    epochs: int = 1,
    step_epochs: int = 10,
    gamma: float = 0.5,
) -> float:
    """The lr at ``step`` (0-based) of ``total`` for ``schedule`` (see :class:`TrainConfig`;
    ``"step"`` needs the run's ``epochs`` to know the epoch of ``step``)."""
    import math

    if schedule == "step":  # torch's StepLR(step_epochs, gamma), per epoch, no warm-up
        epoch = step * max(1, epochs) // max(1, total)
        return base * gamma ** (epoch // max(1, step_epochs))
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
    and evaluated in 51 min, i.e. about 10 min per model; with random-init ResNet18 the mean
    PCC was 0.232 at 8 epochs, 0.256 at 16 and 0.272 at 32; with the default ImageNet
    EfficientNet-Lite0 encoder 0.290);
    ``model`` is a registry name with a training task (:func:`.tasks.trainable_models`);
    ``model_config`` entries are the model's own settings (for PixNet runs they override
    :data:`.tasks.pixnet.PIXNET_CPU_DEFAULTS`).

    ``lr_schedule``: ``"constant"`` (the paper's Adam at a fixed lr) or ``"cosine"`` (linear
    warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero), set per step
    from the global step so a resumed run continues the same curve; or ``"step"``: torch's
    ``StepLR``, the lr times ``lr_gamma`` every ``lr_step_epochs`` epochs (HAGE's
    StepLR(10, 0.5)).

    Per-model defaults: a model's training task may set its own defaults for
    :data:`TASK_DEFAULTABLE` settings (``epochs``, ``lr``, ``batch_size``, ...; HAGE's paper
    settings, for instance); :meth:`for_model` (what the CLI uses) applies them to every
    setting the caller does not give. ``TrainConfig(...)`` itself does not (the defaults
    below are PixNet's).

    ``feature_cache``: where spot models that train on frozen-encoder features (the ridge
    baseline, HAGE) keep them between runs and folds
    (:mod:`napari_histoexpress.models.feature_cache`): ``"auto"`` (default) the user cache
    folder, ``"none"`` no disk cache (encoded once per run, in memory), or a folder. It
    never changes a result, so neither the resume fingerprint nor cross-validation's fold
    reuse compare it.

    ``encoder_lr_scale``: the encoder's learning rate is ``lr × encoder_lr_scale`` (tasks
    with a pretrained encoder, i.e. PixNet; the decoder and head keep ``lr``), through an
    optimiser parameter group whose ``lr_scale`` the loop multiplies into the scheduled lr
    at every step. ``1.0`` (default) is one group over all parameters, exactly the paper's
    Adam. ``0`` freezes the encoder: its parameters get ``requires_grad = False`` and are
    left out of the optimiser, and it stays in eval mode during training, so its BatchNorm
    running statistics stay the pretrained ones (a frozen encoder whose statistics drift
    with the training crops would no longer be the pretrained one).

    ``stain``: the run's stain settings, a
    :meth:`~napari_histoexpress.stain.StainConfig.to_dict` (default: off, bit-identical to a
    run without them). ``augment_sigma``/``augment_bias``: HED stain augmentation of the
    training batches (PixNet; a closed-form fit such as ridge ignores it).
    ``normalize`` (``"macenko"``/``"reinhard"``): the training crops, evaluation crops and
    prediction tiles are stain-normalised to one reference, fitted by training on the
    training sections only (:mod:`.stain_fit`) unless ``reference`` is given; the fitted
    reference is what the run's ``config.json`` records under ``config.stain`` and
    ``input.stain``, while the resume fingerprint and cross-validation's fold reuse compare
    the settings as given. Invalid values raise
    :class:`~napari_histoexpress.errors.SettingError` (keys ``stain_augment_sigma``,
    ``stain_augment_bias``, ``stain_normalize``).

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
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    weight_decay: float = 1e-4
    encoder_lr_scale: float = 1.0
    lam: float = 0.5
    batch_size: int = 8
    crops_per_epoch: int = 128
    mpp: float = 2.0
    crop_um: float = 384.0
    jitter_um: float = 100.0
    colour_jitter: float = 0.1
    stain: dict[str, Any] = field(default_factory=default_stain)
    target_sum: float = 1e4
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    feature_cache: str = "auto"
    model_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import math

        scale = self.encoder_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ValueError(f"encoder_lr_scale must be a number, got {scale!r}")
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"encoder_lr_scale must be 0 or more, got {scale!r}")
        self.encoder_lr_scale = float(scale)
        if self.stain != default_stain():  # (the default needs no check: no torch import)
            from ..stain import StainConfig

            if self.stain is not None and not isinstance(self.stain, dict):
                raise ValueError(f"stain must be a dict of stain settings, got {self.stain!r}")
            self.stain = StainConfig.from_dict(self.stain).to_dict()
        if int(self.lr_step_epochs) < 1 or not 0 < float(self.lr_gamma) <= 1:
            raise ValueError(
                f"lr_step_epochs must be >= 1 and lr_gamma in (0, 1], got "
                f"{self.lr_step_epochs!r}, {self.lr_gamma!r}"
            )
        self.lr_step_epochs, self.lr_gamma = int(self.lr_step_epochs), float(self.lr_gamma)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        from ..devices import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_model(cls, model: str = DEFAULT_MODEL, **given: Any) -> TrainConfig:
        """A config for ``model`` whose :data:`TASK_DEFAULTABLE` settings not in ``given``
        (or given as ``None``) are the model's training-task defaults
        (``TrainingTask.train_defaults``), and the class defaults otherwise. Imports the
        task (torch). ``KeyError`` when ``model`` has no training task."""
        from .tasks import task_class

        settings = {k: v for k, v in given.items() if v is not None}
        for key, value in task_class(model).train_defaults.items():
            if key not in TASK_DEFAULTABLE:
                raise ValueError(f"{model}: a task cannot set a default for {key!r}")
            settings.setdefault(key, value)
        return cls(model=model, **settings)

    def stain_config(self) -> Any:
        """:attr:`stain` as a :class:`~napari_histoexpress.stain.StainConfig` (imports it;
        typed ``Any`` so that this module names nothing of :mod:`~napari_histoexpress.stain`
        at import time)."""
        from ..stain import StainConfig

        return StainConfig.from_dict(self.stain)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
