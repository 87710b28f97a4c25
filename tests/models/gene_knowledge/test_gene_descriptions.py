"""Description tables: the bundled format, user overrides (TSV and JSON), alias lookup."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from napari_histoexpress.errors import InputFileError, InputFileWarning
from napari_histoexpress.models.gene_knowledge import descriptions as desc
from napari_histoexpress.models.gene_knowledge.descriptions import (
    COLUMNS,
    DescriptionTable,
    GeneDescription,
    bundled_descriptions,
    load_descriptions,
    read_description_file,
)


def test_reads_the_bundled_format(small_table: DescriptionTable) -> None:
    assert len(small_table) == 4
    assert small_table.version == "test-1"
    erbb2 = small_table.get("ERBB2")
    assert erbb2 is not None
    assert erbb2.name == "erb-b2 receptor tyrosine kinase 2"
    assert erbb2.source == "project"
    assert '"HER2-positive"' in erbb2.description  # quotes kept as written


@pytest.mark.parametrize(
    ("query", "symbol"),
    [("ERBB2", "ERBB2"), ("erbb2", "ERBB2"), ("HER2", "ERBB2"), ("her-2", "ERBB2"),
     ("CK19", "KRT19"), ("CD45", "PTPRC"), ("hla a", "HLA-A"), ("HLAA", "HLA-A")],
)  # fmt: skip
def test_lookup_by_case_and_alias(small_table: DescriptionTable, query: str, symbol: str) -> None:
    entry = small_table.get(query)
    assert entry is not None and entry.symbol == symbol
    assert query in small_table


def test_unknown_genes_are_missing(small_table: DescriptionTable) -> None:
    assert small_table.get("NOSUCH") is None
    assert small_table.missing(["HER2", "NOSUCH", "MS4A1"]) == ["NOSUCH", "MS4A1"]


def test_version_without_a_version_line_is_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("symbol\tdescription\nA1BG\tsome text\n", encoding="utf-8")
    first = read_description_file(path).version
    assert first is not None and first.startswith("sha256:")
    path.write_text("symbol\tdescription\nA1BG\tother text\n", encoding="utf-8")
    assert read_description_file(path).version != first


def test_user_tsv_overrides_and_adds(small_table: DescriptionTable, fixtures: Path) -> None:
    user = read_description_file(fixtures / "descriptions_user.tsv")
    merged = small_table.updated(user)
    erbb2 = merged.get("HER2")
    assert erbb2 is not None
    assert erbb2.symbol == "ERBB2"  # the row it replaced keeps the approved symbol
    assert erbb2.description.startswith("My own ERBB2 text")
    assert erbb2.source == "user file descriptions_user.tsv"
    assert merged.get("CD20") is not None  # added, found by alias
    assert merged.get("KRT19") == small_table.get("KRT19")
    assert len(merged) == 5
    assert "descriptions_user.tsv" in merged.origin


def test_user_json_forms(small_table: DescriptionTable, fixtures: Path, tmp_path: Path) -> None:
    user = read_description_file(fixtures / "descriptions_user.json")
    assert user.version == "user-json-1"
    merged = small_table.updated(user)
    krt19 = merged.get("KRT19")
    assert krt19 is not None and (krt19.description, krt19.source) == (
        "JSON text for KRT19.",
        "my lab",
    )
    cd3e = merged.get("CD3")
    assert cd3e is not None and cd3e.symbol == "CD3E"
    assert cd3e.source == "user file descriptions_user.json"
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"symbol": "MKI67", "description": "Ki-67 text."}]))
    got = read_description_file(records).get("Ki-67")
    assert got is not None and got.symbol == "MKI67"


def test_alias_row_overrides_the_approved_row(small_table: DescriptionTable) -> None:
    user = DescriptionTable([GeneDescription("HER2", "", "alias row", "me")])
    merged = small_table.updated(user)
    entry = merged.get("ERBB2")
    assert entry is not None and entry.description == "alias row" and entry.symbol == "ERBB2"
    assert len(merged) == len(small_table)


def test_load_descriptions_layers_bundled_env_and_files(
    fixtures: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(desc, "BUNDLED_DESCRIPTIONS", fixtures / "descriptions_small.tsv")
    monkeypatch.setenv("HISTOEXPRESS_GENE_DESCRIPTIONS", str(fixtures / "descriptions_user.tsv"))
    last = tmp_path / "last.json"
    last.write_text(json.dumps({"ERBB2": "the last word"}))
    table = load_descriptions([last])
    erbb2 = table.get("ERBB2")
    assert erbb2 is not None and erbb2.description == "the last word"
    assert table.get("MS4A1") is not None  # from the environment's table
    assert table.get("PTPRC") is not None  # bundled
    only_files = load_descriptions([last], bundled=False, use_env=False)
    assert only_files.symbols == ["ERBB2"]


def test_missing_bundled_table_names_the_file(no_bundled: Path) -> None:
    with pytest.warns(InputFileWarning, match="descriptions.tsv") as record:
        table = bundled_descriptions()
    assert len(table) == 0
    assert str(no_bundled) in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(bundled_descriptions(missing="empty")) == 0
    with pytest.raises(InputFileError, match="bundled gene-description table is missing") as exc:
        bundled_descriptions(missing="error")
    assert exc.value.path == str(no_bundled)


def test_the_bundled_table_when_present() -> None:
    path = desc.BUNDLED_DESCRIPTIONS
    if not path.is_file():
        pytest.skip(f"{path} not built yet")
    table = read_description_file(path)  # duplicates, bad rows raise
    assert len(table) >= 1000
    header = next(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    )
    assert tuple(header.split("\t")) == COLUMNS
    assert all(e.description and e.source for e in table)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gene\tdescription\nA\tb\n", "line 1: the header needs the columns"),
        ("symbol\tdescription\nA\tb\tc\n", "line 2: 3 tab-separated fields"),
        ("symbol\tdescription\nA\tone\nB\tx\nA\ttwo\n", r"A is described twice \(line 2, line 4\)"),
        ("# only a comment\n", "empty"),
    ],
)
def test_bad_tables_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputFileError, match=message) as exc:
        read_description_file(path)
    assert exc.value.path == str(path)


def test_duplicates_can_keep_first_or_last(tmp_path: Path) -> None:
    path = tmp_path / "dup.tsv"
    path.write_text("symbol\tdescription\nA\tone\nA\ttwo\n", encoding="utf-8")
    first = read_description_file(path, duplicates="first").get("A")
    last = read_description_file(path, duplicates="last").get("A")
    assert first is not None and first.description == "one"
    assert last is not None and last.description == "two"


def test_empty_descriptions_are_skipped_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "gaps.tsv"
    path.write_text("symbol\tdescription\nA\t\nB\ttext\nC\t \n", encoding="utf-8")
    with pytest.warns(InputFileWarning, match="2 row") as record:
        table = read_description_file(path)
    assert len(record) == 1
    assert table.symbols == ["B"]


def test_bad_json_is_an_input_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"ERBB2": {"text": "x"}}')
    with pytest.raises(InputFileError, match="unknown field"):
        read_description_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(InputFileError, match="item 0"):
        read_description_file(path)
    path.write_text("{not json")
    with pytest.raises(InputFileError, match="not valid JSON"):
        read_description_file(path)
    with pytest.raises(InputFileError, match="does not exist"):
        read_description_file(tmp_path / "none.tsv")


def test_write_tsv_round_trips(small_table: DescriptionTable, tmp_path: Path) -> None:
    odd = small_table.updated([GeneDescription("X1", "n", "tab\there and\nnewline", "s")])
    out = odd.write_tsv(tmp_path / "out.tsv")
    back = read_description_file(out)
    assert back.symbols == odd.symbols
    x1 = back.get("X1")
    assert x1 is not None and x1.description == "tab here and newline"
    assert [e.as_row() for e in back][:4] == [e.as_row() for e in small_table]
    some = read_description_file(odd.write_tsv(tmp_path / "some.tsv", ["her2", "nosuch"]))
    assert some.symbols == ["ERBB2"]
