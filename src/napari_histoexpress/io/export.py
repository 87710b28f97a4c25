"""Atomic writers: a result file is either complete or absent, never half-written.

Each writer writes to a hidden temporary file in the *destination folder* (same file
system, so the final :func:`os.replace` is an atomic rename that also replaces an existing
file) and removes the temporary file if anything fails. A missing destination folder is an
:class:`~napari_histoexpress.errors.InputFileError` rather than silently created: a typo in
an output path should be seen.

File modes: :func:`tempfile.mkstemp` creates its file with mode ``0600`` whatever the umask;
the finished file is given ``0666 & ~umask`` before the rename, as a plain ``open(path, "w")``
would create it (``0644`` under the usual umask ``022``, ``0664`` under ``002``), so results
can be shared like any other file the user writes. :func:`apply_umask` does the same for
writers elsewhere in the package that use a temporary name.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import InputFileError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``);
    elsewhere set and restored at once under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str], *, executable: bool = False) -> None:
    """Give ``path`` the mode a normal create would: ``0666 & ~umask`` (``0777`` for a
    folder or with ``executable``)."""
    path = Path(path)
    base = 0o777 if executable or path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask() & 0o7777)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputFileError(path, f"output folder {folder} {what}")
    if path.is_dir():
        raise InputFileError(path, "is a folder; give the output a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputFileError(path, f"cannot write in {folder} ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        apply_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_folder_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` with a fresh folder path beside ``path`` (not yet created), then
    move the folder into place; an existing ``path`` folder is replaced only once the new
    one is complete (renamed aside, then removed). On failure nothing is left behind."""
    import shutil

    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputFileError(path, f"output folder {folder} {what}")
    if path.exists() and not path.is_dir():
        raise InputFileError(path, "exists and is a file; give a folder name (a zarr store)")
    try:
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise InputFileError(path, f"cannot write in {folder} ({exc.strerror or exc})") from exc
    tmp = tmp_root / path.name
    old = tmp_root / (path.name + ".old")
    try:
        write(tmp)
        apply_umask(tmp, executable=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    shutil.rmtree(tmp_root, ignore_errors=True)
    return path


def to_jsonable(value: Any, *, strict: bool = False, nan_to_none: bool = True) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays, tuples, sets and paths converted.

    The one JSON sanitiser of the package (checkpoints, map-store attributes, run records).
    Non-finite floats become ``None`` (standard JSON) unless ``nan_to_none=False``; a value of
    any other type raises ``TypeError`` when ``strict``, else becomes its ``str``.
    """
    if isinstance(value, Mapping):
        return {
            str(k): to_jsonable(v, strict=strict, nan_to_none=nan_to_none) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v, strict=strict, nan_to_none=nan_to_none) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), strict=strict, nan_to_none=nan_to_none)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), strict=strict, nan_to_none=nan_to_none)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | float | bool):
        if nan_to_none and isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    if strict:
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
    return str(value)


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
