"""Text embeddings cached on disk, so a description is run through a model once.

Key: the encoder's ``name``, its ``weights_hash`` and its ``variant`` (pooling, length cap,
dtype: :meth:`~napari_histoexpress.models.gene_knowledge.text_encoders.TextEncoder.variant`)
choose a folder; the sha256 of the UTF-8 text names the file in it. A changed description
is a new file; a changed model (other weights) or setting is a new folder, so a stale
embedding is never returned.

Layout (``root`` defaults to ``<cache>/gene_knowledge/text_embeddings``, where ``<cache>`` is
:func:`~napari_histoexpress.user_cache.cache_home`: ``$HISTOEXPRESS_HOME``, else
``~/.cache/napari-histoexpress``)::

    <root>/<encoder name>/<sha256(weights hash, variant)[:16]>/
        key.json                 {"encoder", "weights_hash", "variant"} in full
        ab/ab12...ef.npy         one text's embedding (pooled (D,) float32 or tokens (L, D) float16)

Choices: one small ``.npy`` per text (read with ``allow_pickle=False``), written to a
temporary name and renamed, so concurrent writers never leave a half-written file and no
shared index has to be rewritten; a file of the wrong shape or dtype, or unreadable, counts
as a miss and is replaced. A cache folder that cannot be written (read-only home) turns the
cache off for the rest of the session with one warning — embedding still works.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ...user_cache import cache_home
from .text_encoders import TextEncoder

__all__ = ["EmbeddingCache", "default_cache_root", "text_sha256"]

Kind = Literal["pooled", "tokens"]


def default_cache_root() -> Path:
    """``<cache>/gene_knowledge/text_embeddings`` (nothing is created)."""
    return cache_home("gene_knowledge", "text_embeddings")


def text_sha256(text: str) -> str:
    """The hex sha256 of ``text`` in UTF-8 (the file name of its embedding)."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "encoder"


class EmbeddingCache:
    """Cached :meth:`encode` / :meth:`encode_tokens` of any
    :class:`~napari_histoexpress.models.gene_knowledge.text_encoders.TextEncoder`.

    Args:
        root: the cache folder (default :func:`default_cache_root`, resolved when used, so a
            changed ``$HISTOEXPRESS_HOME`` is followed).
        enabled: ``False`` computes everything and stores nothing.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, enabled: bool = True):
        self._root = Path(root) if root is not None else None
        self.enabled = enabled
        #: texts found in / added to the cache by this object (diagnostics)
        self.hits = 0
        self.misses = 0

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else default_cache_root()

    def folder(self, encoder: TextEncoder, kind: Kind, max_tokens: int | None = None) -> Path:
        """The folder of ``encoder``'s ``kind`` outputs (see the module docstring)."""
        variant = encoder.variant(kind, max_tokens)
        key = hashlib.sha256(f"{encoder.weights_hash}\0{variant}".encode()).hexdigest()[:16]
        return self.root / _slug(encoder.name) / key

    def path(self, folder: Path, text: str) -> Path:
        sha = text_sha256(text)
        return folder / sha[:2] / f"{sha}.npy"

    # -- cached encoding ------------------------------------------------------------
    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """``encoder.encode(texts)``, running the model only on texts not cached yet."""
        texts = [str(t) for t in texts]
        if not self.enabled:
            return encoder.encode(texts)
        folder = self.folder(encoder, "pooled")
        dim = encoder.dim
        found = [self._load(folder, t, (dim,), np.float32) for t in texts]
        todo = list(dict.fromkeys(t for t, f in zip(texts, found, strict=True) if f is None))
        if todo:
            new = dict(zip(todo, encoder.encode(todo), strict=True))
            self._store(folder, encoder, "pooled", new)
            found = [new[t] if f is None else f for t, f in zip(texts, found, strict=True)]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        out = np.zeros((len(texts), dim), np.float32)
        for i, vec in enumerate(found):
            out[i] = np.asarray(vec, np.float32)
        return out

    def encode_tokens(
        self, encoder: TextEncoder, texts: Sequence[str], *, max_tokens: int = 128
    ) -> list[np.ndarray]:
        """``encoder.encode_tokens(texts, max_tokens=...)`` through the cache."""
        texts = [str(t) for t in texts]
        if not self.enabled:
            return encoder.encode_tokens(texts, max_tokens=max_tokens)
        folder = self.folder(encoder, "tokens", max_tokens)
        dim = encoder.dim
        found = [self._load(folder, t, (None, dim), np.float16, max_tokens) for t in texts]
        todo = list(dict.fromkeys(t for t, f in zip(texts, found, strict=True) if f is None))
        if todo:
            new = dict(zip(todo, encoder.encode_tokens(todo, max_tokens=max_tokens), strict=True))
            self._store(folder, encoder, "tokens", new, max_tokens)
            found = [new[t] if f is None else f for t, f in zip(texts, found, strict=True)]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        return [np.asarray(f, np.float16) for f in found if f is not None]

    # -- files ------------------------------------------------------------------------
    def _load(
        self,
        folder: Path,
        text: str,
        shape: tuple[int | None, ...],
        dtype: type,
        max_rows: int | None = None,
    ) -> np.ndarray | None:
        path = self.path(folder, text)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if arr.dtype != dtype or arr.ndim != len(shape):
            return None
        if any(
            want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
        ):
            return None
        if max_rows is not None and arr.shape[0] > max_rows:
            return None
        return arr

    def _store(
        self,
        folder: Path,
        encoder: TextEncoder,
        kind: Kind,
        arrays: dict[str, np.ndarray],
        max_tokens: int | None = None,
    ) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            key = folder / "key.json"
            if not key.exists():
                record = {
                    "encoder": encoder.name,
                    "weights_hash": encoder.weights_hash,
                    "variant": encoder.variant(kind, max_tokens),
                }
                _write_atomic(key, json.dumps(record, indent=1).encode())
            dtype = np.float32 if kind == "pooled" else np.float16
            for text, arr in arrays.items():
                path = self.path(folder, text)
                path.parent.mkdir(exist_ok=True)
                _save_npy(path, np.ascontiguousarray(arr, dtype=dtype))
        except OSError as exc:
            self.enabled = False
            warnings.warn(
                f"{folder}: cannot write the text-embedding cache ({exc.strerror or exc}); "
                "embeddings are computed without it for now",
                stacklevel=3,
            )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:12]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
