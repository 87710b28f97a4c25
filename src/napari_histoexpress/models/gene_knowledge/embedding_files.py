"""Gene embeddings in files: read precomputed vectors, write computed ones. Never pickle.

Formats read by :func:`read_embedding_file` (chosen by the suffix):

* ``.npy`` — a numeric ``(G, D)`` array (read with ``allow_pickle=False``) plus a symbol
  list, one symbol a line in row order: given as ``symbols=``, else found beside it as
  ``<stem>.txt``, ``<stem>.symbols.txt`` or ``<stem>.genes.txt`` (a ``.npy`` of names works
  too). What ``histoexpress genes embed --out X.npy`` writes (``X.npy`` + ``X.txt``).
* ``.safetensors`` — a tensor ``embeddings`` ``(G, D)`` (else the file's only 2-D float
  tensor), or token sequences as ``tokens`` ``(G, L, D)`` + ``lengths`` ``(G,)``; the
  symbols in the metadata entry ``symbols`` (a JSON list, or one symbol a line), else in a
  ``uint8`` tensor ``symbols`` (UTF-8, one symbol a line), else a symbol list beside it as
  for ``.npy``. Files written here also record ``encoder``, ``weights_hash``, ``policy``
  and ``missing`` (gene -> reason, JSON) in the metadata, and a ``learned`` ``uint8``
  tensor; genes recorded as missing count as *not in the file* when read back.
* **Gene2Vec text** (``.txt``, ``.vec``, ``.w2v``, each optionally ``.gz``) — one gene a
  line, ``SYMBOL v1 v2 ... vD`` separated by spaces or tabs, as the published Gene2Vec
  vectors (``gene2vec_dim_200_iter_9_w2v.txt``) and word2vec's text format; a first line of
  two integers (word2vec's ``count dim`` header) is skipped. Every line must have the same
  ``D``; a symbol twice is an error naming both lines.

Genes are looked up with :class:`~.symbol_index.SymbolIndex` (exact, then case-insensitive,
then curated aliases).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputFileError
from ...expression import read_gene_file
from .symbol_index import SymbolIndex

__all__ = [
    "EMBEDDING_FILE_SUFFIXES",
    "FORMAT",
    "EmbeddingFile",
    "is_embedding_file",
    "read_embedding_file",
    "write_embeddings",
    "write_token_sequences",
]

FORMAT = "napari-histoexpress-gene-embeddings"
FORMAT_VERSION = "1"
_TEXT_SUFFIXES = (".txt", ".vec", ".w2v")
#: The file suffixes read as embedding files (Gene2Vec text also with ``.gz``).
EMBEDDING_FILE_SUFFIXES: tuple[str, ...] = (".npy", ".safetensors", *_TEXT_SUFFIXES)
_SIDECARS = (".txt", ".symbols.txt", ".genes.txt")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def is_embedding_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s suffix is one of :data:`EMBEDDING_FILE_SUFFIXES`."""
    return _suffix(Path(path)) in EMBEDDING_FILE_SUFFIXES


@dataclass
class EmbeddingFile:
    """A file's embeddings: ``symbols`` in row order and either ``vectors`` ``(G, D)``
    float32 or ``tokens`` (one float16 ``(L_i, D)`` per gene); ``recorded_missing`` lists
    the rows written as placeholders for missing genes (gene -> reason)."""

    path: Path
    symbols: list[str]
    vectors: np.ndarray | None = None
    tokens: list[np.ndarray] | None = None
    recorded_missing: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = SymbolIndex(self.symbols)

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens is not None else "pooled"

    @property
    def dim(self) -> int:
        if self.vectors is not None:
            return int(self.vectors.shape[1])
        assert self.tokens is not None
        return int(self.tokens[0].shape[1]) if self.tokens else 0

    def find(self, gene: str) -> int | None:
        """The row of ``gene`` (``None`` when absent or recorded as missing)."""
        i = self.index.find(gene)
        if i is None or self.symbols[i] in self.recorded_missing:
            return None
        return i


# ---------------------------------------------------------------------------- reading
def read_embedding_file(
    path: str | os.PathLike[str], *, symbols: str | os.PathLike[str] | None = None
) -> EmbeddingFile:
    """Read gene embeddings from ``path`` (formats: module docstring).

    Args:
        path: ``.npy``, ``.safetensors`` or Gene2Vec text.
        symbols: the symbol list of a ``.npy`` (or of a ``.safetensors`` that records none);
            default: found beside the file.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InputFileError(path, f"gene-embedding file {what}")
    kind = _suffix(path)
    if kind == ".npy":
        return _read_npy(path, symbols)
    if kind == ".safetensors":
        return _read_safetensors(path, symbols)
    if kind in _TEXT_SUFFIXES:
        return _read_gene2vec(path)
    raise InputFileError(
        path,
        "not a gene-embedding file (.npy + symbol list, .safetensors, or Gene2Vec text "
        f"{'/'.join(_TEXT_SUFFIXES)})",
    )


def _symbol_file(path: Path, given: str | os.PathLike[str] | None) -> Path:
    if given is not None:
        return Path(given)
    stem = path.with_suffix("")
    for tail in _SIDECARS:
        candidate = stem.with_name(stem.name + tail)
        if candidate.is_file() and candidate != path:
            return candidate
    names = ", ".join(stem.with_name(stem.name + t).name for t in _SIDECARS)
    raise InputFileError(path, f"no symbol list found beside it ({names}); give it explicitly")


def _read_symbols(path: Path) -> list[str]:
    try:
        return read_gene_file(path)
    except UnicodeDecodeError as exc:
        raise InputFileError(path, "not a symbol list (one gene symbol a line, UTF-8)") from exc


def _check_rows(path: Path, symbols: list[str], rows: int, symbol_path: Path | None) -> None:
    if len(symbols) != rows:
        where = f" ({symbol_path.name})" if symbol_path else ""
        raise InputFileError(
            path, f"{rows} embedding rows but {len(symbols)} symbols{where}: they must match"
        )


def _as_vectors(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number) or arr.shape[1] == 0:
        raise InputFileError(
            path, f"expected a numeric (genes, dim) array, got {arr.dtype} {arr.shape}"
        )
    vectors = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise InputFileError(path, f"{int(bad.sum())} row(s) hold NaN or infinite values")
    return vectors


def _read_npy(path: Path, symbols: str | os.PathLike[str] | None) -> EmbeddingFile:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputFileError(path, f"cannot read the .npy without pickle ({exc})") from exc
    vectors = _as_vectors(path, np.asarray(arr))
    symbol_path = _symbol_file(path, symbols)
    names = _read_symbols(symbol_path)
    _check_rows(path, names, len(vectors), symbol_path)
    return EmbeddingFile(path, names, vectors=vectors)


def _read_safetensors(path: Path, symbols: str | os.PathLike[str] | None) -> EmbeddingFile:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputFileError(path, f"not a readable safetensors file ({exc})") from exc
    names: list[str] | None = None
    if metadata.get("symbols"):
        text = metadata["symbols"]
        try:
            value = json.loads(text)
            names = [str(s) for s in value] if isinstance(value, list) else None
        except ValueError:
            names = None
        if names is None:
            names = [s.strip() for s in text.splitlines() if s.strip()]
    elif "symbols" in tensors:
        raw = np.asarray(tensors.pop("symbols"), dtype=np.uint8).tobytes().decode("utf-8")
        names = [s.strip() for s in raw.splitlines() if s.strip()]
    tensors.pop("symbols", None)
    symbol_path = None
    if names is None:
        symbol_path = _symbol_file(path, symbols)
        names = _read_symbols(symbol_path)
    try:
        missing = json.loads(metadata.get("missing") or "{}")
    except ValueError as exc:
        raise InputFileError(path, f"metadata 'missing' is not JSON ({exc})") from exc
    missing = {str(k): str(v) for k, v in dict(missing).items()}
    if "tokens" in tensors:
        tokens = np.asarray(tensors["tokens"])
        lengths = np.asarray(tensors.get("lengths", np.full(len(tokens), tokens.shape[1])))
        if tokens.ndim != 3 or lengths.shape != (tokens.shape[0],):
            raise InputFileError(
                path,
                f"tokens must be (genes, length, dim) with lengths (genes,), got "
                f"{tokens.shape} and {lengths.shape}",
            )
        _check_rows(path, names, tokens.shape[0], symbol_path)
        seqs = [tokens[i, : int(n)].astype(np.float16) for i, n in enumerate(lengths)]
        return EmbeddingFile(path, names, tokens=seqs, recorded_missing=missing, metadata=metadata)
    key = "embeddings" if "embeddings" in tensors else None
    if key is None:
        two_d = [k for k, v in tensors.items() if v.ndim == 2]
        if len(two_d) != 1:
            raise InputFileError(
                path,
                "expected a tensor 'embeddings' (genes, dim) or 'tokens' (genes, length, dim); "
                f"found {sorted(tensors)}",
            )
        key = two_d[0]
    vectors = _as_vectors(path, np.asarray(tensors[key]))
    _check_rows(path, names, len(vectors), symbol_path)
    return EmbeddingFile(path, names, vectors=vectors, recorded_missing=missing, metadata=metadata)


def _read_gene2vec(path: Path) -> EmbeddingFile:
    opener: Any = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputFileError(path, f"cannot read the Gene2Vec text file ({exc})") from exc
    symbols: list[str] = []
    rows: list[np.ndarray] = []
    seen: dict[str, int] = {}
    dim: int | None = None
    for k, line in enumerate(lines):
        parts = line.split()
        if not parts:
            continue
        if k == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
            continue  # word2vec header "count dim"
        if len(parts) < 2:
            raise InputFileError(
                path,
                f"line {k + 1}: expected 'SYMBOL v1 ... vD' (a symbol list? then give the "
                "vectors file and this as its symbol list)",
            )
        symbol = parts[0]
        try:
            vector = np.array(parts[1:], dtype=np.float32)
        except ValueError:
            raise InputFileError(path, f"line {k + 1}: {symbol}: values are not numbers") from None
        if dim is None:
            dim = len(vector)
        elif len(vector) != dim:
            raise InputFileError(
                path, f"line {k + 1}: {symbol} has {len(vector)} values, earlier lines {dim}"
            )
        if symbol in seen:
            raise InputFileError(
                path, f"{symbol} is listed twice (lines {seen[symbol] + 1} and {k + 1})"
            )
        seen[symbol] = k
        symbols.append(symbol)
        rows.append(vector)
    if not rows:
        raise InputFileError(path, "no gene vectors in the file")
    return EmbeddingFile(path, symbols, vectors=_as_vectors(path, np.stack(rows)))


# ---------------------------------------------------------------------------- writing
def _metadata(
    genes: Sequence[str],
    missing: Mapping[str, str] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "symbols": json.dumps(list(genes)),
        "missing": json.dumps(dict(missing or {})),
    }
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return meta


def write_embeddings(
    path: str | os.PathLike[str],
    genes: Sequence[str],
    vectors: np.ndarray,
    *,
    learned: np.ndarray | None = None,
    missing: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``(G, D)`` ``vectors`` of ``genes`` atomically: ``.safetensors`` (symbols and
    ``metadata`` recorded inside, ``learned`` as a uint8 tensor) or ``.npy`` + ``.txt``
    (one symbol a line). Returns the files written."""
    from safetensors.numpy import save_file

    from ...io.export import write_atomic, write_text_atomic

    path = Path(path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    genes = [str(g) for g in genes]
    if vectors.ndim != 2 or len(vectors) != len(genes):
        raise ValueError(f"vectors {vectors.shape} do not match {len(genes)} genes")
    mask = np.zeros(len(genes), np.uint8) if learned is None else np.asarray(learned, np.uint8)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors: dict[str, np.ndarray] = {"embeddings": vectors, "learned": mask}
        meta = _metadata(genes, missing, metadata)
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        return [path]
    if suffix == ".npy":
        listing = path.with_suffix(".txt")

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors, allow_pickle=False)

        write_atomic(path, save)
        write_text_atomic("\n".join(genes) + "\n", listing)
        return [path, listing]
    raise InputFileError(path, "write embeddings as .safetensors, or .npy (+ a .txt symbol list)")


def write_token_sequences(
    path: str | os.PathLike[str],
    genes: Sequence[str],
    sequences: Sequence[np.ndarray],
    *,
    learned: np.ndarray | None = None,
    missing: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write token sequences (one ``(L_i, D)`` per gene) as ``.safetensors``: ``tokens``
    ``(G, max L, D)`` float16 zero-padded, ``lengths`` ``(G,)`` int32, ``learned`` uint8."""
    from safetensors.numpy import save_file

    from ...io.export import write_atomic

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputFileError(path, "token sequences are written as .safetensors")
    genes = [str(g) for g in genes]
    if len(sequences) != len(genes):
        raise ValueError(f"{len(sequences)} sequences for {len(genes)} genes")
    dim = int(sequences[0].shape[1]) if sequences else 0
    longest = max((len(s) for s in sequences), default=0)
    tokens = np.zeros((len(genes), longest, dim), np.float16)
    lengths = np.zeros(len(genes), np.int32)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = seq
        lengths[i] = len(seq)
    mask = np.zeros(len(genes), np.uint8) if learned is None else np.asarray(learned, np.uint8)
    tensors: dict[str, np.ndarray] = {"tokens": tokens, "lengths": lengths, "learned": mask}
    meta = _metadata(genes, missing, metadata)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return [path]
