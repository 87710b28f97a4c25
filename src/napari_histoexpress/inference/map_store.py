"""The dense-map store: a factorised gene-expression map of a whole slide, on disk (zarr v3).

A dense model's gene map is ``head(features) = features @ W + b``. Storing the *features*
(``C`` channels) and the linear head instead of the gene maps makes the store's size
independent of the number of genes, and any gene map is one dot product away (computed lazily,
chunk by chunk, which is what lets the napari heatmap switch genes instantly).

Layout of the group (all arrays chunked, zarr v3, written atomically chunk by chunk)::

    features        (H_map, W_map, C) float16|float32, chunk = one tile core x all channels
    pyramid/1..n    mean-pooled (2x2) features, built by :meth:`DenseMapStore.build_pyramid`
    done            (rows, cols) bool   tile grid: finished tiles (computed or skipped)
    coverage        (rows, cols) uint8  0 = pending, 1 = computed, 2 = background (skipped)
    tissue          (h, w) bool tissue mask of the thumbnail used for skipping (optional)
    head/W          (C, G) float32, head/b (G,) float32 — or head/v<n>/W, head/v<n>/b once
                    genes were added (:meth:`DenseMapStore.add_genes`; attr ``head_arrays``)
    model_state/*   float32 arrays a model keeps per slide to add genes later (optional;
                    :meth:`DenseMapStore.set_model_state`, attr ``model_state``)
    attrs           genes, map_mpp, feature_dim, chunk, fill_value, status ('partial' or
                    'complete'), pyramid_levels, plus the caller's attrs (model_mpp, stride,
                    slide path/shape/mpp, tile_px, halo_px, provenance, ...); gene_sources
                    and head_arrays once genes were added; normalisation when given

Choices made here (and why):

- **Chunk = tile core.** A tile writes exactly one chunk, so writes never race and a killed
  run leaves whole chunks (zarr's local store writes each chunk to a temp file and renames).
- **Background is never written, and reads as missing.** Unwritten chunks hold
  ``fill_value`` on disk (0.0: pooling stays a plain mean), but every public read —
  :meth:`DenseMapStore.features_level`, :meth:`~DenseMapStore.read_features`,
  :meth:`~DenseMapStore.gene_map`, :meth:`~DenseMapStore.gene_maps` — returns **NaN** on
  pixels that were never predicted (background skipped by tissue detection, and tiles still
  pending in a partial store), so a heatmap shows nothing there (napari draws NaN
  transparent) instead of the head's bias. Which pixels were predicted comes from
  ``coverage`` (1 = computed), so stores written before this rule read the same way.
- **Pooled levels are means over predicted pixels only.** A coarse pixel straddling tissue
  and background is the mean of its predicted level-0 pixels (not diluted towards the
  fill value); NaN only where none of its footprint was predicted.
  :meth:`~DenseMapStore.predicted_fraction` gives that share at every level, and since
  background reads as the fill value on disk, ``masked = (pooled − fill·(1 − frac)) / frac``
  undoes the dilution exactly for any stored pyramid, old or new.
- **The store owns its head.** Nothing outside this module multiplies by ``W``: aggregated
  features (a circle's mean or sum, a slide mean) go through :meth:`~DenseMapStore.apply_head`
  (float64), feature blocks (heatmap chunks, contrast samples) through
  :meth:`~DenseMapStore.head_block` (float32, the lazy maps use the same per-block function).
- **Slide-wide statistics** over predicted pixels: :meth:`~DenseMapStore.feature_moments`
  (weighted mean and covariance of the feature channels, weight = each pixel's predicted
  share, :meth:`predicted_fraction`, so a coarse level's mean equals the level-0 mean up to
  the ragged edges of the pooling), from which :meth:`~DenseMapStore.gene_means` and
  :meth:`~DenseMapStore.gene_stats` (mean and SD of every gene: the head is affine, so
  ``mean_g = μ·w_g + b_g`` and ``var_g = w_gᵀ Σ w_g``) follow without a per-gene pass.
- **Genes can be added to a finished map** (:meth:`~DenseMapStore.add_genes`, e.g. a
  zero-shot head for a gene the model was not trained on): the features are never touched.
  The grown head is written to *new* arrays (``head/v<n>``); the one attribute write that
  switches ``genes``, ``head_arrays`` and ``gene_sources`` together is the commit (zarr
  writes ``zarr.json`` to a temporary file and renames it), so a crash at any point leaves
  either the old or the new head, each consistent with its gene list. Superseded head
  arrays are deleted after the commit (a store that has gained genes cannot be read by
  versions of this package that predate :meth:`add_genes`: they look for ``head/W`` and fail
  instead of pairing a wrong head with the gene list). One writer at a time.
- **Every instance sees the current head.** Each read of the head or the attributes checks
  (one ``stat``) whether the group's ``zarr.json`` changed on disk and, if so, re-reads it
  (and the head arrays when ``genes``/``head_arrays`` changed), so a store opened by a
  viewer sees genes added by another instance or process at once. Attribute writes re-read
  the attributes first, so a writer never puts back a stale gene list.
- **Typed metadata**: :attr:`~DenseMapStore.slide_mpp`, :attr:`~DenseMapStore.model_mpp`,
  :attr:`~DenseMapStore.map_mpp`, :attr:`~DenseMapStore.slide_path`,
  :attr:`~DenseMapStore.slide_shape`, :attr:`~DenseMapStore.provenance`,
  :attr:`~DenseMapStore.normalisation` read the attributes :func:`~.predict_slide.predict_slide`
  writes (and those of older stores); callers never dig in ``attrs`` dicts.
- **``done`` is the resume authority**, persisted after each tile's features are written:
  a tile is done only once its chunk is on disk.
- **Pyramid levels are 2x2 mean pools with ragged edges** (``ceil(h/2)``; an edge pixel is
  the mean of the pixels that exist), stored as pooled from the raw (fill-valued) features.
  Until :meth:`build_pyramid` has run (e.g. a partial run), :meth:`features_level`
  computes the same pooling lazily from level 0.
- Features may be float16 (default of :func:`predict_slide`): they halve the disk size and
  decoder features are O(1); the head is applied in float32 to blocks and in float64 to
  aggregated features.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import zarr

from ..errors import InputFileError
from ..io.export import to_jsonable

__all__ = [
    "FORMAT_VERSION",
    "DenseMapStore",
    "FeatureMoments",
    "GeneSource",
    "GeneStats",
    "Normalisation",
]

FORMAT_VERSION = 1
_PYRAMID_MIN_SIDE = 64
#: Pixels of a level read at once by :meth:`DenseMapStore.feature_moments`.
_BAND_PIXELS = 1 << 16
#: Where :meth:`DenseMapStore.create` puts the head (stores that never gained genes).
_HEAD_ROOT = "head"
_STATE_ROOT = "model_state"
_HEAD_VERSION = re.compile(r"^v(\d+)$")

GeneKey = str | int


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """How the predicted values are normalised: ``transform(counts / total · target_sum)``.

    ``transform`` is ``"log1p"`` for every model this package trains; ``None`` (like
    ``description``) when the store records only the ``target_sum``.
    """

    target_sum: float
    transform: str | None = None
    description: str | None = None

    @classmethod
    def from_mapping(cls, value: Any) -> Normalisation | None:
        """From a ``{"target_sum", "transform", "description"}`` mapping (the record a training
        run writes), ``None`` unless it holds a positive, finite ``target_sum``."""
        if not isinstance(value, Mapping):
            return None
        target = _positive(value.get("target_sum"))
        if target is None:
            return None
        transform, description = value.get("transform"), value.get("description")
        return cls(
            target_sum=target,
            transform=None if transform is None else str(transform),
            description=None if description is None else str(description),
        )


@dataclasses.dataclass(frozen=True)
class GeneSource:
    """Where one gene's head column came from: ``source`` is ``"model"`` for the head the map
    was predicted with, else what :meth:`DenseMapStore.add_genes` was told (e.g.
    ``"zero-shot"``); ``encoder`` names what produced the column, ``time`` when it was added
    (ISO 8601, UTC; for model genes the map's creation time when recorded)."""

    symbol: str
    source: str
    encoder: str | None = None
    time: str | None = None
    #: the description a zero-shot gene was predicted from (``None``: the table's / none)
    description: str | None = None


@dataclasses.dataclass(frozen=True)
class FeatureMoments:
    """Weighted moments of the feature channels over the predicted pixels of one level."""

    mean: np.ndarray  # (C,) float64; NaN when nothing was predicted
    cov: np.ndarray | None  # (C, C) float64 (population covariance), when asked for
    weight: float  # Σ predicted share of the pixels used (level-0 pixels / 4**level)
    n_pixels: int  # pixels of the level with a value (predicted share > 0)
    level: int


@dataclasses.dataclass(frozen=True)
class GeneStats:
    """Each gene's mean and standard deviation over the predicted pixels of one level."""

    genes: list[str]
    mean: np.ndarray  # (k,) float64
    sd: np.ndarray  # (k,) float64
    n_pixels: int
    level: int


@dataclasses.dataclass(frozen=True)
class _Head:
    """One consistent snapshot of the head (arrays read-only, shared by every reader)."""

    genes: tuple[str, ...]
    index: dict[str, int]
    W: np.ndarray  # (C, G) float32
    b: np.ndarray  # (G,) float32
    W64: np.ndarray  # (C, G) float64
    b64: np.ndarray  # (G,) float64
    where: str  # group of the arrays: "head" or "head/v<n>"


class DenseMapStore:
    """A dense feature map + linear gene head in a zarr v3 group (see module docstring)."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = Path(path)
        self._zmode: Literal["r", "r+"] = "r" if group.store.read_only else "r+"
        self._features = _array(group, "features", self.path)
        self._done = _array(group, "done", self.path)
        self._coverage = _array(group, "coverage", self.path)
        self._lock = threading.RLock()
        try:
            self._head = self._read_head(dict(group.attrs))
        except KeyError as exc:
            raise InputFileError(path, f"the dense-map store has no head arrays ({exc})") from exc
        self._meta_key = self._stat_key()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        map_shape: tuple[int, int],
        feature_dim: int,
        genes: Sequence[str],
        head_W: np.ndarray,
        head_b: np.ndarray,
        map_mpp: float | None,
        attrs: Mapping[str, Any] | None = None,
        chunk: int | tuple[int, int] = 128,
        dtype: str | np.dtype = "float32",
        fill_value: float = 0.0,
        overwrite: bool = False,
        normalisation: Normalisation | Mapping[str, Any] | None = None,
    ) -> DenseMapStore:
        """Create an empty store (status ``'partial'``) and return it opened ``'r+'``.

        The group is built under a temporary name next to ``path`` and renamed into place, so
        ``path`` never holds a half-initialised store. ``normalisation`` (a
        :class:`Normalisation` or the mapping a training run records) is stored as the
        ``normalisation`` attribute, read back by :attr:`normalisation`.
        """
        path = Path(path)
        h, w = (int(v) for v in map_shape)
        if np.isscalar(chunk):
            ch = cw = int(cast(int, chunk))
        else:
            ch, cw = (int(c) for c in cast("tuple[int, int]", chunk))
        W = np.asarray(head_W, dtype=np.float32)
        b = np.asarray(head_b, dtype=np.float32).reshape(-1)
        genes = [str(g) for g in genes]
        if W.shape != (feature_dim, len(genes)) or b.shape != (len(genes),):
            raise ValueError(
                f"head shapes W {W.shape}, b {b.shape} do not match feature_dim={feature_dim} "
                f"and {len(genes)} genes"
            )
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        rows, cols = math.ceil(h / ch), math.ceil(w / cw)
        try:  # missing parent folders are created (as zarr does); a file in the way is named
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(
                path, f"cannot create the map store in {path.parent} ({exc.strerror or exc})"
            ) from exc

        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            g = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
            g.create_array(
                "features",
                shape=(h, w, int(feature_dim)),
                chunks=(ch, cw, int(feature_dim)),
                dtype=np.dtype(dtype),
                fill_value=float(fill_value),
            )
            gchunk = (min(rows, 256), min(cols, 256))
            g.create_array("done", shape=(rows, cols), chunks=gchunk, dtype=bool, fill_value=False)
            g.create_array(
                "coverage", shape=(rows, cols), chunks=gchunk, dtype=np.uint8, fill_value=0
            )
            head = g.create_group(_HEAD_ROOT)
            head.create_array("W", shape=W.shape, dtype=np.float32)[...] = W
            head.create_array("b", shape=b.shape, dtype=np.float32)[...] = b
            meta: dict[str, Any] = dict(attrs or {})
            if normalisation is not None:
                norm = (
                    normalisation
                    if isinstance(normalisation, Normalisation)
                    else Normalisation.from_mapping(normalisation)
                )
                if norm is None:
                    raise ValueError(
                        f"normalisation needs a positive target_sum, got {normalisation!r}"
                    )
                meta["normalisation"] = dataclasses.asdict(norm)
            meta.update(
                format="napari-histoexpress dense map",
                format_version=FORMAT_VERSION,
                genes=genes,
                map_mpp=None if map_mpp is None else float(map_mpp),
                feature_dim=int(feature_dim),
                map_shape=[h, w],
                chunk=[ch, cw],
                tile_grid=[rows, cols],
                fill_value=float(fill_value),
                status="partial",
                pyramid_levels=0,
            )
            g.attrs.update(to_jsonable(meta))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> DenseMapStore:
        """Open an existing store (``mode`` ``'r'`` or ``'r+'``)."""
        path = Path(path)
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        zmode: Literal["r", "r+"] = "r" if mode == "r" else "r+"
        if not path.is_dir():
            raise InputFileError(path, "no dense-map store here (not a directory)")
        try:
            g = zarr.open_group(zarr.storage.LocalStore(path, read_only=mode == "r"), mode=zmode)
        except Exception as exc:
            raise InputFileError(path, f"not a zarr group: {exc}") from exc
        if "features" not in g or "genes" not in g.attrs:
            raise InputFileError(path, "zarr group is not a dense-map store (no features/genes)")
        return cls(g, path)

    # ------------------------------------------------------------------ metadata sync
    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path / "zarr.json")
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _sync(self, *, force: bool = False) -> None:
        """Re-read the group's attributes (and the head, when it changed) if ``zarr.json``
        changed on disk since the last read (see the module docstring)."""
        key = self._stat_key()
        if not force and (key is None or key == self._meta_key):
            return  # unchanged (or not stat-able: keep what was read)
        with self._lock:
            if not force and key == self._meta_key:
                return
            for attempt in (0, 1):
                group = zarr.open_group(self._group.store, mode=self._zmode)
                attrs = dict(group.attrs)
                try:
                    if (
                        tuple(str(g) for g in cast("list[Any]", attrs.get("genes", [])))
                        != self._head.genes
                        or _head_where(attrs) != self._head.where
                    ):
                        self._head = self._read_head(attrs, group)
                except KeyError:
                    # superseded arrays deleted between reading attrs and arrays: re-read once
                    if attempt:
                        raise
                    continue
                break
            self._group = group
            self._meta_key = key

    def _read_head(self, attrs: Mapping[str, Any], group: zarr.Group | None = None) -> _Head:
        group = self._group if group is None else group
        where = _head_where(attrs)
        genes = tuple(str(g) for g in cast("list[Any]", attrs["genes"]))
        if where not in group:
            raise KeyError(where)
        W = np.asarray(_array(group, f"{where}/W", self.path)[...], dtype=np.float32)
        b = np.asarray(_array(group, f"{where}/b", self.path)[...], dtype=np.float32)
        if W.shape != (self.feature_dim, len(genes)) or b.shape != (len(genes),):
            raise InputFileError(
                self.path,
                f"the head arrays {where}/W {W.shape}, {where}/b {b.shape} do not match the "
                f"{len(genes)} genes and {self.feature_dim} features of this dense-map store",
            )
        index: dict[str, int] = {}
        for i, g in enumerate(genes):
            index.setdefault(g, i)
        W64, b64 = W.astype(np.float64), b.astype(np.float64)
        for arr in (W, b, W64, b64):
            arr.setflags(write=False)
        return _Head(genes, index, W, b, W64, b64, where)

    def _current(self) -> _Head:
        self._sync()
        return self._head

    def _attrs(self) -> Mapping[str, Any]:
        self._sync()
        return cast("Mapping[str, Any]", self._group.attrs)

    def _set_attrs(self, values: Mapping[str, Any]) -> None:
        """Write attributes (JSON-sanitised) on top of the ones on disk *now* (one write)."""
        with self._lock:
            self._sync(force=True)
            self._group.attrs.update(to_jsonable(dict(values)))

    def _check_writable(self, what: str) -> None:
        if self._zmode != "r+":
            raise ValueError(
                f"{self.path}: the dense-map store is open read-only; open it with mode='r+' "
                f"to {what}"
            )

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes (a copy, as on disk now)."""
        return dict(self._attrs())

    @property
    def genes(self) -> list[str]:
        """The map's genes, in head order (including genes added by :meth:`add_genes`)."""
        return list(self._current().genes)

    @property
    def map_mpp(self) -> float | None:
        """µm per map pixel (level 0), or None when the slide resolution was unknown."""
        return _positive(self._attrs().get("map_mpp"))

    @property
    def slide_mpp(self) -> float | None:
        """µm per level-0 pixel of the slide the map was predicted from (``slide.mpp``), or
        None when unknown or not recorded."""
        return _positive(self._slide_info().get("mpp"))

    @property
    def model_mpp(self) -> float | None:
        """The working µm/px the model ran at: the run's ``model_mpp`` when one was given,
        else (the slide's native resolution) ``map_mpp / stride``; None when unknown."""
        attrs = self._attrs()
        explicit = _positive(attrs.get("model_mpp"))
        if explicit is not None:
            return explicit
        map_mpp, stride = self.map_mpp, _positive(attrs.get("stride"))
        if map_mpp is not None and stride is not None:
            return map_mpp / stride
        return None

    @property
    def slide_path(self) -> str | None:
        """The path of the slide the map was predicted from, as recorded (None if not)."""
        path = self._slide_info().get("path")
        return str(path) if path else None

    @property
    def slide_shape(self) -> tuple[int, int] | None:
        """``(height, width)`` of the slide's level 0 in pixels, as recorded (None if not)."""
        shape = self._slide_info().get("shape")
        if isinstance(shape, list | tuple) and len(shape) >= 2:
            try:
                return int(shape[0]), int(shape[1])
            except (TypeError, ValueError):
                return None
        return None

    @property
    def provenance(self) -> dict[str, Any]:
        """What made the map (model, run folder, versions, device, creation time...): a
        copy of the ``provenance`` attribute, ``{}`` when none is recorded."""
        prov = self._attrs().get("provenance")
        return dict(prov) if isinstance(prov, Mapping) else {}

    @property
    def normalisation(self) -> Normalisation | None:
        """How the predicted values are normalised, or None when the store does not say.

        Read from the ``normalisation`` attribute (:meth:`create`), else the provenance's
        ``normalisation`` record (as a training run writes it), else a bare
        ``provenance.target_sum`` (older stores: transform and description unknown).
        """
        attrs = self._attrs()
        prov = self.provenance
        for record in (attrs.get("normalisation"), prov.get("normalisation")):
            norm = Normalisation.from_mapping(record)
            if norm is not None:
                return norm
        target = _positive(prov.get("target_sum"))
        return None if target is None else Normalisation(target_sum=target)

    @property
    def gene_sources(self) -> list[GeneSource]:
        """One :class:`GeneSource` per gene (in :attr:`genes` order). Genes without a record
        (every gene of a store that never gained genes) are the trained head's: ``"model"``."""
        head = self._current()
        attrs = self._attrs()
        recorded: dict[str, GeneSource] = {}
        for item in cast("list[Any]", attrs.get("gene_sources") or []):
            if isinstance(item, Mapping) and item.get("symbol") is not None:
                src = _gene_source(item)
                recorded[src.symbol] = src
        created = self.provenance.get("created")
        return [
            recorded.get(g)
            or GeneSource(g, "model", time=None if created is None else str(created))
            for g in head.genes
        ]

    def _slide_info(self) -> Mapping[str, Any]:
        info = self._attrs().get("slide")
        return info if isinstance(info, Mapping) else {}

    @property
    def map_shape(self) -> tuple[int, int]:
        return int(self._features.shape[0]), int(self._features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self._features.shape[2])

    @property
    def chunk(self) -> tuple[int, int]:
        return int(self._features.chunks[0]), int(self._features.chunks[1])

    @property
    def tile_grid(self) -> tuple[int, int]:
        return int(self._done.shape[0]), int(self._done.shape[1])

    @property
    def status(self) -> str:
        return str(self._attrs().get("status", "partial"))

    def set_status(self, status: str) -> None:
        if status not in ("partial", "complete"):
            raise ValueError(f"status must be 'partial' or 'complete', got {status!r}")
        self._set_attrs({"status": status})

    @property
    def pyramid_levels(self) -> int:
        """Levels stored by :meth:`build_pyramid` (level 0 included; 0 until it has run)."""
        return int(cast(int, self._attrs().get("pyramid_levels", 0)))

    @property
    def pyramid_built(self) -> bool:
        """Whether every level of :attr:`n_levels` is stored (reading them is cheap)."""
        return self.n_levels == 1 or self.pyramid_levels >= self.n_levels

    # ------------------------------------------------------------------ the head
    @property
    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (C, G), b (G,))`` float32 copies (to compare or export heads; to apply the
        head use :meth:`apply_head` or :meth:`head_block`)."""
        head = self._current()
        return head.W.copy(), head.b.copy()

    def _indices(self, head: _Head, genes: Sequence[GeneKey] | None) -> list[int] | None:
        if genes is None:
            return None
        if isinstance(genes, str | int | np.integer):
            raise TypeError("genes must be a sequence of names or indices (or None for all)")
        return [_gene_index(head, g) for g in genes]

    def apply_head(
        self,
        pooled: np.ndarray,
        *,
        genes: Sequence[GeneKey] | None = None,
        area: np.ndarray | None = None,
        reduce: str = "mean",
    ) -> np.ndarray:
        """The genes of aggregated features: ``(N, C)`` → ``(N, k)`` float64 (``(C,)`` → ``(k,)``).

        ``reduce="mean"`` (features averaged over a region, a slide mean):
        ``pooled @ W + b``. ``reduce="sum"`` (features summed over a region of ``area`` map
        px², :class:`~napari_histoexpress.geometry.CircleAggregator`'s sums): the bias is
        counted once per pixel, ``pooled @ W + area · b``. ``genes`` (names or indices)
        selects and orders the columns (default every gene). Rows with a non-finite feature
        (a circle off the map or on background) are NaN in every gene.
        """
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        head = self._current()
        x = np.asarray(pooled, dtype=np.float64)
        single = x.ndim == 1
        x2 = x.reshape(1, -1) if single else x
        if x2.ndim != 2 or x2.shape[1] != self.feature_dim:
            raise ValueError(
                f"pooled features must be (N, {self.feature_dim}), got {np.shape(pooled)}"
            )
        idx = self._indices(head, genes)
        W = head.W64 if idx is None else head.W64[:, idx]
        b = head.b64 if idx is None else head.b64[idx]
        if reduce == "sum":
            if area is None:
                raise ValueError("reduce='sum' needs the area (map px²) of each region")
            a = np.asarray(area, dtype=np.float64).reshape(-1)
            if a.shape != (len(x2),):
                raise ValueError(f"area must be ({len(x2)},), got {np.shape(area)}")
            bias = a[0] * b if single else a[:, None] * b
        else:
            bias = b
        # a (C,) vector stays a vector-matrix product (the rounding callers had before)
        out = np.asarray(x @ W + bias, dtype=np.float64)
        if single:
            return out if np.isfinite(x).all() else np.full_like(out, np.nan)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            out[bad] = np.nan
        return out

    def head_block(
        self, block: np.ndarray, genes: GeneKey | Sequence[GeneKey] | None = None
    ) -> np.ndarray:
        """Genes of a block of feature pixels, ``(..., C)`` → ``(..., k)`` float32 (one gene
        given as a name or index: ``(...)``). NaN pixels (never predicted) stay NaN.

        The per-chunk function of :meth:`gene_map` / :meth:`gene_maps` (the lazy heatmaps);
        computed in float32 like them, so a block reads the same as the map's pixels.
        """
        W, b = self._head_arrays(self._current(), genes)
        return _head_block(np.asarray(block), W, b)

    def _head_arrays(
        self, head: _Head, genes: GeneKey | Sequence[GeneKey] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``(W (C,), b ())`` of one gene or ``(W (C, k), b (k,))`` of several."""
        if genes is None:
            return head.W, head.b
        if isinstance(genes, str | int | np.integer):
            g = _gene_index(head, genes)
            return head.W[:, g].copy(), np.asarray(head.b[g], dtype=np.float32)
        idx = [_gene_index(head, g) for g in genes]
        return head.W[:, idx].copy(), head.b[idx].copy()

    def add_genes(
        self,
        symbols: Sequence[str],
        W: np.ndarray,
        b: np.ndarray,
        *,
        source: str,
        encoder: str | None = None,
        replace: bool = False,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        """Append genes to the map's head: ``W (C, k)``, ``b (k,)`` for ``k`` new ``symbols``.

        Their maps are ``features @ W + b`` like every other gene, at once for every reader
        (:meth:`gene_map`, :meth:`apply_head`, :attr:`genes`; other instances of the store
        see them on their next read). ``source`` says where the columns come from (e.g.
        ``"zero-shot"``; the trained head is ``"model"``) and ``encoder`` what produced them;
        both are recorded per gene with the time (:attr:`gene_sources`), and so is a gene's
        entry in ``descriptions`` (symbol → the text its column came from). The stored
        features are never touched; the head swap is atomic (see the module docstring).

        A symbol already in the map is refused unless ``replace=True`` (its column is then
        overwritten in place, keeping the gene order). A single gene may be given as
        ``W (C,)`` and a scalar ``b``. Raises ``ValueError`` (naming the store) for a
        read-only store, duplicate or empty symbols, wrong shapes or non-finite values.
        """
        self._check_writable("add genes")
        where = f"{self.path}: cannot add genes"
        names = [symbols] if isinstance(symbols, str) else list(symbols)
        if not names:
            raise ValueError(f"{where}: no gene symbols given")
        if not all(isinstance(s, str) and s.strip() for s in names):
            raise ValueError(f"{where}: gene symbols must be non-empty strings, got {names!r}")
        dupes = sorted({s for s in names if names.count(s) > 1})
        if dupes:
            raise ValueError(f"{where}: symbol(s) {dupes} given more than once")
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"{where}: source must be a non-empty string (e.g. 'zero-shot')")
        k, c = len(names), self.feature_dim
        W_new = np.asarray(W, dtype=np.float64)
        b_new = np.asarray(b, dtype=np.float64)
        if k == 1 and W_new.shape == (c,):
            W_new = W_new[:, None]
        if k == 1 and b_new.shape == ():
            b_new = b_new.reshape(1)
        if W_new.shape != (c, k) or b_new.shape != (k,):
            raise ValueError(
                f"{where}: W must be ({c}, {k}) and b ({k},) for {k} gene(s) on "
                f"{c} features, got W {np.shape(W)} and b {np.shape(b)}"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf
            W32, b32 = W_new.astype(np.float32), b_new.astype(np.float32)
        if not (np.isfinite(W32).all() and np.isfinite(b32).all()):
            raise ValueError(f"{where}: W and b must be finite (float32) numbers")

        with self._lock:
            self._sync(force=True)
            head = self._head
            present = [s for s in names if s in head.index]
            if present and not replace:
                raise ValueError(
                    f"{where}: gene(s) {present[:10]} already in this map "
                    "(pass replace=True to replace their head columns)"
                )
            genes = list(head.genes)
            W_all, b_all = head.W.copy(), head.b.copy()
            old_sources = self.gene_sources
            sources = {s.symbol: s for s in old_sources}
            now = datetime.now(UTC).isoformat(timespec="seconds")
            extra_W, extra_b = [], []
            for j, name in enumerate(names):
                text = (descriptions or {}).get(name)
                sources[name] = GeneSource(name, source, encoder, now, text)
                if name in head.index:
                    W_all[:, head.index[name]] = W32[:, j]
                    b_all[head.index[name]] = b32[j]
                else:
                    genes.append(name)
                    extra_W.append(W32[:, j])
                    extra_b.append(b32[j])
            if extra_W:
                W_all = np.concatenate([W_all, np.stack(extra_W, axis=1)], axis=1)
                b_all = np.concatenate([b_all, np.asarray(extra_b, np.float32)])

            target = f"{_HEAD_ROOT}/v{self._next_head_version()}"
            self._group.create_array(f"{target}/W", shape=W_all.shape, dtype=np.float32)[...] = (
                W_all
            )
            self._group.create_array(f"{target}/b", shape=b_all.shape, dtype=np.float32)[...] = (
                b_all
            )
            written = _array(self._group, f"{target}/W", self.path)[...]
            if not np.array_equal(np.asarray(written), W_all):  # pragma: no cover - disk fault
                raise InputFileError(self.path, f"the new head {target} did not read back")
            self._set_attrs(  # the commit: genes, head and sources in one zarr.json write
                {
                    "genes": genes,
                    "head_arrays": target,
                    "gene_sources": [dataclasses.asdict(sources[g]) for g in genes],
                }
            )
            self._sync(force=True)
            self._delete_stale_heads(keep=target)

    # ------------------------------------------------------------------ model state
    def set_model_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep what the model computed for this slide and needs to add genes later (e.g.
        ALIGN-ST's visual prompts and its genes' ASIG vectors): float32 arrays under
        ``model_state/<name>``, replacing any state before (attribute ``model_state``: the
        names). The features and the head are not touched."""
        self._check_writable("keep the model's state")
        names = sorted(str(k) for k in arrays)
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"{self.path}: model state names are identifiers, got {name!r}")
        with self._lock:
            if _STATE_ROOT in self._group:
                del self._group[_STATE_ROOT]
            for name in names:
                arr = np.ascontiguousarray(np.asarray(arrays[name], dtype=np.float32))
                self._group.create_array(
                    f"{_STATE_ROOT}/{name}", shape=arr.shape, dtype=np.float32
                )[...] = arr
            self._set_attrs({"model_state": names})

    def model_state(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`set_model_state` kept (empty when none)."""
        names = cast("list[str]", self._attrs().get("model_state") or [])
        return {
            n: np.asarray(_array(self._group, f"{_STATE_ROOT}/{n}", self.path)[...]) for n in names
        }

    def _next_head_version(self) -> int:
        versions = [0]
        if _HEAD_ROOT in self._group:
            root = self._group[_HEAD_ROOT]
            if isinstance(root, zarr.Group):
                for key in root.group_keys():
                    m = _HEAD_VERSION.match(key)
                    if m:
                        versions.append(int(m.group(1)))
        return max(versions) + 1

    def _delete_stale_heads(self, *, keep: str) -> None:
        """Delete head arrays other than ``keep``: the one superseded by a commit and any a
        crash left uncommitted."""
        root = self._group[_HEAD_ROOT]
        if not isinstance(root, zarr.Group):  # pragma: no cover - not a store of ours
            return
        for key in list(root.array_keys()):  # the original head/W, head/b
            del self._group[f"{_HEAD_ROOT}/{key}"]
        for key in list(root.group_keys()):
            if _HEAD_VERSION.match(key) and f"{_HEAD_ROOT}/{key}" != keep:
                del self._group[f"{_HEAD_ROOT}/{key}"]

    # ------------------------------------------------------------------ tiles
    def _grid_rc(self, tile_idx: Any) -> tuple[int, int]:
        cols = self.tile_grid[1]
        if isinstance(tile_idx, tuple):
            return int(tile_idx[0]), int(tile_idx[1])
        if hasattr(tile_idx, "row"):
            return int(tile_idx.row), int(tile_idx.col)
        return divmod(int(tile_idx), cols)

    def write_tile(self, tile: Any, feats: np.ndarray) -> None:
        """Write a tile core's features ``(h, w, C)`` at ``tile``'s map position.

        ``tile`` is a :class:`~napari_histoexpress.inference.tiling.Tile` or any object with
        ``map_y0, map_x0``; the core must lie inside the map.
        """
        feats = np.asarray(feats)
        y0, x0 = int(tile.map_y0), int(tile.map_x0)
        h, w = feats.shape[:2]
        if feats.ndim != 3 or feats.shape[2] != self.feature_dim:
            raise ValueError(f"features must be (h, w, {self.feature_dim}), got {feats.shape}")
        if y0 + h > self.map_shape[0] or x0 + w > self.map_shape[1]:
            raise ValueError(f"tile at ({y0}, {x0}) of size {(h, w)} exceeds the map")
        self._features[y0 : y0 + h, x0 : x0 + w, :] = feats.astype(self._features.dtype)

    def write_all(self, feats: np.ndarray) -> None:
        """Write a whole feature map ``(H, W, C)`` (= :attr:`map_shape`) and mark every tile
        computed — for maps made outside :func:`~.predict_slide.predict_slide` (and tests).
        The status is left to the caller (:meth:`set_status`)."""
        feats = np.asarray(feats)
        if feats.shape[:2] != self.map_shape:
            raise ValueError(f"features must cover the map {self.map_shape}, got {feats.shape}")
        ch, cw = self.chunk
        for r in range(self.tile_grid[0]):
            for c in range(self.tile_grid[1]):
                tile = _TileAt(map_y0=r * ch, map_x0=c * cw)
                self.write_tile(tile, feats[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw])
                self.mark_done((r, c))

    def mark_done(self, tile_idx: Any, *, computed: bool = True) -> None:
        """Mark one tile finished (``computed=False``: skipped as background)."""
        r, c = self._grid_rc(tile_idx)
        self._coverage[r, c] = 1 if computed else 2
        self._done[r, c] = True

    def mark_background(self, grid_mask: np.ndarray) -> None:
        """Mark every tile where ``grid_mask`` (rows, cols) is True as skipped background."""
        grid_mask = np.asarray(grid_mask, dtype=bool)
        if grid_mask.shape != self.tile_grid:
            raise ValueError(f"mask shape {grid_mask.shape} != tile grid {self.tile_grid}")
        cov = np.asarray(self._coverage[...])
        cov[grid_mask & (cov == 0)] = 2
        self._coverage[...] = cov
        self._done[...] = np.asarray(self._done[...]) | grid_mask

    def is_done(self, tile_idx: Any) -> bool:
        r, c = self._grid_rc(tile_idx)
        return bool(self._done[r, c])

    @property
    def done_mask(self) -> np.ndarray:
        """``(rows, cols)`` bool: finished tiles."""
        return np.asarray(self._done[...], dtype=bool)

    @property
    def coverage(self) -> np.ndarray:
        """``(rows, cols)`` uint8: 0 pending, 1 computed, 2 background (never computed)."""
        return np.asarray(self._coverage[...])

    def set_tissue(self, mask: np.ndarray, *, downsample: float) -> None:
        """Store the tissue mask; ``downsample`` = slide level-0 px per mask px."""
        mask = np.asarray(mask, dtype=bool)
        if "tissue" in self._group:
            del self._group["tissue"]
        arr = self._group.create_array("tissue", shape=mask.shape, dtype=bool, fill_value=False)
        arr[...] = mask
        arr.attrs["downsample"] = float(downsample)

    @property
    def tissue(self) -> np.ndarray | None:
        if "tissue" not in self._group:
            return None
        return np.asarray(_array(self._group, "tissue", self.path)[...])

    @property
    def tissue_downsample(self) -> float | None:
        """Slide level-0 px per :attr:`tissue` mask px (``None`` without a mask)."""
        if "tissue" not in self._group:
            return None
        value: Any = _array(self._group, "tissue", self.path).attrs["downsample"]
        return float(value)

    # ------------------------------------------------------------------ maps
    @property
    def n_levels(self) -> int:
        """Number of pyramid levels (level 0 included) down to ``_PYRAMID_MIN_SIDE`` px."""
        h, w = self.map_shape
        n = 1
        while max(h, w) > _PYRAMID_MIN_SIDE and min(h, w) > 1:
            h, w = -(-h // 2), -(-w // 2)
            n += 1
        return n

    @property
    def fill_value(self) -> float:
        """What never-written (background) chunks hold on disk (public reads give NaN)."""
        return float(cast(float, self._attrs().get("fill_value", 0.0)))

    def read_features(self, rows: slice, cols: slice) -> np.ndarray:
        """Level-0 features of a window, read straight from the store ``(h, w, C)`` (no dask
        graph: for small, frequent reads such as live spot updates). Pixels never predicted
        (background, pending tiles) are NaN in every channel."""
        block = np.array(self._features[rows, cols, :])
        ys = np.arange(self.map_shape[0])[rows]
        xs = np.arange(self.map_shape[1])[cols]
        ch, cw = self.chunk
        predicted = (self.coverage == 1)[np.ix_(ys // ch, xs // cw)]
        if not predicted.all():
            block[~predicted] = np.nan
        return block

    def predicted_fraction(self, level: int = 0) -> da.Array:
        """Lazy ``(h, w)`` float32: the share of each pixel's level-0 footprint that was
        predicted (computed tiles). Level 0 is 1 or 0; coarser levels are the same 2x2 mean
        pooling as the features, so ``> 0`` means "has a value" at that level."""
        self._check_level(level)
        x = self._predicted_level0()[..., None]
        for _ in range(level):
            x = mean_pool2(x)
        return x[..., 0]

    def features_level(self, level: int = 0) -> da.Array:
        """Features at pyramid ``level`` as a lazy dask array ``(h, w, C)``; NaN where none
        of a pixel's footprint was predicted (see the module docstring).

        Level 0 keeps the stored dtype; coarser levels are float32 means over the predicted
        pixels of each footprint. Stored levels are used when :meth:`build_pyramid` has run;
        otherwise the 2x2 mean pooling is computed lazily from level 0 (same values).
        """
        raw = self._raw_level(level)
        frac = self.predicted_fraction(level)
        if level == 0:
            return da.map_blocks(
                _mask_level0, raw, frac.rechunk(raw.chunks[:2])[..., None], dtype=raw.dtype
            )
        return da.map_blocks(
            _unmix_pooled,
            raw,
            frac.rechunk(raw.chunks[:2])[..., None],
            self.fill_value,
            dtype=np.float32,
        )

    def feature_moments(
        self, level: int | None = None, *, covariance: bool = False
    ) -> FeatureMoments:
        """Mean (and with ``covariance`` the covariance) of the feature channels over the
        predicted pixels of ``level`` (default the coarsest, a few thousand pixels).

        Each pixel is weighted by its predicted share (:meth:`predicted_fraction`), so the
        mean equals the level-0 mean over predicted pixels up to the ragged edges of the
        pooling, at any level; the covariance is the same weighted (population) one. Read in
        bands of rows (memory bounded whatever the level); sums are taken around the first
        band's mean to keep them well conditioned. NaN when nothing was predicted.
        """
        level = self.n_levels - 1 if level is None else int(level)
        feats = self.features_level(level)
        frac = self.predicted_fraction(level)
        h, w, c = (int(v) for v in feats.shape)
        band = max(1, _BAND_PIXELS // max(w, 1))
        weight, n = 0.0, 0
        s1 = np.zeros(c)
        s2 = np.zeros((c, c)) if covariance else None
        shift: np.ndarray | None = None
        for y0 in range(0, h, band):
            x_band, f_band = da.compute(feats[y0 : y0 + band], frac[y0 : y0 + band])
            x = np.asarray(x_band, dtype=np.float64).reshape(-1, c)
            f = np.asarray(f_band, dtype=np.float64).reshape(-1)
            keep = (f > 0) & np.isfinite(x).all(axis=1)
            if not keep.any():
                continue
            x, f = x[keep], f[keep]
            if shift is None:
                shift = (f @ x) / f.sum()
            d = x - shift
            s1 += f @ d
            if s2 is not None:
                s2 += (d * f[:, None]).T @ d
            weight += float(f.sum())
            n += int(keep.sum())
        if shift is None or not weight > 0:
            nan_cov = np.full((c, c), np.nan) if covariance else None
            return FeatureMoments(np.full(c, np.nan), nan_cov, 0.0, 0, level)
        m = s1 / weight
        cov = None if s2 is None else s2 / weight - np.outer(m, m)
        return FeatureMoments(shift + m, cov, weight, n, level)

    def gene_means(
        self, genes: Sequence[GeneKey] | None = None, level: int | None = None
    ) -> np.ndarray:
        """``(k,)`` float64: each gene's mean over every predicted pixel of the slide (NaN
        when nothing was predicted): :meth:`apply_head` of :meth:`feature_moments`' mean
        (default the coarsest level; the head is affine, so this is the mean of the gene
        maps weighted by predicted share)."""
        return self.apply_head(self.feature_moments(level).mean, genes=genes)

    def gene_stats(
        self, genes: Sequence[GeneKey] | None = None, *, level: int | None = None
    ) -> GeneStats:
        """Each gene's mean and standard deviation over the predicted pixels of ``level``
        (default the coarsest), from :meth:`feature_moments` (one pass over the ``C``
        channels whatever the number of genes): ``mean_g = μ·w_g + b_g``,
        ``sd_g = sqrt(w_gᵀ Σ w_g)``. NaN when nothing was predicted."""
        moments = self.feature_moments(level, covariance=True)
        head = self._current()
        idx = self._indices(head, genes)
        W = head.W64 if idx is None else head.W64[:, idx]
        names = list(head.genes) if idx is None else [head.genes[i] for i in idx]
        mean = self.apply_head(moments.mean, genes=idx)
        assert moments.cov is not None
        var = ((moments.cov @ W) * W).sum(axis=0)
        sd = np.sqrt(np.clip(var, 0.0, None))
        return GeneStats(
            genes=names,
            mean=np.asarray(mean, dtype=np.float64),
            sd=np.asarray(sd, dtype=np.float64),
            n_pixels=moments.n_pixels,
            level=moments.level,
        )

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level {level} out of range 0..{self.n_levels - 1}")

    def _predicted_level0(self) -> da.Array:
        """``(H, W)`` float32, 1 on computed tiles, built per chunk from ``coverage``."""
        computed = self.coverage == 1
        ch, cw = self.chunk

        def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
            assert block_info is not None
            (y0, y1), (x0, x1) = block_info[None]["array-location"]
            value = computed[y0 // ch, x0 // cw]
            return np.full((y1 - y0, x1 - x0), 1.0 if value else 0.0, np.float32)

        h, w = self.map_shape
        return da.map_blocks(
            block, chunks=da.core.normalize_chunks((ch, cw), (h, w)), dtype=np.float32
        )

    def _raw_level(self, level: int) -> da.Array:
        """Pooled features as stored (background = fill value, unmasked)."""
        self._check_level(level)
        if level == 0:
            return da.from_zarr(self._features)
        if self.pyramid_levels > level:
            return da.from_zarr(self._group[f"pyramid/{level}"])
        x = da.from_zarr(self._features)
        for _ in range(level):
            x = mean_pool2(x)
        return x

    def feature_pyramid(self) -> list[da.Array]:
        """All levels, finest first (a napari multiscale list)."""
        return [self.features_level(k) for k in range(self.n_levels)]

    def gene_index(self, gene: GeneKey) -> int:
        return _gene_index(self._current(), gene)

    def gene_map(self, gene: GeneKey, level: int = 0) -> da.Array:
        """Lazy ``(h, w)`` float32 map of one gene: ``features @ W[:, g] + b[g]`` per chunk
        (:meth:`head_block`'s function); NaN where nothing was predicted (background,
        pending tiles)."""
        w, b = self._head_arrays(self._current(), gene)
        feats = self.features_level(level)
        return da.map_blocks(_head_block, feats, w, b, drop_axis=2, dtype=np.float32)

    def gene_maps(self, genes: Sequence[GeneKey], level: int = 0) -> da.Array:
        """Lazy ``(h, w, k)`` float32 maps of several genes (NaN where nothing was predicted),
        per chunk through :meth:`head_block`'s function."""
        W, b = self._head_arrays(self._current(), list(genes))
        feats = self.features_level(level)
        return da.map_blocks(
            _head_block,
            feats,
            W,
            b,
            chunks=(*feats.chunks[:2], (W.shape[1],)),
            dtype=np.float32,
        )

    def build_pyramid(self) -> int:
        """Compute and store the pooled levels (streamed chunk by chunk); returns their count.

        Each level is pooled from the previous *stored* level, so memory stays bounded by a
        few chunks whatever the slide size.
        """
        self._check_writable("build its pyramid")
        self._set_attrs({"pyramid_levels": 0})
        for key in list(self._group.group_keys()):
            if key == "pyramid":
                del self._group["pyramid"]
        pyr = self._group.create_group("pyramid")
        prev = da.from_zarr(self._features)
        ch, cw = self.chunk
        fill = self.fill_value
        for level in range(1, self.n_levels):
            pooled = mean_pool2(prev).astype(self._features.dtype)
            h, w, c = pooled.shape
            chunks = (min(ch, h), min(cw, w), c)
            arr = pyr.create_array(
                str(level),
                shape=(h, w, c),
                chunks=chunks,
                dtype=self._features.dtype,
                fill_value=fill,
            )
            # dask types ``targets`` as numpy ArrayLike; any object with numpy-style
            # ``__setitem__`` (here a zarr array) is accepted at run time.
            da.store(pooled.rechunk(chunks), cast(Any, arr), lock=False, scheduler="synchronous")
            prev = da.from_zarr(arr)
        n = self.n_levels
        self._set_attrs({"pyramid_levels": n})
        return n - 1


def _gene_index(head: _Head, gene: GeneKey) -> int:
    if isinstance(gene, int | np.integer):
        if not 0 <= int(gene) < len(head.genes):
            raise IndexError(f"gene index {gene} out of range (0..{len(head.genes) - 1})")
        return int(gene)
    try:
        return head.index[str(gene)]
    except KeyError:
        raise KeyError(f"gene {gene!r} is not in this map ({len(head.genes)} genes)") from None


def _head_where(attrs: Mapping[str, Any]) -> str:
    """The group holding the head arrays (``head_arrays`` attr; ``head`` for older stores)."""
    where = attrs.get("head_arrays")
    return str(where) if where else _HEAD_ROOT


def _gene_source(item: Mapping[str, Any]) -> GeneSource:
    def opt(key: str) -> str | None:
        value = item.get(key)
        return None if value is None else str(value)

    return GeneSource(
        symbol=str(item["symbol"]),
        source=str(item.get("source") or "model"),
        encoder=opt("encoder"),
        time=opt("time"),
        description=opt("description"),
    )


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float, else None (missing, null, 0, garbage)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    v = float(value)
    return v if math.isfinite(v) and v > 0 else None


@dataclasses.dataclass(frozen=True)
class _TileAt:
    map_y0: int
    map_x0: int


def mean_pool2(x: da.Array) -> da.Array:
    """2x2 mean pooling of a dask ``(h, w, C)`` array; output ``(ceil(h/2), ceil(w/2), C)``.

    Ragged edges average the pixels that exist. Chunks are first made even-sized (except the
    last) so pooling block by block equals pooling the whole array.
    """
    even = tuple(_even_chunks(c) for c in x.chunks[:2])
    x = x.rechunk((*even, x.chunks[2]))
    out_chunks = tuple(tuple(-(-c // 2) for c in cs) for cs in x.chunks[:2])
    return da.map_blocks(
        _pool_block,
        x,
        chunks=(*out_chunks, x.chunks[2]),
        dtype=np.result_type(x.dtype, np.float32),
    )


def _array(group: zarr.Group, key: str, path: Path) -> zarr.Array:
    """``group[key]``, which must be an array (not a sub-group)."""
    node = group[key]
    if not isinstance(node, zarr.Array):
        raise InputFileError(path, f"{key!r} is not a zarr array in this dense-map store")
    return node


def _even_chunks(chunks: tuple[int, ...]) -> tuple[int, ...]:
    total = sum(chunks)
    size = max(chunks)
    size = size + (size % 2)
    n_full, rest = divmod(total, size)
    return (size,) * n_full + ((rest,) if rest else ())


def _pool_block(block: np.ndarray) -> np.ndarray:
    h, w = block.shape[:2]
    ph, pw = h % 2, w % 2
    b = block.astype(np.float32)
    if ph or pw:
        b = np.pad(b, ((0, ph), (0, pw), (0, 0)))
    count = np.ones((h, w, 1), np.float32)
    if ph or pw:
        count = np.pad(count, ((0, ph), (0, pw), (0, 0)))
    H, W = b.shape[:2]
    s = b.reshape(H // 2, 2, W // 2, 2, -1).sum(axis=(1, 3))
    n = count.reshape(H // 2, 2, W // 2, 2, 1).sum(axis=(1, 3))
    return s / n


def _mask_level0(block: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    if predicted.all():
        return block
    return np.where(predicted > 0, block, np.nan).astype(block.dtype)


def _unmix_pooled(block: np.ndarray, frac: np.ndarray, fill: float) -> np.ndarray:
    """Mean over the predicted pixels of each footprint from the plain (fill-diluted) mean."""
    b: np.ndarray = block.astype(np.float32)
    if fill != 0.0:
        b = b - np.float32(fill) * (1.0 - frac)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(frac > 0, b / np.where(frac > 0, frac, 1.0), np.nan)
    return out.astype(np.float32)


def _head_block(block: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``block (..., C) @ W + b`` in float32: ``W (C,)``/``b ()`` give ``(...)``, ``W (C, k)``/
    ``b (k,)`` give ``(..., k)``; the one per-block head of the store."""
    return np.asarray(block.astype(np.float32) @ W + b, dtype=np.float32)
