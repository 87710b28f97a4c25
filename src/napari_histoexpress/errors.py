"""Exceptions and warnings with messages a user can act on: they name the file and the problem.

Which setting fixes it
----------------------
Messages never name a Python argument (``pass mpp=``): the same error reaches a script, the
``histoexpress`` command and the napari widgets, which call the setting differently
(``slide_mpp=``, ``--mpp``, the "Slide µm/px" field). Instead, an error or warning that a
setting can fix carries that setting's key in ``.setting`` (one of :data:`SETTINGS`), and
each front end adds its own hint: the CLI turns the key into its flag (``--mpp``), a widget
into its field. A message must read complete without the hint.
"""

from __future__ import annotations

from os import PathLike

#: The settings a user error or warning can point to (``.setting``), and what each is.
#: The keys are also the ``histoexpress`` flags' names (``"allow_missing_counts"`` is
#: ``--allow-missing-counts``), so the command maps them without a table.
SETTINGS: dict[str, str] = {
    "mpp": "the µm per pixel of the slide or image (level 0)",
    "restart": "discard an existing output (e.g. a partial map store) instead of resuming it",
    "allow_missing_counts": "import although most selected spots have no counts row",
    "tile_px": "the side of a prediction tile, in pixels at the model's working resolution",
    "batch_size": "how many tiles or crops go through the model at once",
    "device": "where the model runs (auto, cpu, cuda, mps)",
    "stain_augment_sigma": (
        "the relative strength of HED stain augmentation in training (0 = off, e.g. 0.05)"
    ),
    "stain_augment_bias": (
        "the additive strength of HED stain augmentation in training, in optical density "
        "(0 = off, e.g. 0.05)"
    ),
    "stain_normalize": (
        "the stain normalisation of training crops and prediction tiles (none, macenko, "
        "reinhard) and its reference"
    ),
}


def _check_setting(setting: str | None) -> str | None:
    if setting is not None and setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {sorted(SETTINGS)}")
    return setting


class HistoExpressError(Exception):
    """Base class of the errors this package raises on purpose."""

    #: Key of :data:`SETTINGS` that would fix the problem, or ``None``.
    setting: str | None = None


class SettingError(HistoExpressError, ValueError):
    """A setting's value cannot be used (not a file's fault), e.g. a tile size that is not a
    multiple of what the model needs. ``setting`` is a key of :data:`SETTINGS`; the message
    is the problem alone, worded without Python names (the front end says which field or
    flag it is)."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = _check_setting(setting)
        self.problem = problem
        super().__init__(problem)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.setting, self.problem))


class InputFileError(HistoExpressError, ValueError):
    """A file or folder given by the user cannot be used.

    The message always starts with the path, then says what is wrong, e.g.
    ``"/data/C2.tif: truncated TIFF (tile 12 of level 0 ends past the end of the file)"``.
    ``setting`` (a key of :data:`SETTINGS`) names the setting that would fix it, if any
    (default: the class's :attr:`DEFAULT_SETTING`).
    """

    #: The setting that fixes this kind of error when the raiser names none.
    DEFAULT_SETTING: str | None = None

    def __init__(
        self, path: str | PathLike[str], problem: str, *, setting: str | None = None
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.setting = _check_setting(setting or self.DEFAULT_SETTING)
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # keep the keyword-only setting when pickled (e.g. from a worker process)
        return (_rebuild, (type(self), self.path, self.problem, self.setting))


def _rebuild(
    cls: type[InputFileError], path: str, problem: str, setting: str | None
) -> InputFileError:
    return cls(path, problem, setting=setting)


class StoreMismatchError(InputFileError):
    """An existing map store was made with other settings and cannot be resumed (predict
    afresh, setting ``"restart"``, or write elsewhere)."""

    DEFAULT_SETTING = "restart"


class MissingResolutionError(InputFileError):
    """The µm/px of a slide is unknown and was needed (setting ``"mpp"``: give it)."""

    DEFAULT_SETTING = "mpp"


class InputFileWarning(UserWarning):
    """A usable input with something the user should know (spots dropped, µm/px unknown).

    Like :class:`InputFileError`: ``path``, ``problem``, an optional ``setting``, and the
    message ``"<path>: <problem>"``.
    """

    def __init__(
        self, path: str | PathLike[str], problem: str, *, setting: str | None = None
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.setting = _check_setting(setting)
        super().__init__(f"{self.path}: {problem}")


class MissingExtraError(HistoExpressError, ImportError):
    """A package of an optional extra is not installed (the message says how to install it,
    e.g. ``pip install "napari-histoexpress[pretrained]"``)."""
