"""Where a slide's predictions and drawn spots live on disk (Qt-free).

A slide's **project folder** holds everything napari-histoexpress made for it::

    <slide folder>/<slide file name>.histoexpress/
        maps/<run name>.zarr     dense-map stores (one per trained run)
        spots.csv                spots drawn or gridded on the slide (restored on reopen)

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

import pandas as pd

from .errors import InputFileError
from .io.spot_table import empty_spots, validate_spots
from .user_cache import cache_home

PROJECT_SUFFIX = ".histoexpress"
SPOTS_FILE = "spots.csv"
MAPS_FOLDER = "maps"


def projects_home() -> Path:
    """The user-cache folder of project folders for slides in read-only places."""
    return cache_home("projects")


def _writable(folder: Path) -> bool:
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
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
    """Existing map stores of a slide (both project places), complete ones first, then the
    most recently modified first."""
    from .inference.map_store import DenseMapStore

    found: list[tuple[bool, float, Path]] = []
    for folder in _candidates(slide_path):
        for path in sorted((folder / MAPS_FOLDER).glob("*.zarr")):
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


def load_spots(slide_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The slide's saved spots (an empty table when none were saved)."""
    path = spots_path(slide_path)
    if not path.exists():
        return empty_spots()
    try:
        df = pd.read_csv(path, dtype={"id": str, "source": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot read the saved spots ({exc})") from exc
    return validate_spots(df, path)


def set_aside_spots(slide_path: str | os.PathLike[str]) -> Path | None:
    """Rename the slide's saved spots table to ``spots.csv.unreadable-<YYYYmmdd-HHMMSS>``
    (e.g. before writing a new one over a table that cannot be read); returns the new
    path, or ``None`` when there was no table."""
    import time

    path = spots_path(slide_path)
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
