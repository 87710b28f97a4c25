"""Gene search: symbols first (prefix, then substring), then curated aliases."""

from __future__ import annotations

import pytest

from napari_histoexpress.models.gene_aliases import (
    ALIASES,
    aliases_of,
    filter_genes,
    normalise,
    search_genes,
)

GENES = ["ERBB2", "KRT19", "PTPRC", "COL1A1", "MKI67", "ACTA2", "CD274", "ESR1", "ERBB3", "PGR"]


@pytest.mark.parametrize(
    ("query", "gene"),
    [
        ("HER2", "ERBB2"),
        ("her-2", "ERBB2"),
        ("PD-L1", "CD274"),
        ("pdl1", "CD274"),
        ("Ki-67", "MKI67"),
        ("KI67", "MKI67"),
        ("ER", "ESR1"),
        ("CK19", "KRT19"),
        ("CD45", "PTPRC"),
        ("alpha-SMA", "ACTA2"),
        ("PR", "PGR"),
    ],
)
def test_aliases_find_the_approved_symbol(query: str, gene: str) -> None:
    assert gene in filter_genes(query, GENES)


def test_order_is_prefix_then_substring_then_alias() -> None:
    genes = ["ACTA2", "KRT19", "CKB", "ACK1", "KRT5"]
    hits = search_genes("ck", genes)
    # CKB starts with "ck", ACK1 contains it, KRT19/KRT5 only through CK19/CK5
    assert [m.gene for m in hits] == ["CKB", "ACK1", "KRT19", "KRT5"]
    assert [m.kind for m in hits] == ["prefix", "substring", "alias", "alias"]
    assert hits[2].alias == "CK19"


def test_exact_symbol_first_and_exact_alias_before_alias_prefix() -> None:
    genes = ["ERBB3", "ERBB2", "ESR1", "EGFR"]
    # "ER": ERBB3/ERBB2 by prefix (model order kept), ESR1 via exact alias "ER", EGFR via
    # the alias prefix ERBB1
    assert filter_genes("er", genes) == ["ERBB3", "ERBB2", "ESR1", "EGFR"]
    assert filter_genes("erbb2", genes)[0] == "ERBB2"
    assert search_genes("ERBB2", genes)[0].kind == "exact"


def test_case_insensitive_and_empty_query() -> None:
    assert filter_genes("krt", GENES) == ["KRT19"]
    assert filter_genes("KrT1", GENES) == ["KRT19"]
    assert filter_genes("", GENES) == GENES
    assert filter_genes("  - ", GENES) == GENES
    assert filter_genes("zzz", GENES) == []


def test_table_is_consistent() -> None:
    assert normalise("PD-L1") == "pdl1"
    assert "HER2" in aliases_of("ERBB2") and aliases_of("NOT_A_GENE") == ()
    for gene, aliases in ALIASES.items():
        assert gene == gene.upper() and aliases, gene
        assert normalise(gene) not in {normalise(a) for a in aliases}, gene
