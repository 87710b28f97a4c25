"""The files of a cohort (Qt-free, imports no other layer): its slide list and its manifest.

**Slide list** (``--slides-file list.csv``, :func:`read_slide_list`): a CSV (or a TSV, or
``;``-separated: told by the header line) with a
``slide`` column, the slide's path, **relative to the list file's folder** (absolute paths
work too), an optional ``mpp`` column (µm/px, used where the slide's own metadata lacks it;
empty cells mean "read it from the file") and any other columns (patient, grade, batch, …):
metadata carried into the manifest and the cohort AnnData's ``obs`` as text. Glob patterns
(``--slides 'cohort/*.svs'``, :func:`slides_from_globs`) give slides without metadata.

**Names**: each slide's map is ``<name>.zarr`` in the cohort folder, ``name`` the file name
without its extensions (``C2.ome.tif`` → ``C2``); two slides of the same name in different
folders get the first 8 hex digits of their absolute path's SHA-1 appended
(:func:`assign_names`), so no two slides ever share a map.

**Manifest** (``manifest.csv`` in the cohort folder, :func:`write_manifest`): one row per
slide, columns :data:`MANIFEST_COLUMNS` then the slide list's metadata columns. ``status``
is one of :data:`STATUSES`. It is written atomically (a temporary file in the same folder,
then :func:`os.replace`), so a crash or a killed driver never leaves half a manifest.

**Checksum**: the SHA-256 of the slide file (:func:`file_checksum`, streamed in 8 MiB
blocks). Re-hashing hundreds of multi-GB slides on every re-run would cost more than the
check is worth, so, like ``rsync`` and ``git``'s index, a slide whose size and modification
time (ns) are those recorded in the manifest keeps its recorded checksum
(:func:`checksum_if_changed`); a changed size or time re-hashes it.

**Registry**: every cohort folder is recorded in the user cache (``cohorts.json``,
:func:`register_cohort`), so the project-folder logic (``project.find_maps``) finds a
slide's map in any cohort that predicted it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputFileError
from ..user_cache import cache_home

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "STATUSES",
    "CohortSlide",
    "assign_names",
    "checksum_if_changed",
    "file_checksum",
    "read_manifest",
    "read_slide_list",
    "register_cohort",
    "registered_cohorts",
    "slide_name",
    "slides_from_globs",
    "write_manifest",
]

MANIFEST_NAME = "manifest.csv"
#: The user-cache file listing the registered cohort folders (napari finds their maps).
COHORTS_FILE = "cohorts.json"
#: ``pending`` (queued, not started or interrupted), ``running``, ``complete``, ``failed``.
STATUSES = ("pending", "running", "complete", "failed")
#: The manifest's own columns, in order; the slide list's metadata columns follow them.
MANIFEST_COLUMNS = (
    "name",
    "slide",
    "status",
    "map",
    "mpp",
    "tiles",
    "tiles_computed",
    "tiles_per_s",
    "wall_s",
    "error",
    "checksum",
    "size",
    "mtime_ns",
    "worker",
)
_CHECKSUM_BLOCK = 8 << 20


@dataclass(frozen=True)
class CohortSlide:
    """One slide of a cohort: its absolute path, µm/px override and metadata (text)."""

    path: Path
    mpp: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def slide_name(path: str | os.PathLike[str]) -> str:
    """The file name without its extensions (``C2.ome.tif`` → ``C2``)."""
    name = Path(path).name
    stem = name.split(".")[0]
    return stem or name


def assign_names(slides: Sequence[CohortSlide]) -> list[str]:
    """One unique map name per slide (:func:`slide_name`; clashes get a path digest)."""
    stems = [slide_name(s.path) for s in slides]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = []
    for slide, stem in zip(slides, stems, strict=True):
        if counts[stem] > 1:
            digest = hashlib.sha1(str(slide.path).encode("utf-8")).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names.append(stem)
    return names


def _parse_mpp(value: object, where: Path, line: int) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        mpp = float(text)
    except ValueError:
        mpp = float("nan")
    if not (np.isfinite(mpp) and mpp > 0):
        raise InputFileError(
            where, f"line {line}: mpp must be a positive number of µm/px, got {text!r}"
        )
    return mpp


def read_slide_list(path: str | os.PathLike[str]) -> list[CohortSlide]:
    """Read a slide list (module docstring); paths are resolved against its folder.

    Raises :class:`InputFileError` naming the file (and the line) when it cannot be read,
    lacks a ``slide`` column, has an empty slide cell, a bad ``mpp`` or a slide listed
    twice. Missing slide *files* are not an error here: they become failed rows of the
    cohort, so one lost file never stops the others.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
        sep = "\t" if "\t" in header else ";" if ";" in header and "," not in header else ","
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot read the slide list ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "slide" not in df.columns:
        raise InputFileError(
            path, f"no 'slide' column (columns: {list(df.columns)}); list one slide path a row"
        )
    folder = path.resolve().parent
    meta_cols = [c for c in df.columns if c not in ("slide", "mpp")]
    clash = [c for c in meta_cols if c in MANIFEST_COLUMNS]
    if clash:
        raise InputFileError(
            path, f"metadata column(s) {clash} clash with the manifest's own columns; rename them"
        )
    slides: list[CohortSlide] = []
    seen: dict[Path, int] = {}
    for i, row in enumerate(df.itertuples(index=False), start=2):  # line 1 is the header
        record = dict(zip(df.columns, row, strict=True))
        text = str(record["slide"]).strip()
        if not text:
            raise InputFileError(path, f"line {i}: empty 'slide' cell")
        slide = Path(text).expanduser()
        slide = (slide if slide.is_absolute() else folder / slide).resolve()
        if slide in seen:
            raise InputFileError(path, f"line {i}: {text} is listed already on line {seen[slide]}")
        seen[slide] = i
        mpp = _parse_mpp(record.get("mpp"), path, i) if "mpp" in record else None
        slides.append(CohortSlide(slide, mpp, {c: str(record[c]) for c in meta_cols}))
    if not slides:
        raise InputFileError(path, "the slide list has no rows")
    return slides


def slides_from_globs(patterns: Iterable[str]) -> list[CohortSlide]:
    """The files matching each glob pattern (``**`` recurses), sorted, duplicates once.

    A pattern matching nothing raises :class:`InputFileError` naming it (a typo should not
    predict an empty cohort).
    """
    out: dict[Path, CohortSlide] = {}
    for pattern in patterns:
        found = glob(os.path.expanduser(pattern), recursive=True)
        matches = sorted(Path(p).resolve() for p in found)
        files = [p for p in matches if p.is_file()]
        if not files:
            raise InputFileError(pattern, "no slide file matches this pattern")
        for p in files:
            out.setdefault(p, CohortSlide(p))
    return list(out.values())


def file_checksum(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHECKSUM_BLOCK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def checksum_if_changed(
    path: str | os.PathLike[str], recorded: dict[str, object] | None
) -> tuple[str, int, int]:
    """``(checksum, size, mtime_ns)`` of a slide: the recorded checksum when the recorded
    size and mtime match the file's (module docstring), else a fresh :func:`file_checksum`."""
    st = os.stat(path)
    if recorded:
        try:
            size, mtime = int(str(recorded["size"])), int(str(recorded["mtime_ns"]))
            same = size == st.st_size and mtime == st.st_mtime_ns
        except (KeyError, TypeError, ValueError):
            same = False
        checksum = str(recorded.get("checksum") or "")
        if same and checksum.startswith("sha256:"):
            return checksum, st.st_size, st.st_mtime_ns
    return file_checksum(path), st.st_size, st.st_mtime_ns


def write_manifest(path: str | os.PathLike[str], rows: Sequence[dict[str, object]]) -> Path:
    """Write the manifest atomically (temporary file in the same folder, then replace)."""
    path = Path(path)
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in MANIFEST_COLUMNS and k not in extra]
    cells = [{k: _cell(v) for k, v in row.items()} for row in rows]
    df = pd.DataFrame(cells, columns=[*MANIFEST_COLUMNS, *extra], dtype=object).fillna("")
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cell(value: object) -> str:
    """A manifest cell as text (``None``/NaN → empty; integers stay integers)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """The manifest's rows as dicts (empty cells → ``""``; numbers stay text)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot read the cohort manifest ({exc})") from exc
    missing = [c for c in ("name", "slide", "status") if c not in df.columns]
    if missing:
        raise InputFileError(path, f"not a cohort manifest: missing column(s) {missing}")
    return [dict(r) for r in df.to_dict(orient="records")]


# ------------------------------------------------------------------------------ registry


def cohorts_index() -> Path:
    """The user-cache file listing registered cohort folders."""
    return cache_home(COHORTS_FILE)


def registered_cohorts() -> list[Path]:
    """Registered cohort folders (:func:`register_cohort`), those that still exist."""
    import json

    try:
        folders = json.loads(cohorts_index().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(folders, list):
        return []
    return [Path(f) for f in folders if isinstance(f, str) and Path(f).is_dir()]


def register_cohort(folder: str | os.PathLike[str]) -> None:
    """Add a cohort folder to the index (atomically; folders gone since are dropped)."""
    import json

    folder = Path(folder).resolve()
    folders = [f for f in registered_cohorts() if f != folder] + [folder]
    index = cohorts_index()
    index.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cohorts-", suffix=".json", dir=index.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump([str(f) for f in folders], fh, indent=1)
        os.replace(tmp, index)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
