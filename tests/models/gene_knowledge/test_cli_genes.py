"""``histoexpress genes describe`` and ``histoexpress genes embed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress.cli import build_parser, main
from napari_histoexpress.models.gene_knowledge import read_description_file, read_embedding_file


@pytest.fixture
def table(fixtures: Path) -> str:
    return str(fixtures / "descriptions_small.tsv")


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_prints_description_and_source(capsys: Any, table: str, fixtures: Path) -> None:
    code, out, err = _run(
        capsys, "genes", "describe", "ERBB2", "HER2", "CK19", "--descriptions", table,
        "--descriptions", str(fixtures / "descriptions_user.json"), "--no-bundled",
    )  # fmt: skip
    assert code == 0, err
    assert "ERBB2 — erb-b2 receptor tyrosine kinase 2" in out
    assert "HER2 -> ERBB2 — erb-b2 receptor tyrosine kinase 2" in out
    assert "CK19 -> KRT19 — keratin 19" in out
    assert "  source: project" in out and "  source: my lab" in out
    assert "JSON text for KRT19." in out  # the user table wins
    assert "receptor tyrosine kinase of the EGF receptor family" in " ".join(out.split())
    assert err == ""


def test_describe_unknown_gene_is_one_error_line(capsys: Any, table: str) -> None:
    code, out, err = _run(
        capsys, "genes", "describe", "KRT19", "NOSUCH", "--descriptions", table, "--no-bundled"
    )
    assert code == 2
    assert "KRT19" in out
    (line,) = err.strip().splitlines()
    assert line.startswith("error: NOSUCH: no description in ")
    assert "descriptions_small.tsv" in line and "--descriptions FILE" in line
    assert "--ncbi" in line


def test_describe_warns_once_when_the_bundled_table_is_missing(
    capsys: Any, table: str, no_bundled: Path
) -> None:
    code, out, err = _run(capsys, "genes", "describe", "PTPRC", "--descriptions", table)
    assert code == 0
    (line,) = err.strip().splitlines()
    assert line.startswith(f"warning: {no_bundled}: the bundled gene-description table is missing")
    assert "PTPRC — protein tyrosine phosphatase receptor type C" in out


def test_describe_gene_file_and_tsv_output(capsys: Any, table: str, tmp_path: Path) -> None:
    genes = tmp_path / "panel.txt"
    genes.write_text("PTPRC\nHER2\n")
    out_tsv = tmp_path / "mine.tsv"
    code, out, err = _run(
        capsys, "genes", "describe", "--genes", str(genes), "--descriptions", table,
        "--no-bundled", "--tsv", str(out_tsv),
    )  # fmt: skip
    assert code == 0, err
    assert f"2 descriptions -> {out_tsv}" in out
    assert read_description_file(out_tsv).symbols == ["PTPRC", "ERBB2"]


def test_describe_needs_genes(capsys: Any) -> None:
    code, _, err = _run(capsys, "genes", "describe", "--no-bundled")
    assert code == 2 and "error: --genes" in err


def test_embed_with_minilm_writes_safetensors(capsys: Any, table: str, tmp_path: Path) -> None:
    from napari_histoexpress.models.gene_knowledge import embed_genes, read_description_file

    genes = tmp_path / "panel.txt"
    genes.write_text("ERBB2\nCK19\nPTPRC\n")
    out = tmp_path / "genes.safetensors"
    code, stdout, err = _run(
        capsys, "genes", "embed", "--encoder", "minilm", "--genes", str(genes), "--out",
        str(out), "--descriptions", table, "--no-bundled", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert f"3 genes x 384 (all-MiniLM-L6-v2) -> {out}" in stdout
    back = read_embedding_file(out)
    assert back.symbols == ["ERBB2", "CK19", "PTPRC"]
    assert back.metadata["encoder"] == "all-MiniLM-L6-v2"
    assert back.metadata["weights_hash"].startswith("sha256:")
    direct = embed_genes(
        ["ERBB2", "CK19", "PTPRC"],
        descriptions=read_description_file(table),
        device="cpu",
        cache=False,
    )
    np.testing.assert_allclose(back.vectors, direct.vectors, atol=1e-6)  # type: ignore[arg-type]


def test_embed_tokens(capsys: Any, table: str, tmp_path: Path) -> None:
    out = tmp_path / "tokens.safetensors"
    genes = tmp_path / "panel.txt"
    genes.write_text("ERBB2\nNOSUCH\n")
    code, stdout, err = _run(
        capsys, "genes", "embed", "--genes", str(genes), "--out", str(out), "--tokens",
        "--max-tokens", "12", "--descriptions", table, "--no-bundled", "--device", "cpu",
        "--missing", "learned",
    )  # fmt: skip
    assert code == 0, err
    assert "2 genes up to 12 tokens x 384" in stdout and "1 missing (learned)" in stdout
    (line,) = err.strip().splitlines()
    assert line.startswith("warning: 1 of 2 genes have no embedding: NOSUCH (no description")
    back = read_embedding_file(out)
    assert back.kind == "tokens" and back.tokens is not None
    assert back.tokens[0].shape == (12, 384) and back.tokens[0].dtype == np.float16
    assert back.find("NOSUCH") is None


def test_embed_from_gene2vec_to_npy(capsys: Any, fixtures: Path, tmp_path: Path) -> None:
    genes = tmp_path / "panel.txt"
    genes.write_text("PD-L1\nKRT19\n")
    out = tmp_path / "g2v.npy"
    code, stdout, err = _run(
        capsys, "genes", "embed", "--encoder", str(fixtures / "gene2vec_tiny.txt"),
        "--genes", str(genes), "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert f"2 genes x 4 (file:gene2vec_tiny.txt) -> {out} + {out.with_suffix('.txt')}" in stdout
    np.testing.assert_allclose(np.load(out), [[1, 0, 0, 0], [0.5, 0.6, 0.7, 0.8]])
    assert out.with_suffix(".txt").read_text().split() == ["PD-L1", "KRT19"]


def test_embed_missing_gene_is_one_error_line(
    capsys: Any, table: str, fixtures: Path, tmp_path: Path
) -> None:
    genes = tmp_path / "panel.txt"
    genes.write_text("ERBB2\nNOSUCH\n")
    out = tmp_path / "genes.safetensors"
    code, _, err = _run(
        capsys, "genes", "embed", "--genes", str(genes), "--out", str(out),
        "--descriptions", table, "--no-bundled",
    )  # fmt: skip
    assert code == 2 and not out.exists()
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --missing error: 1 of 2 genes have no embedding: NOSUCH")
    assert "--descriptions FILE" in line and "--missing learned or zero" in line
    code, _, err = _run(
        capsys, "genes", "embed", "--encoder", str(fixtures / "gene2vec_tiny.txt"),
        "--genes", str(genes), "--out", str(out),
    )  # fmt: skip
    assert code == 2 and "not in the embedding file gene2vec_tiny.txt" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--encoder", "bert"], "error: --encoder bert: choose one of: minilm"),
        (["--tokens", "--out-npy"], "error: --out"),
        (["--encoder", "missing_file.safetensors"], "missing_file.safetensors: gene-embedding"),
        (["--template", "{gene}"], "error: --template '{gene}': may only use {symbol}"),
    ],
)
def test_embed_bad_flags(
    capsys: Any, table: str, tmp_path: Path, extra: list[str], message: str
) -> None:
    genes = tmp_path / "panel.txt"
    genes.write_text("ERBB2\n")
    out = str(tmp_path / ("genes.npy" if "--out-npy" in extra else "genes.safetensors"))
    extra = [e for e in extra if e != "--out-npy"]
    code, _, err = _run(
        capsys, "genes", "embed", "--genes", str(genes), "--out", out, "--no-bundled",
        "--descriptions", table, *extra,
    )  # fmt: skip
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(message) or message in line, line


def test_help_has_examples_and_defaults(capsys: Any) -> None:
    parser = build_parser()
    for action in ("describe", "embed"):
        with pytest.raises(SystemExit):
            parser.parse_args(["genes", action, "--help"])
        text = capsys.readouterr().out
        assert f"histoexpress genes {action}" in text
    assert "(default: minilm)" in " ".join(text.split())
    assert "(default: error)" in text


def test_describe_from_the_bundled_table(capsys: Any) -> None:
    from napari_histoexpress.models.gene_knowledge.descriptions import BUNDLED_DESCRIPTIONS

    if not BUNDLED_DESCRIPTIONS.is_file():
        pytest.skip(f"{BUNDLED_DESCRIPTIONS} not built yet")
    code, out, err = _run(capsys, "genes", "describe", "HER2", "PD-L1")
    assert code == 0, err
    assert "HER2 -> ERBB2" in out and "PD-L1 -> CD274" in out
    assert err == ""
