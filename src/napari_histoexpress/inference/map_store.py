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
    head/W          (C, G) float32, head/b (G,) float32
    attrs           genes, map_mpp, feature_dim, chunk, fill_value, status ('partial' or
                    'complete'), pyramid_levels, plus the caller's attrs (model_mpp, stride,
                    slide path/shape/mpp, tile_px, halo_px, provenance, ...)

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
- **Slide-wide means** over predicted pixels: :meth:`~DenseMapStore.gene_means` (weights =
  predicted share per pixel of a coarse level; ignoring non-finite values of
  :meth:`~DenseMapStore.gene_maps` with ``np.nanmean`` gives nearly the same).
- **``done`` is the resume authority**, persisted after each tile's features are written:
  a tile is done only once its chunk is on disk.
- **Pyramid levels are 2x2 mean pools with ragged edges** (``ceil(h/2)``; an edge pixel is
  the mean of the pixels that exist), stored as pooled from the raw (fill-valued) features.
  Until :meth:`build_pyramid` has run (e.g. a partial run), :meth:`features_level`
  computes the same pooling lazily from level 0.
- Features may be float16 (default of :func:`predict_slide`): they halve the disk size and
  decoder features are O(1); the head is applied in float32.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import zarr

from ..errors import InputFileError

__all__ = ["FORMAT_VERSION", "DenseMapStore"]

FORMAT_VERSION = 1
_PYRAMID_MIN_SIDE = 64


class DenseMapStore:
    """A dense feature map + linear gene head in a zarr v3 group (see module docstring)."""

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = Path(path)
        self._features = _array(group, "features", self.path)
        self._done = _array(group, "done", self.path)
        self._coverage = _array(group, "coverage", self.path)
        attrs = dict(group.attrs)
        self._genes: list[str] = list(cast("list[str]", attrs["genes"]))
        self._W = np.asarray(_array(group, "head/W", self.path)[...], dtype=np.float32)
        self._b = np.asarray(_array(group, "head/b", self.path)[...], dtype=np.float32)

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
    ) -> DenseMapStore:
        """Create an empty store (status ``'partial'``) and return it opened ``'r+'``.

        The group is built under a temporary name next to ``path`` and renamed into place, so
        ``path`` never holds a half-initialised store.
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
            head = g.create_group("head")
            head.create_array("W", shape=W.shape, dtype=np.float32)[...] = W
            head.create_array("b", shape=b.shape, dtype=np.float32)[...] = b
            meta: dict[str, Any] = dict(attrs or {})
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
            g.attrs.update(_jsonable(meta))
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

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes (a copy)."""
        return dict(self._group.attrs)

    def update_attrs(self, **values: Any) -> None:
        self._group.attrs.update(_jsonable(values))

    @property
    def genes(self) -> list[str]:
        return list(self._genes)

    @property
    def map_mpp(self) -> float | None:
        """µm per map pixel (level 0), or None when the slide resolution was unknown."""
        v = self._group.attrs.get("map_mpp")
        return None if v is None else float(cast(float, v))

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
        return str(self._group.attrs.get("status", "partial"))

    def set_status(self, status: str) -> None:
        if status not in ("partial", "complete"):
            raise ValueError(f"status must be 'partial' or 'complete', got {status!r}")
        self._group.attrs["status"] = status

    @property
    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (C, G), b (G,))`` float32 copies."""
        return self._W.copy(), self._b.copy()

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
        return float(cast(float, self._group.attrs.get("fill_value", 0.0)))

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

    def gene_means(
        self, genes: Sequence[str | int] | None = None, level: int | None = None
    ) -> np.ndarray:
        """``(k,)`` float64: each gene's mean over every predicted pixel of the slide (NaN
        when nothing was predicted). Read at ``level`` (default the coarsest, a few thousand
        pixels), weighting each pixel by its predicted share (:meth:`predicted_fraction`),
        which equals the level-0 mean up to the ragged edges of the pooling."""
        idx = [self.gene_index(g) for g in (range(len(self._genes)) if genes is None else genes)]
        level = self.n_levels - 1 if level is None else int(level)
        raw = np.asarray(self._raw_level(level), dtype=np.float64)
        frac = np.asarray(self.predicted_fraction(level), dtype=np.float64)
        total = float(frac.sum())
        if not total > 0:
            return np.full(len(idx), np.nan)
        # raw = frac * masked + fill * (1 - frac) per pixel (background reads as fill)
        sums = raw.reshape(-1, raw.shape[-1]).sum(axis=0) - self.fill_value * (frac.size - total)
        mean_feats = sums / total
        W, b = self._W[:, idx].astype(np.float64), self._b[idx].astype(np.float64)
        return np.asarray(mean_feats @ W + b, dtype=np.float64)

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
        if int(cast(int, self._group.attrs.get("pyramid_levels", 0))) > level:
            return da.from_zarr(self._group[f"pyramid/{level}"])
        x = da.from_zarr(self._features)
        for _ in range(level):
            x = mean_pool2(x)
        return x

    def feature_pyramid(self) -> list[da.Array]:
        """All levels, finest first (a napari multiscale list)."""
        return [self.features_level(k) for k in range(self.n_levels)]

    def gene_index(self, gene: str | int) -> int:
        if isinstance(gene, (int, np.integer)):
            if not 0 <= int(gene) < len(self._genes):
                raise IndexError(f"gene index {gene} out of range (0..{len(self._genes) - 1})")
            return int(gene)
        try:
            return self._genes.index(str(gene))
        except ValueError:
            raise KeyError(f"gene {gene!r} is not in this map ({len(self._genes)} genes)") from None

    def gene_map(self, gene: str | int, level: int = 0) -> da.Array:
        """Lazy ``(h, w)`` float32 map of one gene: ``features @ W[:, g] + b[g]`` per chunk;
        NaN where nothing was predicted (background, pending tiles)."""
        g = self.gene_index(gene)
        w = self._W[:, g].copy()
        b = float(self._b[g])
        feats = self.features_level(level)
        return da.map_blocks(_apply_head, feats, w, b, drop_axis=2, dtype=np.float32)

    def gene_maps(self, genes: Sequence[str | int], level: int = 0) -> da.Array:
        """Lazy ``(h, w, k)`` float32 maps of several genes (NaN where nothing was predicted)."""
        idx = [self.gene_index(g) for g in genes]
        W = self._W[:, idx].copy()
        b = self._b[idx].copy()
        feats = self.features_level(level)
        return da.map_blocks(
            _apply_head_many,
            feats,
            W,
            b,
            chunks=(*feats.chunks[:2], (len(idx),)),
            dtype=np.float32,
        )

    def build_pyramid(self) -> int:
        """Compute and store the pooled levels (streamed chunk by chunk); returns their count.

        Each level is pooled from the previous *stored* level, so memory stays bounded by a
        few chunks whatever the slide size.
        """
        for key in list(self._group.group_keys()):
            if key == "pyramid":
                del self._group["pyramid"]
        self._group.attrs["pyramid_levels"] = 0
        pyr = self._group.create_group("pyramid")
        prev = da.from_zarr(self._features)
        ch, cw = self.chunk
        for level in range(1, self.n_levels):
            pooled = mean_pool2(prev).astype(self._features.dtype)
            h, w, c = pooled.shape
            chunks = (min(ch, h), min(cw, w), c)
            arr = pyr.create_array(
                str(level),
                shape=(h, w, c),
                chunks=chunks,
                dtype=self._features.dtype,
                fill_value=float(cast(float, self._group.attrs.get("fill_value", 0.0))),
            )
            # dask types ``targets`` as numpy ArrayLike; any object with numpy-style
            # ``__setitem__`` (here a zarr array) is accepted at run time.
            da.store(pooled.rechunk(chunks), cast(Any, arr), lock=False, scheduler="synchronous")
            prev = da.from_zarr(arr)
        n = self.n_levels
        self._group.attrs["pyramid_levels"] = n
        return n - 1


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


def _apply_head(block: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return (block.astype(np.float32) @ w + np.float32(b)).astype(np.float32)


def _apply_head_many(block: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (block.astype(np.float32) @ W + b).astype(np.float32)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to JSON-friendly values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return str(value)
