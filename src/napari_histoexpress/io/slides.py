"""Whole-slide images as lazy RGB pyramids with a physical pixel size (µm/px).

:func:`open_slide` returns a :class:`Slide`: a list of lazy ``dask`` arrays, each
``(H_k, W_k, 3) uint8``, level 0 at full resolution and sizes decreasing, plus the µm/px of
level 0. Nothing is decoded at open time except the file headers.

Levels
------
* Files with their own pyramid use it: SVS/NDPI series levels, OME-TIFF SubIFDs, SubIFD or
  multi-page pyramids (pages flagged "reduced resolution", or successive single-page series
  whose sizes decrease with the same aspect). The main image is the largest series, so a
  label/macro/thumbnail is never level 0. Levels are read through ``tifffile``'s ``aszarr``
  store opened with zarr, wrapped by ``dask.array.from_array`` over a thin view that converts
  to RGB uint8 on read (instead of ``from_zarr`` followed by dask operations, which would stop
  dask from fusing a slice into the read). Reading a region therefore decodes only the
  tiles/strips it touches: a 50,000 × 50,000 slide is never held in memory. Dask chunks are
  multiples of the file's tile/strip size near 2048 px.
* Files without a pyramid (flat TIFF, JPEG, PNG), and pyramids whose coarsest level is still
  large, are completed with computed levels: each is the previous one downsampled by 2 with a
  2×2 area mean (uint16 sums, rounded half up back to uint8; an odd last row/column is
  dropped, so the downsample is exactly 2), until the smaller side is below
  :data:`MIN_LEVEL_SIDE` px. They are lazy (dask) and meant for display and overviews;
  :func:`read_region_at_mpp` resamples from the stored levels instead (cheaper, same result).
* JPEG and PNG cannot be decoded by region: the first read of any level decodes the whole
  image once (a lazy decode cached on the slide; about 276 MB for a 9,300 × 9,900 her2st
  image, kept while the slide lives) and later reads reuse it. PIL's decompression-bomb limit
  is raised only while this module calls ``Image.open`` (up to
  :data:`MAX_PLAIN_IMAGE_PIXELS`) and restored right after, never changed globally.
* Grayscale is repeated to 3 channels; an alpha channel is composited over white (the H&E
  background); 16-bit data is scaled to 8 bit (÷257); float data is taken as 0..1;
  MINISWHITE is inverted. Extra axes (Z, T, or non-RGB channels in OME files) are read at
  index 0. Palette/CMYK/Lab TIFFs are refused with a clear error rather than shown wrong.

µm/px
-----
A user-given ``mpp`` wins (``mpp_source='user'``). Otherwise TIFF files follow
:mod:`napari_histoexpress.io._tiff_metadata` (SVS ``MPP =``, OME ``PhysicalSizeX`` + unit,
NDPI and generic XResolution/ResolutionUnit in inch or cm; unit NONE or 72/96 dpi defaults are
not a physical size). JPEG/PNG DPI fields are set by cameras and editors, not microscopes, and
are not trusted. An unknown size stays ``None`` with ``mpp_source='unknown'``: it is never
guessed, and functions that need it raise
:class:`~napari_histoexpress.errors.MissingResolutionError`.

Bad input (missing file, unsupported suffix, not an image, truncated TIFF/JPEG/PNG, zero-size
image) raises :class:`~napari_histoexpress.errors.InputFileError` at open time. The TIFF
truncation check is cheap: every level's last tile/strip (offset + byte count) must lie inside
the file; corrupt compressed data inside the file is reported when the region is read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr
from PIL import Image, UnidentifiedImageError

from ..errors import InputFileError, MissingResolutionError
from ..io._tiff_metadata import tiff_mpp, truncation_problem
from .ome_zarr_slides import is_ome_zarr_image, open_ome_zarr_levels

__all__ = [
    "MAX_PLAIN_IMAGE_PIXELS",
    "MIN_LEVEL_SIDE",
    "SLIDE_SUFFIXES",
    "Slide",
    "is_slide_path",
    "open_slide",
    "read_region",
    "read_region_at_mpp",
]

SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ome.tif",
    ".ome.tiff",
    ".ndpi",
    ".jpg",
    ".jpeg",
    ".png",
)
_PLAIN_SUFFIXES = (".jpg", ".jpeg", ".png")

#: Computed levels stop once the smaller side of the last level is below this many pixels.
MIN_LEVEL_SIDE = 1024
#: Largest JPEG/PNG accepted (pixels); PIL's own default limit (~89 Mpx) would reject her2st.
MAX_PLAIN_IMAGE_PIXELS = 1_000_000_000
#: Target dask chunk side for level 0 (a multiple of the file's tile/strip size near this).
_CHUNK_SIDE = 2048
_WHITE = 255
_PIL_LOCK = threading.Lock()
#: TIFF PhotometricInterpretation values read: MINISWHITE, MINISBLACK, RGB, YCbCr (tifffile
#: decodes JPEG/YCbCr to RGB). Palette, CMYK, CIELab etc. are refused rather than shown wrong.
_SUPPORTED_PHOTOMETRIC = (0, 1, 2, 6)


def is_slide_path(path: str | PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`SLIDE_SUFFIXES` (case-insensitive; no file access)
    or is an OME-Zarr multiscale image group (:mod:`.ome_zarr_slides`: reads its metadata)."""
    return str(path).lower().endswith(SLIDE_SUFFIXES) or is_ome_zarr_image(path)


@dataclass
class Slide:
    """A lazy RGB pyramid and its physical pixel size.

    ``levels[k]`` is a dask array ``(H_k, W_k, 3)`` of uint8, level 0 at full resolution.
    ``mpp`` is the µm per pixel of level 0 (``None`` when unknown) and ``mpp_source`` says where
    it came from: ``'user'``, ``'svs'``, ``'ome'``, ``'ndpi'``, ``'tiff-resolution'`` or
    ``'unknown'``. TIFF-backed slides keep the file open; call :meth:`close` (or use the slide
    as a context manager) to release it. A slide should not be pickled to worker processes:
    open it again in each process.

    The private fields are filled by :func:`open_slide`; a ``Slide`` built by hand from arrays
    works without them (downsamples are then the size ratios and all levels count as stored).
    """

    path: Path
    levels: list[da.Array]
    mpp: float | None
    mpp_source: str
    #: (x, y) level-0 px per level-k px; exact powers of 2 for computed levels.
    _scales: list[tuple[float, float]] | None = field(default=None, repr=False, compare=False)
    #: How many leading levels are stored in the file (the rest are computed by halving).
    _n_stored: int | None = field(default=None, repr=False, compare=False)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of level 0."""
        h, w = self.levels[0].shape[:2]
        return int(h), int(w)

    def _level_scales(self) -> list[tuple[float, float]]:
        if self._scales is not None and len(self._scales) == len(self.levels):
            return self._scales
        h0, w0 = self.levels[0].shape[:2]
        return [(w0 / lvl.shape[1], h0 / lvl.shape[0]) for lvl in self.levels]

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per level-k pixel along x (``W_0 / W_k`` for levels stored in the
        file; exactly ``2 ×`` the parent's for computed levels, whose odd last column is
        dropped)."""
        return [sx for sx, _ in self._level_scales()]

    @property
    def n_stored_levels(self) -> int:
        """Number of leading levels read from the file (the others are computed by halving)."""
        return len(self.levels) if self._n_stored is None else self._n_stored

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel of ``level`` along x (``None`` when the slide's µm/px is unknown)."""
        if self.mpp is None:
            return None
        return self.mpp * self.downsamples[level]

    def close(self) -> None:
        """Release open file handles (the levels can no longer be read afterwards)."""
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Opening


def open_slide(path: str | PathLike[str], mpp: float | None = None) -> Slide:
    """Open a slide lazily (see the module docstring for the level and µm/px rules).

    ``mpp`` (µm per pixel of level 0), when given, overrides the file's own value.
    Raises :class:`InputFileError` on a missing, unsupported, truncated or empty file.
    """
    path = Path(path)
    if mpp is not None:
        try:
            valid = math.isfinite(float(mpp)) and float(mpp) > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise InputFileError(
                path, f"µm per pixel must be a positive number, got {mpp!r}", setting="mpp"
            )
    if not path.exists():
        raise InputFileError(path, "file not found")
    closers: list[Callable[[], None]] = []
    if path.is_dir() and is_ome_zarr_image(path):
        file_levels, _, file_mpp, source = open_ome_zarr_levels(path)  # size-ratio downsamples
    else:
        file_levels, file_mpp, source, closers = _open_slide_file(path)
    levels, scales, n_stored = _complete_pyramid(file_levels)
    if mpp is not None:
        file_mpp, source = float(mpp), "user"
    return Slide(
        path=path,
        levels=levels,
        mpp=file_mpp,
        mpp_source=source,
        _scales=scales,
        _n_stored=n_stored,
        _closers=closers,
    )


def _open_slide_file(
    path: Path,
) -> tuple[list[da.Array], float | None, str, list[Callable[[], None]]]:
    """The stored levels, µm/px, its source and closers of a slide *file* (TIFF or plain)."""
    if not path.is_file():
        raise InputFileError(path, "not a file")
    if not is_slide_path(path):
        raise InputFileError(
            path,
            f"unsupported slide format {''.join(path.suffixes[-2:]) or '(no suffix)'!r}; "
            f"expected one of {', '.join(SLIDE_SUFFIXES)}",
        )
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty file (0 bytes)")
    if path.name.lower().endswith(_PLAIN_SUFFIXES):
        return [_open_plain(path)], None, "unknown", []
    return _open_tiff(path)


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) < 2 or shape[0] == 0 or shape[1] == 0:
        raise InputFileError(path, f"zero-size image (shape {tuple(shape)})")


# ---- JPEG / PNG ----------------------------------------------------------------------------


@contextlib.contextmanager
def _pil_limit() -> Iterator[None]:
    """Raise PIL's decompression-bomb limit while this module opens an image, then restore it."""
    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PLAIN_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _plain_tail_problem(path: Path, fmt: str) -> str | None:
    """Cheap truncation check: JPEG must contain its end-of-image marker, PNG its IEND chunk,
    within the last 64 KiB (a little trailing data after them is tolerated)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def _to_rgb_uint8(arr: np.ndarray, alpha: bool) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` of any supported dtype → ``(H, W, 3)`` uint8.

    Gray is repeated; with ``alpha`` the last channel is composited over white.
    """
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if alpha and arr.shape[2] in (2, 4):
        color, a = arr[:, :, :-1].astype(np.uint16), arr[:, :, -1:].astype(np.uint16)
        arr = ((color * a + _WHITE * (255 - a) + 127) // 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] > 3:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 2:  # gray + something (no alpha): keep gray
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr)


class _LazyDecodedImage:
    """Array-like over a JPEG/PNG: decoded once, on first access, then cached (thread-safe).

    Only the shape comes from the header at open time. ``dask.array.from_array`` slices it per
    chunk; all chunks share the one decoded array.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.path = path
        self.shape = (shape[0], shape[1], 3)
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def _decode(self) -> np.ndarray:
        try:
            with _pil_limit():  # the size check runs in Image.open; decode outside the lock
                image = Image.open(self.path)
            with image as im:
                mode = im.mode
                if mode in ("RGB", "L"):
                    arr = np.asarray(im)
                    alpha = False
                elif mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit / int gray
                    raw = np.asarray(im)
                    top = 255 if raw.max(initial=0) <= 255 else 65535
                    arr = np.clip(raw, 0, top).astype(np.uint8 if top == 255 else np.uint16)
                    alpha = False
                else:  # P, LA, RGBA, CMYK, YCbCr, 1, ...: let PIL convert
                    has_alpha = "A" in mode or (mode == "P" and "transparency" in im.info)
                    target = "RGBA" if has_alpha else "RGB"
                    arr = np.asarray(im.convert(target))
                    alpha = has_alpha
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputFileError(self.path, f"cannot decode image ({exc})") from exc
        arr = _to_rgb_uint8(arr, alpha)
        if arr.shape != self.shape:
            raise InputFileError(
                self.path, f"decoded image has shape {arr.shape}, header said {self.shape}"
            )
        return arr

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._array is None:
            with self._lock:
                if self._array is None:
                    self._array = self._decode()
        return self._array[key]


def _open_plain(path: Path) -> da.Array:
    try:
        with _pil_limit():
            image = Image.open(path)
        with image as im:
            fmt = im.format or ""
            width, height = im.size
    except Image.DecompressionBombError as exc:
        raise InputFileError(path, f"image too large for a plain JPEG/PNG reader ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputFileError(path, "not a readable JPEG/PNG image") from exc
    if fmt not in ("JPEG", "PNG", "MPO"):
        raise InputFileError(path, f"file content is {fmt or 'unknown'}, not JPEG or PNG")
    _check_size(path, (height, width))
    problem = _plain_tail_problem(path, "PNG" if fmt == "PNG" else "JPEG")
    if problem:
        raise InputFileError(path, problem)
    lazy = _LazyDecodedImage(path, (height, width))
    chunk = (min(_CHUNK_SIDE, height), min(_CHUNK_SIDE, width), 3)
    return da.from_array(
        lazy,
        chunks=chunk,
        name=f"plain-image-{uuid.uuid4().hex}",
        asarray=True,
        lock=False,
        meta=np.empty((0, 0, 0), np.uint8),
    )


# ---- TIFF family ---------------------------------------------------------------------------


class _HeldRecords(logging.Filter):
    """Holds back the records of a logger (see :func:`_tifffile_log_held`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _tifffile_log_held() -> Iterator[None]:
    """Hold back what ``tifffile`` logs while a file is opened; drop it if opening raises
    :class:`InputFileError` (this module then reports the problem itself, e.g. a truncated
    file, which tifffile logs as several "corrupted tag list" lines first), else log it
    as tifffile would have."""
    logger = logging.getLogger("tifffile")
    held = _HeldRecords()
    logger.addFilter(held)
    failed = False
    try:
        yield
    except InputFileError:
        failed = True
        raise
    finally:
        logger.removeFilter(held)
        if not failed:
            for record in held.records:
                logger.handle(record)


def _open_tiff(
    path: Path,
) -> tuple[list[da.Array], float | None, str, list[Callable[[], None]]]:
    with _tifffile_log_held():
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
            raise InputFileError(path, f"not a readable TIFF file ({exc})") from exc
        try:
            owner = _OpenTiff(tif)  # no reference back from tif: closes once unreferenced
            levels, mpp, source = _tiff_levels(tif, path, owner)
        except InputFileError:
            tif.close()
            raise
        except Exception as exc:
            tif.close()
            raise InputFileError(path, f"cannot read TIFF structure ({exc})") from exc
    return levels, mpp, source, [owner.close]


class _OpenTiff:
    """Owns an open ``TiffFile``: closed by :meth:`Slide.close`, or when the slide and every
    level array reading from it have been garbage-collected (the level views hold a reference,
    so a viewer that keeps only ``slide.levels`` keeps the file open)."""

    def __init__(self, tif: tifffile.TiffFile) -> None:
        self.tif = tif

    def close(self) -> None:
        self.tif.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.tif.close()


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether ``b`` is a reduced copy of ``a`` (same aspect up to rounding; not a label or
    macro image of another shape)."""
    fy, fx = a[0] / b[0], a[1] / b[1]
    return abs(fy - fx) <= 0.02 * max(fx, fy) + max(fx, fy) / min(b)


def _level_series(tif: tifffile.TiffFile) -> tuple[int, list[Any]]:
    """The pyramid of the main image: tifffile's levels of the largest series (the first on
    ties; SVS, NDPI, OME/SubIFDs, pages flagged reduced-resolution), or else the following
    single-level series of the same layout whose sizes decrease with the same aspect (an
    unflagged multi-page pyramid). Label, macro and thumbnail images are thus never level 0."""
    areas = []
    for candidate in tif.series:
        try:
            h, w = _yx(candidate)
        except ValueError:  # no Y/X axes
            h = w = 0
        areas.append(h * w)
    main = max(range(len(areas)), key=lambda i: (areas[i], -i))
    series = tif.series[main]
    levels: list[Any] = list(series.levels)
    if len(levels) == 1 and series.kind not in ("svs", "ndpi"):
        for other in tif.series[main + 1 :]:
            prev = levels[-1]
            if not (len(other.levels) == 1 and other.axes == prev.axes):
                break
            if other.dtype != prev.dtype:
                break
            (ph, pw), (oh, ow) = _yx(prev), _yx(other)
            shrinks = 0 < oh < ph and 0 < ow < pw
            if not (shrinks and _same_aspect(_yx(levels[0]), (oh, ow))):
                break
            levels.append(other)
    return main, levels


def _tiff_levels(
    tif: tifffile.TiffFile, path: Path, owner: _OpenTiff
) -> tuple[list[da.Array], float | None, str]:
    if not tif.series:
        raise InputFileError(path, "TIFF file contains no image")
    main, level_series = _level_series(tif)
    _check_size(path, _yx(level_series[0]))
    photometric = int(level_series[0].keyframe.photometric)
    if photometric not in _SUPPORTED_PHOTOMETRIC:
        raise InputFileError(
            path,
            f"unsupported TIFF colour space (PhotometricInterpretation {photometric}); "
            "expected RGB, YCbCr or grayscale",
        )

    pages: list[Any] = []
    names: list[str] = []
    for k, lvl in enumerate(level_series):
        for page in lvl.pages:
            if page is not None:
                pages.append(page)
                names.append(f"level {k}")
    problem = truncation_problem(pages, path.stat().st_size, names)
    if problem:
        raise InputFileError(path, problem)

    mpp, source = tiff_mpp(tif, level_series[0].keyframe, main)
    token = uuid.uuid4().hex
    arrays = []
    for k, lvl in enumerate(level_series):
        store = zarr.open(lvl.aszarr(), mode="r")
        if isinstance(store, zarr.Group):  # a level of a multiscale series: its own array
            store = store[sorted(store.keys(), key=int)[0]]
        view = _ZarrRGB(store, lvl.axes, lvl.keyframe, owner)
        chunks = _chunks_for(lvl.keyframe, view.shape)
        arrays.append(
            da.from_array(
                view,
                chunks=chunks,
                name=f"slide-{token}-{k}",
                asarray=False,
                lock=False,
                meta=np.empty((0, 0, 0), np.uint8),
            )
        )
    return arrays, mpp, source


def _yx(series: Any) -> tuple[int, int]:
    axes: str = series.axes
    shape = series.shape
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _chunks_for(page: Any, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Dask chunks: multiples of the file's tile/strip size near :data:`_CHUNK_SIDE`.

    Slicing a level reads only the tiles/strips the slice touches whatever the chunk size
    (dask fuses the slice into the read); the chunk size matters for whole-level work.
    """
    seg = page.chunks  # (rows, cols[, samples]) of one tile or strip
    if page.planarconfig == 1 and page.samplesperpixel > 1:
        tile_h, tile_w = int(seg[-3]), int(seg[-2])
    else:
        tile_h, tile_w = int(seg[-2]), int(seg[-1])
    tile_h = max(1, min(tile_h, shape[0]))
    tile_w = max(1, min(tile_w, shape[1]))
    ch = tile_h * max(1, _CHUNK_SIDE // tile_h)
    cw = tile_w * max(1, _CHUNK_SIDE // tile_w)
    return min(ch, shape[0]), min(cw, shape[1]), 3


def _as_window(key: Any, size: int) -> tuple[slice, Any]:
    """One index of a (possibly fused) dask getter key → ``(window to read, index into it)``.

    Slices are read as they are; an integer or a fancy index reads its bounding window and is
    applied to the block afterwards.
    """
    if isinstance(key, slice):
        return key, slice(None)
    if isinstance(key, (int, np.integer)):
        pos = int(key) + (size if int(key) < 0 else 0)
        return slice(pos, pos + 1), 0
    index = np.asarray(key)
    if index.dtype == np.bool_:
        index = np.nonzero(index)[0]
    index = np.where(index < 0, index + size, index).astype(np.intp)
    if index.size == 0:
        return slice(0, 0), slice(None)
    low = int(index.min())
    return slice(low, int(index.max()) + 1), index - low


class _ZarrRGB:
    """Array-like ``(Y, X, 3)`` uint8 view of one zarr level with tifffile ``axes``.

    Reads only the requested window from the zarr store (hence only the tiles/strips it
    touches), drops extra axes (index 0 of Z, T, ...), moves the channel axis last and converts
    gray / alpha / 16-bit / MINISWHITE data to RGB uint8 on the fly. The channel axis is the
    samples axis ``S``, else a ``C`` axis of size 3 or 4 (OME separate channels), else gray.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, array: Any, axes: str, page: Any, owner: _OpenTiff | None = None) -> None:
        self.array = array
        self._owner = owner  # keeps the file open while this view is alive
        self.axes = axes
        shape = tuple(int(s) for s in array.shape)
        if "S" in axes:
            self.chan: str | None = "S"
        elif "C" in axes and shape[axes.index("C")] in (3, 4):
            self.chan = "C"
        else:
            self.chan = None
        self.shape = (shape[axes.index("Y")], shape[axes.index("X")], 3)
        extrasamples = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        n_chan = shape[axes.index(self.chan)] if self.chan else 1
        self.alpha = bool(extrasamples) and extrasamples[-1] in (1, 2) and n_chan in (2, 4)
        self.miniswhite = int(page.photometric) == 0
        self.native = array.dtype == np.uint8 and n_chan == 3 and not self.miniswhite

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, y_after = _as_window(key[0], self.shape[0])
        xs, x_after = _as_window(key[1], self.shape[1])
        selection: list[Any] = []
        kept: list[str] = []
        for ax in self.axes:
            if ax == "Y":
                selection.append(ys)
            elif ax == "X":
                selection.append(xs)
            elif ax == self.chan:
                selection.append(slice(None))
            else:
                selection.append(0)
                continue
            kept.append(ax)
        block = np.asarray(self.array[tuple(selection)])
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self.chan)] if self.chan else [])
        if order != list(range(block.ndim)):
            block = block.transpose(order)
        if not self.native:
            if self.miniswhite:
                block = np.iinfo(block.dtype).max - block if block.dtype.kind == "u" else -block
            block = _to_rgb_uint8(block, self.alpha)
        if not (isinstance(x_after, slice) and x_after == slice(None)):
            block = block[:, x_after]
        if not (isinstance(y_after, slice) and y_after == slice(None)):
            block = block[y_after]
        return block[..., key[2]]


# ---- computed levels -----------------------------------------------------------------------


def _halve_block(block: np.ndarray) -> np.ndarray:
    """2×2 area mean of an even-sized uint8 block, rounded half up.

    Four strided uint16 additions: ~20× faster than ``reshape(...).sum(axis=(1, 3))``.
    """
    total = block[0::2, 0::2].astype(np.uint16)
    total += block[1::2, 0::2]
    total += block[0::2, 1::2]
    total += block[1::2, 1::2]
    total += 2
    total >>= 2
    return total.astype(np.uint8)


def _halve(level: da.Array) -> da.Array:
    """Area-mean downsampling by 2 (uint16 sums, rounded); odd last row/column dropped."""
    h, w = level.shape[:2]
    level = level[: h - h % 2, : w - w % 2]
    # every chunk must have even sides so that blocks halve independently
    level = level.rechunk(
        (tuple(_even_chunks(level.chunks[0])), tuple(_even_chunks(level.chunks[1])), (3,))
    )
    out = da.map_blocks(
        _halve_block,
        level,
        dtype=np.uint8,
        chunks=(
            tuple(c // 2 for c in level.chunks[0]),
            tuple(c // 2 for c in level.chunks[1]),
            (3,),
        ),
        meta=np.empty((0, 0, 0), np.uint8),
    )
    # keep chunks near _CHUNK_SIDE as levels shrink
    return out.rechunk((_CHUNK_SIDE, _CHUNK_SIDE, 3))


def _even_chunks(chunks: tuple[int, ...]) -> list[int]:
    if all(c % 2 == 0 for c in chunks):
        return list(chunks)
    total = sum(chunks)
    size = max(2, (max(chunks) // 2) * 2)
    out = [size] * (total // size)
    if total % size:
        out.append(total % size)
    return out


def _complete_pyramid(
    levels: list[da.Array],
) -> tuple[list[da.Array], list[tuple[float, float]], int]:
    """Add halved levels until the smaller side is below :data:`MIN_LEVEL_SIDE`.

    Returns the levels, their (x, y) downsamples (size ratios for stored levels, exactly
    twice the parent's for computed ones) and the number of stored levels kept.
    """
    h0, w0 = levels[0].shape[:2]
    kept = [levels[0]]
    scales = [(1.0, 1.0)]
    for level in levels[1:]:  # stored levels that do not shrink are dropped
        prev = kept[-1]
        if level.shape[0] < prev.shape[0] and level.shape[1] < prev.shape[1]:
            kept.append(level)
            scales.append((w0 / level.shape[1], h0 / level.shape[0]))
    n_stored = len(kept)
    while min(kept[-1].shape[:2]) >= MIN_LEVEL_SIDE:
        kept.append(_halve(kept[-1]))
        sx, sy = scales[-1]
        scales.append((2.0 * sx, 2.0 * sy))
    return kept, scales, n_stored


# --------------------------------------------------------------------------------------------
# Reading


def read_region(slide: Slide, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8 pixels of ``level`` with top-left ``(x0, y0)`` in that
    level's pixels; parts outside the image are white (255)."""
    if not 0 <= level < len(slide.levels):
        raise IndexError(f"level {level} out of range (slide has {len(slide.levels)} levels)")
    width, height = int(width), int(height)
    x0, y0 = int(x0), int(y0)
    if width < 0 or height < 0:
        raise ValueError(f"region size must be non-negative, got {width} x {height}")
    arr = slide.levels[level]
    h, w = arr.shape[:2]
    out = np.full((height, width, 3), _WHITE, dtype=np.uint8)
    xa, xb = max(x0, 0), min(x0 + width, w)
    ya, yb = max(y0, 0), min(y0 + height, h)
    if xa < xb and ya < yb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = np.asarray(
            arr[ya:yb, xa:xb].compute(scheduler="threads")
        )
    return out


def _best_level(slide: Slide, scale: float) -> int:
    """Coarsest *stored* level whose downsample does not exceed ``scale`` (level-0 px per
    output px)."""
    best = 0
    for k, ds in enumerate(slide.downsamples[: slide.n_stored_levels]):
        if ds <= scale * (1.0 + 1e-6):
            best = k
    return best


def read_region_at_mpp(
    slide: Slide,
    center_xy: tuple[float, float],
    size_px: tuple[int, int],
    target_mpp: float,
) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 patch centred on ``center_xy`` (level-0 px, x = column, y = row),
    ``size_px = (w, h)`` output pixels of ``target_mpp`` µm each.

    Reads the coarsest level stored in the file that is still at least as fine as
    ``target_mpp``, then resamples with PIL: area averaging (``BOX``, antialiased, like
    OpenCV's ``INTER_AREA``) when shrinking, bilinear when enlarging (target finer than level
    0). The source window is placed with sub-pixel precision; outside the image is white.

    Levels computed by halving (flat TIFF, JPEG, PNG) are skipped on purpose: one chunk of a
    computed level costs a read of a 2^k times larger area of its parent, while resampling the
    needed window of the stored level gives the same area mean for the pixels actually needed.
    """
    if slide.mpp is None:
        raise MissingResolutionError(
            slide.path, "µm per pixel unknown (the file does not record it); give it"
        )
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise ValueError(f"target_mpp must be positive, got {target_mpp!r}")
    out_w, out_h = int(size_px[0]), int(size_px[1])
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"size_px must be positive, got {size_px!r}")
    scale = target_mpp / slide.mpp  # level-0 px per output px
    level = _best_level(slide, scale)
    ds_x, ds_y = slide._level_scales()[level]
    cx, cy = float(center_xy[0]), float(center_xy[1])
    # source window in level-k pixel coordinates (continuous; pixel k spans [k, k + 1))
    sx0 = (cx - out_w * scale / 2.0) / ds_x
    sx1 = (cx + out_w * scale / 2.0) / ds_x
    sy0 = (cy - out_h * scale / 2.0) / ds_y
    sy1 = (cy + out_h * scale / 2.0) / ds_y
    margin = 2
    rx0, ry0 = math.floor(sx0) - margin, math.floor(sy0) - margin
    rx1, ry1 = math.ceil(sx1) + margin, math.ceil(sy1) + margin
    crop = read_region(slide, level, rx0, ry0, rx1 - rx0, ry1 - ry0)
    box = (sx0 - rx0, sy0 - ry0, sx1 - rx0, sy1 - ry0)
    src_w, src_h = sx1 - sx0, sy1 - sy0
    if (
        abs(src_w - out_w) < 1e-6
        and abs(src_h - out_h) < 1e-6
        and all(abs(b - round(b)) < 1e-6 for b in box)
    ):  # same grid: a plain crop, no interpolation
        bx, by = round(box[0]), round(box[1])
        return np.ascontiguousarray(crop[by : by + out_h, bx : bx + out_w])
    shrinking = src_w >= out_w and src_h >= out_h
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    resized = Image.fromarray(crop).resize((out_w, out_h), resample=resample, box=box)
    return np.asarray(resized, dtype=np.uint8)
