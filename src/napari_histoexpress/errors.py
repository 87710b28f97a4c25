"""Exceptions with messages a user can act on: they name the file and the problem."""

from __future__ import annotations

from os import PathLike


class HistoExpressError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputFileError(HistoExpressError, ValueError):
    """A file or folder given by the user cannot be used.

    The message always starts with the path, then says what is wrong, e.g.
    ``"/data/C2.tif: truncated TIFF (tile 12 of level 0 ends past the end of the file)"``.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class StoreMismatchError(InputFileError):
    """An existing map store was made with other settings and cannot be resumed (predict
    afresh, e.g. ``resume=False``, or write elsewhere)."""


class MissingResolutionError(InputFileError):
    """The µm/px of a slide is unknown and was needed (pass it explicitly)."""
