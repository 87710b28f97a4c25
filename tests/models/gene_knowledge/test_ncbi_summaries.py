"""NCBI Gene summaries: the E-utilities JSON parsed from recorded replies, the fetch
driven through a fake ``urlopen``, and the offline path (one warning, no crash)."""

from __future__ import annotations

import datetime as dt
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from napari_histoexpress.models.gene_knowledge.descriptions import DescriptionTable
from napari_histoexpress.models.gene_knowledge.ncbi import (
    NcbiUnavailableWarning,
    esearch_term,
    fetch_ncbi_summaries,
    fill_missing_descriptions,
    match_records,
    parse_esearch,
    parse_esummary,
    record_description,
)

DAY = dt.date(2025, 6, 1)
ASKED = ["ERBB2", "TP53", "KIAA1211L", "NOSUCHGENE1"]


def _load(fixtures: Path, name: str) -> Any:
    return json.loads((fixtures / name).read_text(encoding="utf-8"))


class FakeEutils:
    """Serves the recorded replies by endpoint and remembers every request."""

    def __init__(self, fixtures: Path) -> None:
        self.replies = {
            "esearch.fcgi": (fixtures / "ncbi_esearch.json").read_bytes(),
            "esummary.fcgi": (fixtures / "ncbi_esummary.json").read_bytes(),
        }
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

    def __call__(self, request: Any, timeout: float | None = None) -> io.BytesIO:
        url = request.full_url if isinstance(request, urllib.request.Request) else str(request)
        parsed = urllib.parse.urlparse(url)
        endpoint = parsed.path.rsplit("/", 1)[-1]
        self.requests.append((endpoint, urllib.parse.parse_qs(parsed.query)))
        assert parsed.netloc == "eutils.ncbi.nlm.nih.gov"
        return io.BytesIO(self.replies[endpoint])


def test_parse_recorded_replies(fixtures: Path) -> None:
    ids = parse_esearch(_load(fixtures, "ncbi_esearch.json"))
    assert ids == ["2064", "7157", "100000001", "13866", "343990"]
    records = parse_esummary(_load(fixtures, "ncbi_esummary.json"))
    assert set(records) == set(ids)
    erbb2 = records["2064"]
    assert (erbb2.symbol, erbb2.name, erbb2.taxid) == (
        "ERBB2",
        "erb-b2 receptor tyrosine kinase 2",
        9606,
    )
    assert "HER2" in erbb2.aliases and erbb2.live
    assert not records["100000001"].live  # replaced record


def test_matching_skips_replaced_and_other_species(fixtures: Path) -> None:
    records = parse_esummary(_load(fixtures, "ncbi_esummary.json")).values()
    found = match_records(["ERBB2", "tp53", "HER2", "Neu", "NOSUCHGENE1"], records)
    assert found["ERBB2"].uid == "2064"
    assert found["tp53"].uid == "7157"  # not the secondary record 100000001
    assert found["HER2"].uid == "2064"  # by alias, the mouse record left out
    assert found["Neu"].uid == "2064"  # "NEU" is an alias of the human record only
    assert "NOSUCHGENE1" not in found
    mouse = match_records(["Erbb2"], records, taxid=10090)
    assert mouse["Erbb2"].uid == "13866"


def test_record_description_moves_provenance_to_the_source(fixtures: Path) -> None:
    records = parse_esummary(_load(fixtures, "ncbi_esummary.json"))
    d = record_description(records["2064"], "HER2", fetched=DAY)
    assert d is not None
    assert d.symbol == "HER2"
    assert d.description.endswith("breast and ovarian tumors.")
    assert "provided by" not in d.description
    assert d.source == "NCBI Gene 2064 summary (RefSeq, Jul 2008; fetched 2025-06-01)"
    tp53 = record_description(records["7157"], fetched=DAY)
    assert tp53 is not None and tp53.source == "NCBI Gene 7157 summary (fetched 2025-06-01)"
    assert record_description(records["343990"]) is None


def test_fetch_through_eutils(fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEutils(fixtures)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    got = fetch_ncbi_summaries(ASKED, pause=0, fetched=DAY, email="me@example.org")
    assert sorted(got.descriptions) == ["ERBB2", "TP53"]
    assert got.no_summary == ["KIAA1211L"]
    assert got.not_found == ["NOSUCHGENE1"]
    assert got.not_fetched == [] and got.error is None
    assert got.descriptions["TP53"].name == "tumor protein p53"
    (search, q1), (summary, q2) = fake.requests
    assert (search, summary) == ("esearch.fcgi", "esummary.fcgi")
    assert q1["db"] == ["gene"] and q1["retmode"] == ["json"]
    assert q1["term"] == [esearch_term(ASKED)]
    assert '"ERBB2"[sym]' in q1["term"][0] and q1["term"][0].endswith("AND 9606[taxid]")
    assert q1["tool"] == ["napari-histoexpress"] and q1["email"] == ["me@example.org"]
    assert q2["id"] == ["2064,7157,100000001,13866,343990"]
    assert got.reason("KIAA1211L") == "NCBI Gene has no summary"
    assert got.reason("NOSUCHGENE1") == "not found in NCBI Gene"


def test_batches_make_several_searches(fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEutils(fixtures)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    got = fetch_ncbi_summaries(ASKED, pause=0, search_batch=2, summary_batch=3)
    assert [e for e, _ in fake.requests] == ["esearch.fcgi", *["esummary.fcgi"] * 2] * 2
    assert sorted(got.descriptions) == ["ERBB2", "TP53"]


def test_offline_warns_once_and_carries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(request: Any, timeout: float | None = None) -> Any:
        calls.append(request)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.warns(NcbiUnavailableWarning) as record:
        got = fetch_ncbi_summaries(ASKED, pause=0, search_batch=1)
    assert len(record) == 1
    message = str(record[0].message)
    assert "4 gene summaries not fetched" in message and "ERBB2" in message
    assert "NOSUCHGENE1" in message
    assert got.descriptions == {} and got.not_fetched == ASKED
    assert len(calls) == 1  # stops at the first failure, no wait per gene
    assert got.reason("TP53") is not None and "not fetched" in str(got.reason("TP53"))


def test_a_reply_that_is_not_json_is_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"<html>503 Busy</html>")
    )
    with pytest.warns(NcbiUnavailableWarning, match="JSONDecodeError"):
        got = fetch_ncbi_summaries(["ERBB2"], pause=0)
    assert got.not_fetched == ["ERBB2"]


def test_http_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def busy(request: Any, timeout: float | None = None) -> Any:
        calls.append(1)
        raise urllib.error.HTTPError(str(request.full_url), 429, "Too Many Requests", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", busy)
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.warns(NcbiUnavailableWarning, match="429"):
        got = fetch_ncbi_summaries(["ERBB2"], retries=2)
    assert len(calls) == 3 and got.not_fetched == ["ERBB2"]


def test_fill_asks_only_for_the_gaps(small_table: DescriptionTable) -> None:
    asked: list[list[str]] = []

    def fetch(symbols: list[str], **_: Any) -> Any:
        from napari_histoexpress.models.gene_knowledge.descriptions import GeneDescription
        from napari_histoexpress.models.gene_knowledge.ncbi import NcbiFetchResult

        asked.append(list(symbols))
        return NcbiFetchResult(
            descriptions={"TP53": GeneDescription("TP53", "p53", "TP53 text.", "NCBI Gene 7157")},
            not_found=["NOSUCH"],
        )

    table, got = fill_missing_descriptions(small_table, ["HER2", "TP53", "NOSUCH"], fetch=fetch)
    assert asked == [["TP53", "NOSUCH"]]
    entry = table.get("TP53")
    assert entry is not None and entry.source == "NCBI Gene 7157"
    assert table.get("HER2") == small_table.get("ERBB2")
    assert got.not_found == ["NOSUCH"]
    same, nothing = fill_missing_descriptions(small_table, ["ERBB2"], fetch=fetch)
    assert same is small_table and len(asked) == 1 and nothing.descriptions == {}
