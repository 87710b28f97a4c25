"""Gene selection and count normalisation."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.expression import (
    expression_matrix,
    normalise_counts,
    read_gene_file,
    select_genes,
)


def _adata(X: np.ndarray, genes: list[str]) -> ad.AnnData:
    a = ad.AnnData(X=np.asarray(X, dtype=np.float32))
    a.var_names = genes
    return a


def test_select_genes_pooled_mean_over_spots_and_common_genes() -> None:
    # Section A: 1 spot, B: 3 spots. Pooled means: g1=(10+0)/4=2.5, g2=(0+3*4)/4=3.0,
    # g3=(4+3*2)/4=2.5. Mean of per-section means would rank g1 (5.0) first instead.
    a = _adata([[10, 0, 4, 100]], ["g1", "g2", "g3", "only_a"])
    b = _adata([[0, 4, 2], [0, 4, 2], [0, 4, 2]], ["g3", "g2", "g1"][::-1])
    # b's columns: g1=0, g2=4, g3=2
    assert list(b.var_names) == ["g1", "g2", "g3"]
    genes = select_genes([a, b], n=3)
    assert genes[0] == "g2"
    # g1 and g3 tie at 2.5: broken by name
    assert genes[1:] == ["g1", "g3"]
    assert "only_a" not in select_genes([a, b], n=None)
    assert select_genes([a, b], n=1) == ["g2"]
    with pytest.raises(ValueError, match="share only 3"):
        select_genes([a, b], n=4)


def test_select_genes_sparse_equals_dense() -> None:
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.uniform(0, 5, size=40), size=(30, 40)).astype(np.float32)
    names = [f"G{i}" for i in range(40)]
    dense = select_genes([_adata(X, names)], n=10)
    a = _adata(X, names)
    a.X = sp.csr_matrix(X)
    assert select_genes([a], n=10) == dense
    expected = [names[i] for i in np.argsort(-X.mean(axis=0), kind="stable")[:10]]
    assert set(dense) == set(expected)


def test_select_genes_from_files(tmp_path: Path) -> None:
    a = _adata(np.ones((3, 4)), ["A", "B", "C", "D"])
    txt = tmp_path / "panel.txt"
    txt.write_text("# my panel\nC\n\nA\n")
    assert select_genes([a], gene_file=txt) == ["C", "A"]
    npy = tmp_path / "panel.npy"
    np.save(npy, np.array(["D", "B"]))
    assert select_genes([a], gene_file=npy) == ["D", "B"]

    bad = tmp_path / "bad.txt"
    bad.write_text("A\nNOPE1\nNOPE2\n")
    with pytest.raises(InputFileError, match=r"2 of 3 genes.*NOPE1"):
        select_genes([a], gene_file=bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("A\nA\n")
    with pytest.raises(InputFileError, match="twice"):
        read_gene_file(dup)
    with pytest.raises(InputFileError, match="does not exist"):
        read_gene_file(tmp_path / "missing.txt")


def test_normalise_counts_scale_and_zero_rows() -> None:
    X = np.array([[1, 3, 0, 6], [0, 0, 0, 0], [5, 5, 5, 5]], dtype=np.float32)
    Y = normalise_counts(X)
    assert Y.dtype == np.float32
    np.testing.assert_allclose(np.expm1(Y[0]).sum(), 1e4, rtol=1e-5)
    np.testing.assert_allclose(Y[0, 0], np.log1p(1 / 10 * 1e4), rtol=1e-6)
    assert np.all(Y[1] == 0)
    np.testing.assert_allclose(Y[2], np.log1p(2500.0), rtol=1e-6)
    np.testing.assert_allclose(normalise_counts(sp.csr_matrix(X)), Y)


def test_expression_matrix_library_size_over_all_genes() -> None:
    X = np.array([[1, 3, 0, 6], [2, 2, 2, 2]], dtype=np.float32)
    a = _adata(X, ["A", "B", "C", "D"])
    Y = expression_matrix(a, ["D", "A"])
    np.testing.assert_allclose(Y, normalise_counts(X)[:, [3, 0]], rtol=1e-6)
    # library size is 10, not 7 (D + A only)
    np.testing.assert_allclose(Y[0, 0], np.log1p(6 / 10 * 1e4), rtol=1e-6)
    a.X = sp.csr_matrix(X)
    np.testing.assert_allclose(expression_matrix(a, ["D", "A"]), Y, rtol=1e-6)
    # raw counts in layers['counts'] win over a normalised X
    a.layers["counts"] = X.copy()
    a.X = np.zeros_like(X)
    np.testing.assert_allclose(expression_matrix(a, ["D", "A"]), Y, rtol=1e-6)
    with pytest.raises(KeyError, match="ZZZ"):
        expression_matrix(a, ["A", "ZZZ"])


@pytest.mark.shared_data
def test_her2st_gene_selection_and_targets(her2st: Path, shared_data: Path) -> None:
    from napari_histoexpress.io.st_datasets import read_legacy_st

    sections = [
        read_legacy_st(
            her2st / "images" / f"{s}.jpg",
            her2st / "counts" / f"{s}.tsv.gz",
            her2st / "spots" / f"{s}_selection.tsv",
        )
        for s in ("C2", "C3")
    ]
    genes = select_genes(sections, n=250)
    assert len(genes) == 250 and len(set(genes)) == 250
    pooled = np.concatenate(
        [
            np.asarray(s[:, genes].X.toarray() if sp.issparse(s.X) else s[:, genes].X)
            for s in sections
        ]
    ).mean(axis=0)
    assert np.all(np.diff(pooled) <= 1e-9)  # highest pooled mean first
    Y = expression_matrix(sections[0], genes)
    assert Y.shape == (sections[0].n_obs, 250)
    assert np.isfinite(Y).all() and Y.min() >= 0
    # log1p of counts per 10k: top genes of a ~thousands-UMI spot sit around 3-8
    assert 2.0 < float(Y[:, :10].mean()) < 9.0
    assert float(Y.max()) < np.log1p(1e4)

    # the published 785-gene panel is measured in these sections
    panel = select_genes(sections, gene_file=shared_data / "genes" / "her2st_hvg785.npy")
    assert len(panel) == 785
