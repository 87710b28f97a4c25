"""The user-cache folder of the package (ground floor: imports nothing of the package).

``$HISTOEXPRESS_HOME`` when set, else ``$XDG_CACHE_HOME/napari-histoexpress`` (``~/.cache``
by default). Its subfolders: ``projects/`` (project folders of slides in read-only places),
``weights/`` (converted pretrained weights), ``sample/`` and the like (generated data).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home"]


def cache_home(*parts: str) -> Path:
    """The package's user-cache folder, or ``parts`` below it (nothing is created)."""
    env = os.environ.get("HISTOEXPRESS_HOME")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))
        base = base / "napari-histoexpress"
    return base.joinpath(*parts)
