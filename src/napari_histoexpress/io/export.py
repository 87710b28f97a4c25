"""Atomic writers: a result file is either complete or absent, never half-written.

Each writer writes to a hidden temporary file in the *destination folder* (same file
system, so the final :func:`os.replace` is an atomic rename that also replaces an existing
file) and removes the temporary file if anything fails. A missing destination folder is an
:class:`~napari_histoexpress.errors.InputFileError` rather than silently created: a typo in
an output path should be seen.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from ..errors import InputFileError


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputFileError(path, f"output folder {folder} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def h5ad_safe(value: Any) -> Any:
    """``value`` with every ``None`` a dict holds dropped and every ``None`` in a list made
    ``"None"``: h5ad (``adata.uns``) cannot store ``None``. Other values pass unchanged."""
    if isinstance(value, dict):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [str(v) if v is None else h5ad_safe(v) for v in value]
    return value


def write_h5ad_atomic(adata: AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` (``.h5ad``) atomically; returns ``path``."""
    return write_atomic(path, lambda tmp: adata.write_h5ad(tmp))


def write_csv_atomic(df: pd.DataFrame, path: str | Path, *, index: bool = True) -> Path:
    """Write ``df`` to ``path`` as CSV atomically (index written unless ``index=False``)."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=index))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_png_atomic(rgb: Any, path: str | Path) -> Path:
    """Write an ``(h, w, 3)`` uint8 array as PNG atomically."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
