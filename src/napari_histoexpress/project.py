"""Where a slide's predictions and drawn spots live on disk (Qt-free).

A slide's **project folder** holds everything napari-histoexpress made for it::

    <slide folder>/<slide file name>.histoexpress/
        maps/<run name>.zarr     dense-map stores (one per trained run)
        spots.csv                spots drawn or gridded on the slide (restored on reopen)
        spot_bins.zarr.zip       large grids (bins layers), a columnar table (restored too)

The project folder sits next to the slide when that folder is writable and belongs to no
installed package; otherwise (a read-only data share, the sample slide shipped inside the
package, any file under ``site-packages``) it goes under the user cache,
``$HISTOEXPRESS_HOME`` or ``$XDG_CACHE_HOME/napari-histoexpress/projects`` (``~/.cache`` by
default), named ``<slide file name>-<8 hex digits of the slide's absolute path>.histoexpress``
so two slides of the same name never share one. Both places are searched when a slide is
reopened, so a map predicted once is found again instantly. (A slide inside an installed
package always gets the cache folder, even where ``site-packages`` is writable, as in a
virtual environment: installs are replaced wholesale on upgrade and are no place for a
user's work.)

Spots table (``spots.csv``): one row per circle, columns
:data:`napari_histoexpress.io.spot_table.SPOT_COLUMNS`:
``id`` (unique text), ``x_um``, ``y_um`` (centre in µm; slide pixel centres at integer
pixel indices, so ``x_um = column · µm/px``, as :mod:`.inference.spots` expects),
``diameter_um``, ``source`` (``drawn`` or ``grid``), optionally ``layer`` (the name of the
drawn-spots layer holding the spot; the Spots widget restores one layer per name). Written
atomically. A table that cannot be read is never overwritten blindly:
:func:`set_aside_spots` keeps it as ``spots.csv.unreadable-<time>`` first.

Bins table (``spot_bins.zarr.zip``): the spots of the Spots widget's *bins* layers (grids of
hundreds to millions of spots, e.g. Visium HD bins), same columns (``layer`` included) in a
compact columnar zip (:mod:`napari_histoexpress.io.spot_store`: ids ``spot_<n>`` stored as
their numbers, coordinates zstd-compressed; ~50 kB for a 660,000-bin lattice where a CSV
would be ~50 MB). :func:`load_spots` returns both tables as one; :func:`save_spot_bins`
writes the bins table, whose ids must be ``spot_<n>``. A project saved before bins existed
has no such file and loads as before.

Cohort folders (``histoexpress cohort predict``, :mod:`.inference.cohort`) hold many slides'
maps, ``<cohort folder>/<name>.zarr``, listed in its ``manifest.csv``. Each cohort folder
is registered in the user cache (``cohorts.json`` in :func:`~.user_cache.cache_home`,
:func:`~.io.cohort_files.register_cohort`), and :func:`find_maps` also returns the maps the
registered manifests list for the slide, so a slide of a predicted cohort opens with its map
at once (a manifest is read once per modification, then looked up in a dict).
"""

from __future__ import annotations

import hashlib
import os
import site
import sys
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputFileError
from .io.spot_table import SPOT_COLUMNS, empty_spots, validate_spots
from .user_cache import cache_home

PROJECT_SUFFIX = ".histoexpress"
SPOTS_FILE = "spots.csv"
BINS_FILE = "spot_bins.zarr.zip"
MAPS_FOLDER = "maps"


def projects_home() -> Path:
    """The user-cache folder of project folders for slides in read-only places."""
    return cache_home("projects")


def _writable(folder: Path) -> bool:
    """Whether the project may go into ``folder``: it can be written, and its permissions
    let *someone* write (a folder marked read-only for everybody, e.g. a shared data set,
    is respected even by root, whom ``os.access`` always lets write)."""
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return False
    if not folder.stat().st_mode & 0o222:
        return False
    try:  # os.access can lie on network and read-only mounts: try for real
        fd, name = tempfile.mkstemp(prefix=".histoexpress-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    Path(name).unlink(missing_ok=True)
    return True


@lru_cache(maxsize=1)
def installed_roots() -> tuple[Path, ...]:
    """Folders of installed code: this package's own folder (its real path too, for an
    editable install whose ``sample_data`` is a link into the source tree) and every
    ``site-packages`` / ``dist-packages`` folder of this interpreter."""
    package = Path(__file__).parent
    roots = [package, package.resolve(), (package / "sample_data").resolve()]
    paths = sysconfig.get_paths()
    roots += [Path(paths[k]) for k in ("purelib", "platlib") if paths.get(k)]
    getsitepackages = getattr(site, "getsitepackages", None)  # absent in some embeddings
    if getsitepackages is not None:
        roots += [Path(p) for p in getsitepackages()]
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        roots.append(Path(user_site))
    roots += [Path(p) for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    out: list[Path] = []
    for root in roots:
        for r in (root.absolute(), root.resolve()):
            if r not in out:
                out.append(r)
    return tuple(out)


def in_installed_package(slide_path: str | os.PathLike[str]) -> bool:
    """Whether a slide lies inside installed code (:func:`installed_roots`)."""
    path = Path(slide_path).expanduser()
    paths = {path.absolute(), path.resolve()}
    return any(p.is_relative_to(root) for p in paths for root in installed_roots())


def _candidates(slide_path: str | os.PathLike[str]) -> list[Path]:
    slide = Path(slide_path).expanduser().resolve()
    digest = hashlib.sha1(str(slide).encode("utf-8")).hexdigest()[:8]
    return [
        slide.parent / f"{slide.name}{PROJECT_SUFFIX}",
        projects_home() / f"{slide.name}-{digest}{PROJECT_SUFFIX}",
    ]


def project_dir(slide_path: str | os.PathLike[str], *, create: bool = False) -> Path:
    """The project folder of a slide: an existing one if any, else next to the slide when
    that folder is writable, else under :func:`projects_home`. A slide inside an installed
    package (:func:`in_installed_package`) always gets the :func:`projects_home` folder.
    ``create`` makes it."""
    beside, cached = _candidates(slide_path)
    if in_installed_package(slide_path):
        folder = cached
    else:
        for folder in (beside, cached):
            if folder.is_dir():
                return folder
        folder = beside if _writable(beside.parent) else cached
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def default_map_path(
    slide_path: str | os.PathLike[str], run_dir: str | os.PathLike[str], *, create: bool = True
) -> Path:
    """``<project>/maps/<run folder name>.zarr`` (folders created unless ``create=False``,
    e.g. to show the path before predicting)."""
    maps = project_dir(slide_path, create=create) / MAPS_FOLDER
    if create:
        maps.mkdir(exist_ok=True)
    return maps / f"{Path(run_dir).resolve().name}.zarr"


def find_maps(slide_path: str | os.PathLike[str]) -> list[Path]:
    """Existing map stores of a slide (both project places and registered cohorts,
    :func:`cohort_maps`), complete ones first, then the most recently modified first."""
    from .inference.map_store import DenseMapStore

    found: list[tuple[bool, float, Path]] = []
    paths = [p for f in _candidates(slide_path) for p in sorted((f / MAPS_FOLDER).glob("*.zarr"))]
    paths += [p for p in cohort_maps(slide_path) if p not in paths]
    for path in paths:
        try:
            status = DenseMapStore.open(path, mode="r").status
        except Exception:  # a broken store is skipped, not fatal
            continue
        found.append((status == "complete", path.stat().st_mtime, path))
    found.sort(key=lambda t: (not t[0], -t[1]))
    return [p for _, _, p in found]


def complete_map(slide_path: str | os.PathLike[str]) -> Path | None:
    """The slide's most recent *complete* map store (:func:`find_maps`), or ``None``."""
    from .inference.map_store import DenseMapStore

    for path in find_maps(slide_path):
        try:
            if DenseMapStore.open(path, mode="r").status == "complete":
                return path
        except Exception:  # skipped, as in find_maps
            continue
    return None


def spots_path(slide_path: str | os.PathLike[str]) -> Path:
    """Path of the slide's spots table (it may not exist yet)."""
    return project_dir(slide_path) / SPOTS_FILE


def spot_bins_path(slide_path: str | os.PathLike[str]) -> Path:
    """Path of the slide's bins table (it may not exist yet)."""
    return project_dir(slide_path) / BINS_FILE


def load_spots(slide_path: str | os.PathLike[str], *, bins: bool = True) -> pd.DataFrame:
    """The slide's saved spots (an empty table when none were saved): the spots table, and
    with ``bins`` (default) the bins table after it, as one table of unique ids."""
    path = spots_path(slide_path)
    if path.exists():
        try:
            df = pd.read_csv(path, dtype={"id": str, "source": str})
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputFileError(path, f"cannot read the saved spots ({exc})") from exc
        spots = validate_spots(df, path)
    else:
        spots = empty_spots()
    if not bins or not spot_bins_path(slide_path).exists():
        return spots
    binned = load_spot_bins(slide_path)
    if not len(spots):
        return binned
    return validate_spots(pd.concat([spots, binned], ignore_index=True), spot_bins_path(slide_path))


def _check_bins(df: pd.DataFrame, where: str | os.PathLike[str]) -> pd.DataFrame:
    """A bins table with int64 ``id_number`` (≥ 0, unique), finite centres, positive
    diameters and a ``source``; raises :class:`InputFileError`."""
    for col in ("id_number", "x_um", "y_um", "diameter_um"):
        if col not in df.columns:
            raise InputFileError(where, f"missing column {col!r}")
    out = df.reset_index(drop=True)
    numbers = out["id_number"].to_numpy()
    if numbers.dtype.kind not in "iu" or (numbers < 0).any():
        raise InputFileError(where, "bin ids must be spot_<n> with n >= 0")
    if len(np.unique(numbers)) != len(numbers):
        raise InputFileError(where, "a bin id appears more than once")
    xyd = out[["x_um", "y_um", "diameter_um"]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(xyd).all(axis=1) | (xyd[:, 2] <= 0)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputFileError(where, f"invalid or non-positive values in row(s) {rows}")
    out["id_number"] = numbers.astype(np.int64)
    if "source" not in out.columns:
        out["source"] = "grid"
    out["source"] = out["source"].astype(object).where(out["source"].notna(), "grid").astype(str)
    first = ["id_number", *SPOT_COLUMNS[1:]]
    return out[[*first, *(c for c in out.columns if c not in first)]]


def load_spot_bins(slide_path: str | os.PathLike[str], *, ids: bool = True) -> pd.DataFrame:
    """The slide's saved bins table (:data:`BINS_FILE`; empty when there is none). With
    ``ids=False`` the ids come as their numbers, int64 column ``id_number`` (no text: fast
    for a million bins). Raises :class:`InputFileError` for an unreadable file."""
    from .io.spot_store import read_spot_store

    path = spot_bins_path(slide_path)
    if not path.exists():
        if ids:
            return empty_spots()
        return _check_bins(
            empty_spots().drop(columns="id").assign(id_number=np.zeros(0, np.int64)), path
        )
    table = read_spot_store(path, ids=False)
    if "id_number" not in table.columns:
        raise InputFileError(path, "the bins table's ids are not spot_<n>")
    table = _check_bins(table, path)
    if not ids:
        return table
    from .io.spot_table import ids_from_numbers

    table.insert(0, "id", ids_from_numbers(table.pop("id_number").to_numpy()))
    return table


def set_aside_spots(slide_path: str | os.PathLike[str], name: str = SPOTS_FILE) -> Path | None:
    """Rename the slide's saved spots table (or, with ``name=BINS_FILE``, its bins table) to
    ``<name>.unreadable-<YYYYmmdd-HHMMSS>`` (e.g. before writing a new one over a table that
    cannot be read); returns the new path, or ``None`` when there was no table."""
    import time

    path = project_dir(slide_path) / name
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    return target


def save_spots(slide_path: str | os.PathLike[str], spots: pd.DataFrame) -> Path:
    """Save the slide's spots atomically (an empty table writes just the header)."""
    from .io.export import write_csv_atomic

    spots = validate_spots(spots)
    path = project_dir(slide_path, create=True) / SPOTS_FILE
    return write_csv_atomic(spots, path, index=False)


def save_spot_bins(slide_path: str | os.PathLike[str], bins: pd.DataFrame) -> Path | None:
    """Save the slide's bins table atomically (:data:`BINS_FILE`): a spots table whose ids
    are ``spot_<n>`` (column ``id``) or given as the numbers ``n`` (int64 column
    ``id_number``), ``layer`` and other columns kept. An empty table removes the file
    (returns ``None``). Raises :class:`InputFileError` (bad table, unwritable folder)."""
    from .io.spot_store import write_spot_store
    from .io.spot_table import id_numbers

    path = project_dir(slide_path) / BINS_FILE
    table = bins.reset_index(drop=True)
    if "id" in table.columns:
        numbers = id_numbers(table["id"])
        if (numbers < 0).any():
            bad = table["id"][numbers < 0].iloc[0]
            raise InputFileError(path, f"bin id {bad!r} is not spot_<n>")
        table = table.drop(columns="id").assign(id_number=numbers)
    table = _check_bins(table, path)
    if not len(table):
        path.unlink(missing_ok=True)
        return None
    project_dir(slide_path, create=True)
    return write_spot_store(table, path)


# ------------------------------------------------------------------------------ cohorts


_MANIFESTS: dict[Path, tuple[int, dict[str, Path]]] = {}


def _manifest_maps(folder: Path) -> dict[str, Path]:
    """``{resolved slide path: map path}`` of a cohort folder's manifest (cached by mtime)."""
    from .io.cohort_files import MANIFEST_NAME, read_manifest

    manifest = folder / MANIFEST_NAME
    try:
        mtime = manifest.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _MANIFESTS.get(manifest)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        rows = read_manifest(manifest)
    except InputFileError:
        rows = []
    maps = {str(r["slide"]): folder / str(r["map"]) for r in rows if r.get("map")}
    _MANIFESTS[manifest] = (mtime, maps)
    return maps


def cohort_maps(slide_path: str | os.PathLike[str]) -> list[Path]:
    """The map stores registered cohorts hold for this slide (existing ones)."""
    from .io.cohort_files import registered_cohorts

    slide = str(Path(slide_path).expanduser().resolve())
    out = []
    for folder in registered_cohorts():
        path = _manifest_maps(folder).get(slide)
        if path is not None and path.is_dir():
            out.append(path)
    return out
