"""Choosing the genes to predict and turning raw counts into regression targets.

Choices (the literature's, so numbers are comparable with published ones):

* **Gene selection** (:func:`select_genes`): the ``n`` genes with the highest mean raw
  count, the "highly expressed genes" (HEG) of ST-Net / HisToGene / Hist2ST / BLEEP. The
  mean is *pooled* over all spots of all given sections (sum of counts over every spot
  divided by the total number of spots), so a large section weighs more than a small
  one, exactly as when the sections' count tables are concatenated. Only genes measured
  in *every* section are candidates (a gene missing from one section has no target
  there). Ties are broken by gene name so the selection is deterministic. Alternatively
  a fixed panel is read from a file (one symbol per line, or a ``.npy`` array of names
  such as ``her2st_hvg785.npy``).
* **Normalisation** (:func:`normalise_counts`): library-size normalisation to
  ``target_sum`` (1e4) counts per spot, then ``log1p``: targets are the *natural log of
  (1 + counts per 10k)*. The library size is the spot's total over **all** measured
  genes, not only the selected ones (scanpy's ``normalize_total`` + ``log1p`` on the
  full matrix, then subsetting), so a gene's target does not depend on which other
  genes happen to be predicted. Spots with zero total counts get all-zero targets
  rather than NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import InputFileError

__all__ = [
    "expression_matrix",
    "normalise_counts",
    "raw_counts",
    "read_gene_file",
    "select_genes",
]


def raw_counts(adata: Any) -> Any:
    """The raw count matrix of ``adata``: ``layers['counts']`` when present, else ``X``.

    See :mod:`napari_histoexpress.io.spatial` for the convention.
    """
    layers = getattr(adata, "layers", None)
    if layers is not None and "counts" in layers:
        return layers["counts"]
    return adata.X


def _column_sums(X: Any) -> np.ndarray:
    if sp.issparse(X):
        return np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    return np.asarray(X, dtype=np.float64).sum(axis=0)


def read_gene_file(path: str | Path) -> list[str]:
    """Read a gene panel: a ``.npy`` array of names, or a text file with one name a line.

    Blank lines and lines starting with ``#`` are ignored in text files; names are
    stripped of surrounding whitespace. Duplicates raise (a panel must be a set).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "gene file does not exist")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle: refuse them
            raise InputFileError(path, f"cannot read gene names from .npy ({exc})") from exc
        genes = [str(g).strip() for g in np.asarray(arr).ravel()]
    else:
        text = path.read_text(encoding="utf-8")
        genes = [ln.strip() for ln in text.splitlines()]
        genes = [g for g in genes if g and not g.startswith("#")]
    genes = [g for g in genes if g]
    if not genes:
        raise InputFileError(path, "gene file lists no genes")
    counts: dict[str, int] = {}
    for g in genes:
        counts[g] = counts.get(g, 0) + 1
    dups = sorted(g for g, c in counts.items() if c > 1)
    if dups:
        raise InputFileError(path, f"gene file lists {len(dups)} gene(s) twice, e.g. {dups[:5]}")
    return genes


def select_genes(
    adatas: Sequence[Any],
    n: int | None = 250,
    gene_file: str | Path | None = None,
) -> list[str]:
    """Choose the genes to predict.

    Args:
        adatas: sections (AnnData with raw counts, see :func:`raw_counts`).
        n: number of highly expressed genes to keep (top ``n`` by pooled mean raw count
            over all spots of all sections, among the genes present in every section);
            ``None`` keeps all common genes, ordered by that mean. With ``gene_file``,
            ``n`` is ignored.
        gene_file: a fixed panel (see :func:`read_gene_file`); its order is kept. Genes
            of the panel absent from any section raise :class:`InputFileError` naming a
            few of them.

    Returns:
        Gene names, highest mean first (or in file order).
    """
    if not adatas:
        raise ValueError("select_genes needs at least one section")
    common: set[str] = set(map(str, adatas[0].var_names))
    for ad in adatas[1:]:
        common &= set(map(str, ad.var_names))

    if gene_file is not None:
        panel = read_gene_file(gene_file)
        missing = [g for g in panel if g not in common]
        if missing:
            raise InputFileError(
                gene_file,
                f"{len(missing)} of {len(panel)} genes are not measured in every section, "
                f"e.g. {missing[:8]}",
            )
        return panel

    if n is not None and n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not common:
        raise ValueError("the sections share no gene")
    genes = np.array(sorted(common))
    totals = np.zeros(len(genes), dtype=np.float64)
    n_spots = 0
    for ad in adatas:
        names = np.asarray(ad.var_names).astype(str)
        index = {g: i for i, g in enumerate(names)}
        cols = np.array([index[g] for g in genes])
        totals += _column_sums(raw_counts(ad))[cols]
        n_spots += ad.n_obs
    if n_spots == 0:
        raise ValueError("the sections have no spot")
    means = totals / n_spots
    # highest mean first; ties broken by name (genes already sorted, stable sort)
    order = np.argsort(-means, kind="stable")
    if n is not None:
        if n > len(genes):
            raise ValueError(f"asked for {n} genes but the sections share only {len(genes)}")
        order = order[:n]
    return [str(g) for g in genes[order]]


def normalise_counts(X: Any, target_sum: float = 1e4) -> np.ndarray:
    """``log1p(counts / library_size * target_sum)`` as a dense float32 array.

    ``X`` is ``(n_spots, n_genes)`` raw counts over **all** measured genes (the library
    size is each row's total). The result is on the natural-log scale of
    ``1 + counts per target_sum``; rows with zero total are all zero.
    """
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D count matrix, got shape {X.shape}")
    lib = X.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    return np.log1p(X * scale).astype(np.float32)


def expression_matrix(adata: Any, genes: Sequence[str], target_sum: float = 1e4) -> np.ndarray:
    """Normalised targets ``(n_spots, len(genes))`` float32 for the given genes.

    The library size is computed over all genes of ``adata`` (see module docstring),
    then the columns of ``genes`` are taken in the given order.
    """
    X = raw_counts(adata)
    names = np.asarray(adata.var_names).astype(str)
    index = {g: i for i, g in enumerate(names)}
    missing = [g for g in genes if g not in index]
    if missing:
        raise KeyError(f"{len(missing)} gene(s) not in the section, e.g. {missing[:8]}")
    cols = np.array([index[g] for g in genes], dtype=np.int64)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        sub = np.asarray(X[:, cols].toarray(), dtype=np.float64)
    else:
        Xd = np.asarray(X, dtype=np.float64)
        lib = Xd.sum(axis=1)
        sub = Xd[:, cols]
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    return np.log1p(sub * scale[:, None]).astype(np.float32)
