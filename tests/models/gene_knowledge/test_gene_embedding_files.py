"""Precomputed gene embeddings: Gene2Vec text, .npy + symbol list, .safetensors; and the
files written by GeneEmbeddings.save read back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.models.gene_knowledge import (
    FileGeneEncoder,
    TextGeneEncoder,
    create_gene_encoder,
    embed_genes,
    read_embedding_file,
)

G2V = np.array(
    [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [-0.1, -0.2, -0.3, -0.4], [1, 0, 0, 0],
     [0, 1, 0, 0]],
    np.float32,
)  # fmt: skip
G2V_SYMBOLS = ["ERBB2", "KRT19", "PTPRC", "CD274", "HLA-A"]


def test_gene2vec_text(fixtures: Path) -> None:
    f = read_embedding_file(fixtures / "gene2vec_tiny.txt")  # header line skipped, tab too
    assert f.symbols == G2V_SYMBOLS and f.dim == 4
    np.testing.assert_allclose(f.vectors, G2V)  # type: ignore[arg-type]
    encoder = create_gene_encoder(str(fixtures / "gene2vec_tiny.txt"))
    assert isinstance(encoder, FileGeneEncoder) and encoder.name == "file:gene2vec_tiny.txt"
    got = encoder.embed(["PD-L1", "her2", "hla-a", "CK19"])
    np.testing.assert_allclose(got.vectors, G2V[[3, 0, 4, 1]])
    assert got.matched == ["CD274", "ERBB2", "HLA-A", "KRT19"]
    assert not got.learned.any() and got.missing == {}


def test_gene2vec_gz_and_file_prefix(fixtures: Path, tmp_path: Path) -> None:
    gz = tmp_path / "g2v.txt.gz"
    gz.write_bytes(gzip.compress((fixtures / "gene2vec_tiny.txt").read_bytes()))
    got = embed_genes(["KRT19"], f"file:{gz}")
    np.testing.assert_allclose(got.vectors, G2V[[1]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A 1 2\nB 1 2 3\n", "line 2: B has 3 values, earlier lines 2"),
        ("A 1 2\nA 3 4\n", r"A is listed twice \(lines 1 and 2\)"),
        ("A\nB\n", "line 1: expected 'SYMBOL v1 ... vD'"),
        ("A 1 x\n", "line 1: A: values are not numbers"),
        ("A 1 nan\n", "NaN or infinite"),
        ("\n", "no gene vectors"),
    ],
)
def test_bad_gene2vec_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(InputFileError, match=message) as exc:
        read_embedding_file(path)
    assert exc.value.path == str(path)


def test_npy_with_a_symbol_list(tmp_path: Path) -> None:
    np.save(tmp_path / "emb.npy", G2V)
    (tmp_path / "emb.txt").write_text("\n".join(G2V_SYMBOLS) + "\n")
    got = embed_genes(["CD45"], str(tmp_path / "emb.npy"))
    np.testing.assert_allclose(got.vectors, G2V[[2]])
    (tmp_path / "names.txt").write_text("\n".join(reversed(G2V_SYMBOLS)))
    other = create_gene_encoder(str(tmp_path / "emb.npy"), symbols=tmp_path / "names.txt")
    np.testing.assert_allclose(other.embed(["HLA-A"]).vectors, G2V[[0]])


def test_npy_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "emb.npy", G2V)
    with pytest.raises(InputFileError, match="no symbol list found beside it"):
        read_embedding_file(tmp_path / "emb.npy")
    (tmp_path / "emb.txt").write_text("A\nB\n")
    with pytest.raises(InputFileError, match="5 embedding rows but 2 symbols"):
        read_embedding_file(tmp_path / "emb.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.txt").write_text("A\n")
    with pytest.raises(InputFileError, match="without pickle"):
        read_embedding_file(tmp_path / "obj.npy")
    with pytest.raises(InputFileError, match="does not exist"):
        read_embedding_file(tmp_path / "none.safetensors")


def test_safetensors_symbols_in_metadata_or_a_tensor(tmp_path: Path) -> None:
    meta_file = tmp_path / "meta.safetensors"
    save_file({"vectors": G2V}, str(meta_file), metadata={"symbols": json.dumps(G2V_SYMBOLS)})
    np.testing.assert_allclose(embed_genes(["KRT19"], str(meta_file)).vectors, G2V[[1]])
    lines = tmp_path / "lines.safetensors"
    save_file({"embeddings": G2V}, str(lines), metadata={"symbols": "\n".join(G2V_SYMBOLS)})
    assert read_embedding_file(lines).symbols == G2V_SYMBOLS
    tensor = tmp_path / "tensor.safetensors"
    names = np.frombuffer("\n".join(G2V_SYMBOLS).encode(), np.uint8).copy()
    save_file({"embeddings": G2V, "symbols": names}, str(tensor))
    assert read_embedding_file(tensor).symbols == G2V_SYMBOLS
    bare = tmp_path / "bare.safetensors"
    save_file({"a": G2V, "b": G2V}, str(bare))
    (tmp_path / "names.txt").write_text("\n".join(G2V_SYMBOLS))
    with pytest.raises(InputFileError, match="expected a tensor 'embeddings'"):
        read_embedding_file(bare, symbols=tmp_path / "names.txt")  # two candidate tensors
    with pytest.raises(InputFileError, match="not a symbol list"):
        read_embedding_file(bare, symbols=tensor)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputFileError, match="not a readable safetensors file"):
        read_embedding_file(tmp_path / "garbage.safetensors")


def test_saved_embeddings_read_back(counting: Any, small_table: Any, tmp_path: Path) -> None:
    encoder = TextGeneEncoder(counting, small_table, cache=None)
    with pytest.warns(UserWarning, match="NOSUCH"):
        result = encoder.embed(["HER2", "NOSUCH", "KRT19"], missing="learned")
    (path,) = result.save(tmp_path / "genes.safetensors")
    back = read_embedding_file(path)
    assert back.symbols == ["HER2", "NOSUCH", "KRT19"]
    assert back.metadata["encoder"] == "counting" and back.metadata["policy"] == "learned"
    assert back.metadata["format"] == "napari-histoexpress-gene-embeddings"
    np.testing.assert_array_equal(back.vectors, result.vectors)  # type: ignore[arg-type]
    assert back.find("NOSUCH") is None  # written as missing: not a vector to reuse
    again = FileGeneEncoder(path)
    with pytest.warns(UserWarning, match="written as missing"):
        reread = again.embed(["KRT19", "NOSUCH"], missing="zero")
    np.testing.assert_array_equal(reread.vectors[0], result.vectors[2])
    npy, listing = result.save(tmp_path / "genes.npy")
    assert listing.read_text().split() == ["HER2", "NOSUCH", "KRT19"]
    np.testing.assert_array_equal(np.load(npy), result.vectors)
    with pytest.raises(InputFileError, match=r"\.safetensors, or \.npy"):
        result.save(tmp_path / "genes.csv")


def test_saved_token_sequences_read_back(counting: Any, small_table: Any, tmp_path: Path) -> None:
    encoder = TextGeneEncoder(counting, small_table, cache=None)
    result = encoder.embed_tokens(["ERBB2", "KRT19"], max_tokens=6)
    (path,) = result.save(tmp_path / "tokens.safetensors")
    back = FileGeneEncoder(path)
    assert back.file.kind == "tokens"
    again = back.embed_tokens(["KRT19", "ERBB2"], max_tokens=4)
    assert [s.shape for s in again.sequences] == [(4, 8), (4, 8)]
    np.testing.assert_array_equal(again.sequences[0], result.sequences[1][:4])
    with pytest.raises(InputFileError, match="token sequences, not one vector"):
        back.embed(["KRT19"])
    with pytest.raises(InputFileError, match=r"token sequences are written as \.safetensors"):
        result.save(tmp_path / "tokens.npy")


def test_vector_files_have_no_token_sequences(fixtures: Path) -> None:
    encoder = FileGeneEncoder(fixtures / "gene2vec_tiny.txt")
    with pytest.raises(InputFileError, match="not token sequences"):
        encoder.embed_tokens(["ERBB2"])
