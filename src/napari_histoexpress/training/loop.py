"""The one training loop, and the :class:`TrainingTask` each model contributes to it.

Training a model is two parts:

* **the loop** (:func:`run`, this module), the same for every model: seeding, the device,
  epochs, the optimiser and its per-step learning rate (:func:`~.config.learning_rate`),
  autocast and ``GradScaler``, the tqdm bar, the per-epoch history and log line, resuming
  after an interruption, and the final checkpoint
  (:func:`~napari_histoexpress.models.checkpoint.save_checkpoint`);
* **a task** (a :class:`TrainingTask` subclass in ``training/tasks/<registry name>.py``,
  found by that convention, see :mod:`.tasks`): what only the model knows — its data, how
  the model is built and initialised, what a batch is, and its loss.

So a new model is one model file (``models/<name>.py``, registered) plus one task file;
nothing else names it.

Choices of the loop:

* **Seeding.** ``torch.manual_seed(config.seed)`` before :meth:`TrainingTask.build`, so a
  model's initialisation is a function of the seed; tasks draw their own randomness from
  seeded generators (kept in :meth:`TrainingTask.resume_state`) or from NumPy generators
  keyed on ``(seed, epoch, ...)``.
* **Learning rate** set on every parameter group at every step from the *global* step
  (``epoch · steps_per_epoch + step``), so a resumed run continues the same curve; a group
  with an ``"lr_scale"`` entry (a task's choice, e.g. PixNet's ``encoder_lr_scale``) gets
  the scheduled lr times it, every other group the scheduled lr itself.
* **Precision.** The loop owns the policy: :meth:`TrainingTask.autocast` is the context
  for the forward pass in ``config.precision`` (:func:`~napari_histoexpress.devices.autocast`);
  a task keeps reductions that need float32 (spot sums, losses) outside it. float16 scales
  the loss (``torch.amp.GradScaler``) and skips steps whose gradients overflow.
* **Losses.** :meth:`TrainingTask.step` returns named scalar losses; ``"loss"`` is the one
  back-propagated, and every name's mean over the epoch goes into the history (``"loss"``
  first), with whatever :meth:`TrainingTask.on_epoch_end` returns and the elapsed seconds.
* **Resume.** After every epoch, ``RUN_DIR/resume/state.safetensors`` (model and optimiser
  tensors, the torch RNG states, the task's :meth:`~TrainingTask.resume_state`) and
  ``state.json`` (epoch, history, optimiser scalars and parameter groups, the GradScaler's
  state, the fingerprint) are written atomically
  (:func:`~napari_histoexpress.io.export.write_atomic`; no pickle). A rerun whose
  fingerprint (config, genes, section files) matches continues after the last finished epoch
  and gives the same result as an uninterrupted run (tested); another fingerprint starts
  afresh.
* **Closed-form tasks** (:class:`ClosedFormTask`, e.g. the ridge baseline): no epochs, no
  optimiser and no resume; the loop calls :meth:`TrainingTask.fit` once, then writes the same
  final checkpoint.
* **Final checkpoint**: ``save_checkpoint(run_dir, model, config.to_dict(), genes, extra)``
  with ``extra = task.extra()`` plus the ``history`` of gradient tasks; written only when
  training ends (a killed run leaves only ``resume/``).
* **Stain settings** (``config.stain``): a task that fits them in :meth:`TrainingTask.build`
  (a stain-normalisation reference, :mod:`.stain_fit`) returns them from
  :meth:`TrainingTask.fitted_stain`; the checkpoint then records them under ``config.stain``
  (in place of the settings as given) and in the model's input spec (``input.stain``, see
  :func:`record_stain`). The resume fingerprint keeps the settings as given, so a resumed
  run refits the same reference and matches.
"""

from __future__ import annotations

import abc
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..devices import autocast, grad_scaler, resolve_device
from .config import TrainConfig, learning_rate
from .sections import Section

if TYPE_CHECKING:
    from ..models.base import HistoModel
    from ..stain import StainConfig

__all__ = ["RESUME_DIR", "ClosedFormTask", "GradientTask", "TrainingTask", "record_stain", "run"]

#: sub-folder of a run holding the state of its last finished epoch
RESUME_DIR = "resume"
#: run settings that never change a result (left out of the resume fingerprint)
_NOT_FINGERPRINTED = frozenset({"feature_cache"})


class TrainingTask(abc.ABC):
    """What one model contributes to :func:`run` (see the module docstring).

    The loop creates the task as ``TaskClass(config, device=..., log=...)`` and calls:

    1. :meth:`build` once (after seeding): data and model, the model on :attr:`device`;
    2. gradient tasks (:class:`GradientTask`), every epoch: :meth:`on_epoch_start`,
       :meth:`train_mode`, then for each batch of :meth:`batches` one :meth:`step` and one
       optimiser step, then :meth:`on_epoch_end`; :meth:`optimizer` once and
       :meth:`steps_per_epoch` for the learning-rate schedule;
       closed-form tasks (:class:`ClosedFormTask`): :meth:`fit` once instead;
    3. :meth:`extra` for the checkpoint.

    Attributes:
        closed_form: True for models fit in closed form (no gradient steps, e.g. ridge
            regression on frozen features): the loop calls :meth:`fit` instead of running
            epochs, and ``batches``/``step``/``optimizer`` are never called.
        config: the run's settings.
        device: where the model trains (resolved from ``config.device``).
        log: the run's log function (one line per call).
    """

    closed_form: ClassVar[bool] = False
    #: the model's own defaults for :data:`~.config.TASK_DEFAULTABLE` settings (epochs,
    #: lr, batch size, ...), applied by :meth:`TrainConfig.for_model
    #: <.config.TrainConfig.for_model>` (the CLI) to what a run does not set
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, config: TrainConfig, *, device: torch.device, log: Callable[[str], None] = print
    ) -> None:
        self.config = config
        self.device = device
        self.log = log

    # ------------------------------------------------------------------ both kinds
    @abc.abstractmethod
    def build(self, sections: Sequence[Section], genes: Sequence[str]) -> HistoModel:
        """Prepare the data of ``sections`` and return the model (built through the registry
        from ``config.model``, its head sized for ``genes``, placed on :attr:`device`)."""

    @abc.abstractmethod
    def model_settings(self, genes: Sequence[str]) -> dict[str, Any]:
        """The config :meth:`build` gives the registry for ``genes`` (``config.model_config``
        merged with the task's defaults). Cross-validation resolves it with the model class's
        :meth:`~napari_histoexpress.models.base.HistoModel.settings_of` and compares it with
        a finished fold's recorded model config before reusing the fold."""

    def extra(self) -> dict[str, Any]:
        """What the checkpoint records under ``extra`` besides the loop's ``history``
        (normalisation, working µm/px, what a closed-form fit chose, ...)."""
        return {}

    def autocast(self) -> AbstractContextManager[Any]:
        """The loop's mixed-precision context for the forward pass (``config.precision`` on
        :attr:`device`; a no-op for float32)."""
        ctx: AbstractContextManager[Any] = autocast(self.device, self.config.precision)
        return ctx

    def optimizer(self, model: Any) -> torch.optim.Optimizer:
        """The optimiser (default: Adam over ``model.parameters()`` with ``config.lr`` and
        ``config.weight_decay``, the paper's PixNet setting). The loop sets each group's
        ``lr`` at every step from the schedule, times the group's ``"lr_scale"`` when it has
        one (e.g. a pretrained encoder at a tenth of the decoder's rate; default 1)."""
        return torch.optim.Adam(
            model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    def train_mode(self, model: Any) -> None:
        """Put ``model`` in training mode at the start of each epoch (default
        ``model.train()``; a task with a frozen part keeps that part in eval mode)."""
        model.train()

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 (optional hook, no-op)
        """Called before the first batch of ``epoch`` (e.g. per-epoch clustering)."""

    def on_epoch_end(self, epoch: int) -> Mapping[str, float] | None:
        """Called after the last step of ``epoch``; the values returned (e.g. a validation
        score) are recorded in that epoch's history entry."""
        return None

    def fitted_stain(self) -> StainConfig | None:
        """The run's stain settings as fitted by :meth:`build` (the normalisation reference
        included), recorded in the checkpoint; ``None`` (default) when the task uses none
        or they are the defaults."""
        return None

    def resume_state(self) -> dict[str, torch.Tensor]:
        """The task's own state that a resumed run needs to continue exactly (e.g. the
        state of a random generator), as tensors; saved after every epoch."""
        return {}

    def load_resume_state(self, state: Mapping[str, torch.Tensor]) -> None:  # noqa: B027
        """Inverse of :meth:`resume_state` (called after :meth:`build` when resuming)."""


class GradientTask(TrainingTask):
    """A task trained by gradient steps: it defines the epoch's batches and one step."""

    closed_form: ClassVar[bool] = False

    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """Batches per epoch (sets the learning-rate schedule's length and the bar's total)."""

    @abc.abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of ``epoch`` (0-based), :meth:`steps_per_epoch` of them; must depend
        only on the seed and the epoch, so a resumed run sees the same batches."""

    @abc.abstractmethod
    def step(self, model: Any, batch: Any) -> Mapping[str, torch.Tensor]:
        """Named scalar losses of one batch; ``"loss"`` is back-propagated (the others are
        only recorded). Run the forward pass inside :meth:`autocast`."""


class ClosedFormTask(TrainingTask):
    """A task fit in closed form (no epochs, no optimiser): it defines :meth:`fit`."""

    closed_form: ClassVar[bool] = True

    @abc.abstractmethod
    def fit(self, model: Any) -> None:
        """Fit ``model`` in closed form on the data of :meth:`build`."""


# ---------------------------------------------------------------------- resume state
def _write_json(path: Path, obj: Any) -> None:
    from ..io.export import to_jsonable, write_text_atomic

    write_text_atomic(json.dumps(to_jsonable(obj, nan_to_none=False), indent=2), path)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch random states a run may draw from: the CPU one, and CUDA's on a GPU."""
    state = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save_resume(
    resume_dir: Path,
    model: Any,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Model + optimiser tensors (and ``tensors``) in safetensors, the rest in JSON (no
    pickle), each written atomically, JSON last. Both record the epoch: a crash between the
    two renames leaves files that disagree, which :func:`_resume_epochs_agree` refuses."""
    from safetensors.torch import save_file

    from ..io.export import write_atomic

    resume_dir.mkdir(parents=True, exist_ok=True)
    out = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, pstate in opt_state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                out[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    for key, value in (tensors or {}).items():
        out[key] = value.detach().cpu().contiguous()
    epoch = {"epoch": str(state.get("epoch"))}
    write_atomic(resume_dir / "state.safetensors", lambda tmp: save_file(out, tmp, metadata=epoch))
    _write_json(
        resume_dir / "state.json",
        {**state, "opt_param_groups": opt_state["param_groups"], "opt_scalars": scalars},
    )


def _resume_epochs_agree(resume_dir: Path, meta: Mapping[str, Any]) -> bool:
    """Whether ``state.safetensors`` is of the epoch ``state.json`` records (files written
    before the epoch was recorded in both: assumed to agree)."""
    from safetensors import safe_open

    try:
        with safe_open(str(resume_dir / "state.safetensors"), framework="pt") as f:
            saved = (f.metadata() or {}).get("epoch")
    except (OSError, ValueError, RuntimeError):  # missing or unreadable tensors
        return False
    return saved is None or saved == str(meta.get("epoch"))


def _load_resume(
    resume_dir: Path, model: Any, opt: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load model and optimiser states; returns ``(state.json without the optimiser,
    the other tensors by key)``."""
    from safetensors.torch import load_file

    meta = json.loads((resume_dir / "state.json").read_text())
    tensors = load_file(str(resume_dir / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta.pop("opt_scalars").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta.pop("opt_param_groups")})
    rest = {k: v for k, v in tensors.items() if not k.startswith(("model.", "opt."))}
    return meta, rest


def _resume(
    resume_dir: Path,
    fingerprint: dict[str, Any],
    task: GradientTask,
    model: Any,
    opt: torch.optim.Optimizer,
    scaler: Any,
    out: Path,
) -> tuple[int, list[dict[str, Any]]]:
    """``(epochs done, history)`` restored from ``resume_dir`` when its fingerprint matches
    (model, optimiser, RNG, task and GradScaler states loaded), else ``(0, [])``."""
    from ..io.export import to_jsonable

    if not (resume_dir / "state.json").exists():
        return 0, []
    meta = json.loads((resume_dir / "state.json").read_text())
    if meta.get("fingerprint") != to_jsonable(fingerprint, nan_to_none=False):
        task.log(f"{resume_dir}: saved state is from a different config; starting afresh")
        return 0, []
    if not _resume_epochs_agree(resume_dir, meta):
        task.log(f"{resume_dir}: saved state is incomplete; starting afresh")
        return 0, []
    meta, tensors = _load_resume(resume_dir, model, opt)
    if "rng.torch" in tensors:  # (runs saved before the RNG states were kept have none)
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and task.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], task.device)
    task.load_resume_state({k[5:]: v for k, v in tensors.items() if k.startswith("task.")})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    epoch = int(meta["epoch"])
    task.log(f"resuming {out} after epoch {epoch}")
    return epoch, list(meta["history"])


# ---------------------------------------------------------------------- the loop
def run(
    task_class: type[TrainingTask],
    sections: Sequence[Section],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    genes: Sequence[str],
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or fit) the model of ``task_class`` on ``sections`` into the run folder
    ``out_dir`` (resumable, see the module docstring); returns the run folder."""
    from ..models.checkpoint import save_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    genes = [str(g) for g in genes]
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    task = task_class(config, device=device, log=log)
    model: Any = task.build(sections, genes)
    extra: dict[str, Any]
    if isinstance(task, ClosedFormTask):
        task.fit(model)
        extra = task.extra()
    elif isinstance(task, GradientTask):
        history = _gradient_epochs(task, model, sections, out, config, genes, device, progress)
        model.eval()
        extra = {**task.extra(), "history": history}
    else:
        raise TypeError(f"{type(task).__name__} is neither a GradientTask nor a ClosedFormTask")
    model.set_genes(genes)
    recorded = config.to_dict()
    stain = task.fitted_stain()
    if stain is not None:
        recorded["stain"] = stain.to_dict()
        record_stain(model, recorded["stain"])
    save_checkpoint(out, model, recorded, genes, extra=extra)
    return out


def record_stain(model: Any, stain: Mapping[str, Any]) -> None:
    """Record the fitted stain settings on the model (``HistoModel.stain``), so its input
    spec and the checkpoint's ``input.stain`` carry them."""
    model.stain = dict(stain)


def _gradient_epochs(
    task: GradientTask,
    model: Any,
    sections: Sequence[Section],
    out: Path,
    config: TrainConfig,
    genes: list[str],
    device: torch.device,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run (or resume) the epochs of a gradient task; returns the history."""
    from tqdm.auto import tqdm

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{type(task).__name__}: gradient training needs a torch.nn.Module")
    opt = task.optimizer(model)
    scaler = grad_scaler(device, config.precision)

    resume_dir = out / RESUME_DIR
    fingerprint = {
        "config": {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED},
        "genes": genes,
        "sections": [str(s.path) for s in sections],
    }
    start_epoch, history = _resume(resume_dir, fingerprint, task, model, opt, scaler, out)

    steps_per_epoch = task.steps_per_epoch()
    total_steps = steps_per_epoch * config.epochs
    t0 = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        task.on_epoch_start(epoch)
        task.train_mode(model)
        losses: dict[str, list[float]] = {}
        bar = tqdm(
            task.batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for step, batch in enumerate(bar):
            lr = learning_rate(
                config.lr,
                epoch * steps_per_epoch + step,
                total_steps,
                config.lr_schedule,
                config.warmup_fraction,
                epochs=config.epochs,
                step_epochs=config.lr_step_epochs,
                gamma=config.lr_gamma,
            )
            for group in opt.param_groups:  # a group's optional lr_scale (default 1)
                group["lr"] = lr * group.get("lr_scale", 1.0)
            named = task.step(model, batch)
            loss = named["loss"]
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # float16 autocast: scaled loss, unscaled (and skipped if inf) step
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            for name in ("loss", *(k for k in named if k != "loss")):
                losses.setdefault(name, []).append(float(named[name].detach()))
            bar.set_postfix(loss=f"{np.mean(losses['loss']):.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({name: float(np.mean(values)) for name, values in losses.items()})
        record.update({k: float(v) for k, v in (task.on_epoch_end(epoch) or {}).items()})
        record["seconds"] = round(time.perf_counter() - t0, 1)
        history.append(record)
        task.log(
            f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f} "
            f"({record['seconds']:.0f} s)"
        )
        state: dict[str, Any] = {"epoch": epoch + 1, "history": history, "fingerprint": fingerprint}
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        tensors = _rng_state(device)
        tensors.update({f"task.{k}": v for k, v in task.resume_state().items()})
        _save_resume(resume_dir, model, opt, state, tensors)
    return history
