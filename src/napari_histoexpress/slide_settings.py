"""Per-slide settings the user chose, kept in the slide's project folder (Qt-free).

For now one setting: the slide's **µm/px** typed in the Predict widget, for slides whose
file carries no (or a wrong) resolution, e.g. a plain ``C2.jpg``. It is saved as
``<project folder>/slide.json`` (:func:`napari_histoexpress.project.project_dir`)::

    {"microns_per_pixel": 0.688}

and the reader applies it when the slide is opened again, so the layer's scale (and the
scale bar, drawn spots, predictions) are in µm at once.

Design choices:

- A value the user saved **overrides** the file's own metadata: the user only types one
  when the file's is missing or wrong, and reopening must give what they chose.
- The file is a small JSON object (room for later settings; unknown keys are kept when
  one setting is saved), written atomically (:func:`.io.export.write_text_atomic`).
- A missing file means "nothing saved"; an unreadable or invalid one raises
  :class:`~napari_histoexpress.errors.InputFileError` naming it (the reader logs it and
  opens the slide with its own metadata).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import InputFileError

SETTINGS_FILE = "slide.json"
MPP_KEY = "microns_per_pixel"
#: ``mpp_source`` of a slide layer whose µm/px came from its project folder.
MPP_SOURCE = "project (set by the user)"


def settings_path(slide_path: str | os.PathLike[str]) -> Path:
    """Where the slide's settings are (the file may not exist)."""
    from .project import project_dir

    return project_dir(slide_path) / SETTINGS_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot read the slide settings ({exc})") from exc
    if not isinstance(data, dict):
        raise InputFileError(path, "the slide settings are not a JSON object")
    return data


def valid_mpp(value: Any) -> float | None:
    """``value`` as a positive finite float, else ``None``."""
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def load_mpp(slide_path: str | os.PathLike[str]) -> float | None:
    """The µm/px saved for the slide, or ``None`` when none was saved."""
    path = settings_path(slide_path)
    if not path.is_file():
        return None
    data = _read(path)
    if MPP_KEY not in data:
        return None
    mpp = valid_mpp(data[MPP_KEY])
    if mpp is None:
        raise InputFileError(path, f"{MPP_KEY} must be a positive number, got {data[MPP_KEY]!r}")
    return mpp


def save_mpp(slide_path: str | os.PathLike[str], mpp: float) -> Path:
    """Save the slide's µm/px in its project folder (created if needed); returns the file."""
    from .io.export import write_text_atomic
    from .project import project_dir

    value = valid_mpp(mpp)
    if value is None:
        raise ValueError(f"µm/px must be a positive number, got {mpp!r}")
    path = project_dir(slide_path, create=True) / SETTINGS_FILE
    data = _read(path) if path.is_file() else {}
    data[MPP_KEY] = value
    return write_text_atomic(json.dumps(data, indent=2) + "\n", path)
