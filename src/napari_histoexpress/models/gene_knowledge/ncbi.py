"""NCBI Gene summaries for genes the description tables lack (online only).

Uses the NCBI E-utilities (https://www.ncbi.nlm.nih.gov/books/NBK25499/) with the standard
library's :mod:`urllib`, JSON replies (``retmode=json``):

1. **esearch** ``db=gene``: one request per batch of symbols, the term
   ``("ERBB2"[sym] OR "TP53"[sym]) AND 9606[taxid]``; the reply's
   ``esearchresult.idlist`` holds the Gene ids;
2. **esummary** ``db=gene`` on those ids: ``result.uids`` and one document per id with
   ``name`` (the official symbol), ``description`` (full name), ``otheraliases``,
   ``summary`` (the RefSeq summary text), ``status``/``currentid`` and ``organism.taxid``.

Each requested symbol is matched to a live record of the organism: by official symbol
(ignoring case and punctuation) first, else by one of ``otheraliases`` when exactly one
record has it. The summary becomes the description, without its trailing
``[provided by RefSeq, Jul 2008].``, which goes into the ``source`` with the Gene id and
the date fetched (``NCBI Gene 2064 summary (RefSeq, Jul 2008; fetched 2025-06-01)``). A
record without a summary gives no description (``no_summary``): a bare gene name is not a
description.

Choices (all parameters of :func:`fetch_ncbi_summaries`): human (taxid 9606); 50 symbols per
esearch and 200 ids per esummary; NCBI's rate limit (3 requests/s, 10 with an API key) kept
by a pause between requests; a 20 s timeout; ``tool``/``email``/``api_key`` sent as NCBI
asks. **Offline** (no network, DNS failure, timeout, HTTP error after ``retries``): the
fetcher stops at the first failure, warns once (:class:`NcbiUnavailableWarning`, naming the
genes not fetched) and returns what it has — it never raises for the network. Nothing here
runs unless called: the rest of the package works offline.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..gene_aliases import normalise
from .descriptions import DescriptionTable, GeneDescription

__all__ = [
    "EUTILS_URL",
    "NcbiFetchResult",
    "NcbiGeneRecord",
    "NcbiUnavailableWarning",
    "esearch_term",
    "fetch_ncbi_summaries",
    "fill_missing_descriptions",
    "match_records",
    "parse_esearch",
    "parse_esummary",
    "record_description",
]

EUTILS_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
HUMAN_TAXID = 9606
_PROVIDED = re.compile(r"\s*\[provided by ([^\]]*)\]\.?\s*$", re.IGNORECASE)
_LIVE_STATUS = {"", "0", "live"}


class NcbiUnavailableWarning(UserWarning):
    """NCBI could not be reached (offline, timeout, HTTP error); ``not_fetched`` lists the
    genes whose summaries were not fetched."""

    def __init__(self, reason: str, not_fetched: Sequence[str]) -> None:
        self.reason = reason
        self.not_fetched = list(not_fetched)
        shown = ", ".join(self.not_fetched[:12])
        more = f" and {len(self.not_fetched) - 12} more" if len(self.not_fetched) > 12 else ""
        super().__init__(
            f"NCBI E-utilities unreachable ({reason}): {len(self.not_fetched)} gene "
            f"summaries not fetched ({shown}{more}); carrying on without them"
        )


@dataclass(frozen=True)
class NcbiGeneRecord:
    """The fields of one esummary document that are used."""

    uid: str
    symbol: str
    name: str
    summary: str
    aliases: tuple[str, ...]
    status: str = ""
    taxid: int | None = None

    @property
    def live(self) -> bool:
        return self.status.strip().lower() in _LIVE_STATUS


@dataclass
class NcbiFetchResult:
    """What a fetch gave: ``descriptions`` (symbol as requested -> description), the genes
    NCBI has no record of (``not_found``), records without a summary (``no_summary``) and
    genes not fetched because NCBI was unreachable (``not_fetched``, with ``error``)."""

    descriptions: dict[str, GeneDescription] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)
    no_summary: list[str] = field(default_factory=list)
    not_fetched: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def table(self) -> DescriptionTable:
        return DescriptionTable(self.descriptions.values(), origin="NCBI Gene")

    def reason(self, gene: str) -> str | None:
        """Why ``gene`` got no description from NCBI (``None`` when it did)."""
        if gene in self.not_fetched:
            return f"not fetched from NCBI ({self.error})"
        if gene in self.no_summary:
            return "NCBI Gene has no summary"
        if gene in self.not_found:
            return "not found in NCBI Gene"
        return None


# ---------------------------------------------------------------------------- parsing
def esearch_term(symbols: Sequence[str], taxid: int = HUMAN_TAXID) -> str:
    """``("A"[sym] OR "B"[sym]) AND 9606[taxid]`` (quotes in a symbol dropped)."""
    terms = " OR ".join(f'"{s.replace(chr(34), "")}"[sym]' for s in symbols)
    return f"({terms}) AND {int(taxid)}[taxid]"


def parse_esearch(payload: Mapping[str, Any]) -> list[str]:
    """The Gene ids of an esearch JSON reply (``esearchresult.idlist``); an
    ``ERROR`` in the reply raises ``ValueError``."""
    result = payload.get("esearchresult")
    if not isinstance(result, Mapping):
        raise ValueError(f"not an esearch reply (keys {sorted(payload)})")
    if result.get("ERROR"):
        raise ValueError(f"esearch error: {result['ERROR']}")
    return [str(i) for i in result.get("idlist") or []]


def parse_esummary(payload: Mapping[str, Any]) -> dict[str, NcbiGeneRecord]:
    """Gene id -> record of an esummary JSON reply (``result.uids`` + one document each;
    documents with an ``error`` are left out)."""
    if payload.get("error"):
        raise ValueError(f"esummary error: {payload['error']}")
    result = payload.get("result")
    if not isinstance(result, Mapping):
        raise ValueError(f"not an esummary reply (keys {sorted(payload)})")
    records: dict[str, NcbiGeneRecord] = {}
    for uid in result.get("uids") or []:
        doc = result.get(str(uid))
        if not isinstance(doc, Mapping) or doc.get("error"):
            continue
        organism = doc.get("organism") or {}
        taxid = organism.get("taxid") if isinstance(organism, Mapping) else None
        aliases = tuple(
            a.strip() for a in str(doc.get("otheraliases") or "").split(",") if a.strip()
        )
        records[str(uid)] = NcbiGeneRecord(
            uid=str(doc.get("uid") or uid),
            symbol=str(doc.get("name") or doc.get("nomenclaturesymbol") or ""),
            name=str(doc.get("description") or doc.get("nomenclaturename") or ""),
            summary=str(doc.get("summary") or "").strip(),
            aliases=aliases,
            status=str(doc.get("status") or ""),
            taxid=int(taxid) if taxid not in (None, "") else None,
        )
    return records


def match_records(
    symbols: Iterable[str], records: Iterable[NcbiGeneRecord], *, taxid: int | None = HUMAN_TAXID
) -> dict[str, NcbiGeneRecord]:
    """Requested symbol -> its live record of ``taxid``: by official symbol (ignoring case
    and punctuation), else by a unique ``otheraliases`` hit."""
    live = [r for r in records if r.live and (taxid is None or r.taxid in (None, taxid))]
    by_symbol = {normalise(r.symbol): r for r in live}
    by_alias: dict[str, dict[str, NcbiGeneRecord]] = {}
    for r in live:
        for a in r.aliases:
            by_alias.setdefault(normalise(a), {})[r.uid] = r
    found: dict[str, NcbiGeneRecord] = {}
    for s in symbols:
        key = normalise(s)
        if key in by_symbol:
            found[s] = by_symbol[key]
        elif len(hits := by_alias.get(key, {})) == 1:
            (found[s],) = hits.values()
    return found


def record_description(
    record: NcbiGeneRecord, symbol: str | None = None, *, fetched: _dt.date | None = None
) -> GeneDescription | None:
    """The description made of ``record``'s summary (``None`` without a summary), under
    ``symbol`` (default: the record's)."""
    text = record.summary
    provided = _PROVIDED.search(text)
    where = ""
    if provided:
        text = text[: provided.start()].rstrip()
        where = provided.group(1).strip()
    if not text:
        return None
    if not text.endswith("."):
        text += "."
    date = (fetched or _dt.date.today()).isoformat()
    detail = f"{where}; fetched {date}" if where else f"fetched {date}"
    return GeneDescription(
        symbol=symbol or record.symbol,
        name=record.name,
        description=text,
        source=f"NCBI Gene {record.uid} summary ({detail})",
    )


# ---------------------------------------------------------------------------- fetching
def _chunks(items: Sequence[str], n: int) -> list[list[str]]:
    return [list(items[i : i + n]) for i in range(0, len(items), n)]


def _get_json(
    endpoint: str, params: Mapping[str, Any], *, timeout: float, retries: int, pause: float
) -> Any:
    """GET ``EUTILS_URL + endpoint`` and parse the JSON (retrying HTTP 429/5xx)."""
    url = f"{EUTILS_URL}{endpoint}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
            return json.loads(body.decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if attempt < retries and (exc.code == 429 or exc.code >= 500):
                time.sleep(pause * (attempt + 2))
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_ncbi_summaries(
    symbols: Iterable[str],
    *,
    taxid: int = HUMAN_TAXID,
    search_batch: int = 50,
    summary_batch: int = 200,
    timeout: float = 20.0,
    retries: int = 2,
    pause: float | None = None,
    api_key: str | None = None,
    email: str | None = None,
    tool: str = "napari-histoexpress",
    fetched: _dt.date | None = None,
    warn: bool = True,
) -> NcbiFetchResult:
    """Fetch the NCBI Gene summaries of ``symbols`` (see the module docstring).

    Args:
        symbols: gene symbols as the caller names them (the keys of the result).
        taxid: NCBI taxonomy id of the organism (9606 = human; 10090 = mouse).
        search_batch: symbols per esearch request; summary_batch: ids per esummary request.
        timeout: seconds per request; retries: extra tries on HTTP 429/5xx.
        pause: seconds between requests (default 0.34, or 0.11 with an ``api_key``: NCBI's
            3 and 10 requests per second).
        api_key, email, tool: sent to NCBI as its usage policy asks (``api_key`` and
            ``email`` default to ``$NCBI_API_KEY`` and ``$NCBI_EMAIL``).
        fetched: the date recorded in the sources (default today).
        warn: warn once (:class:`NcbiUnavailableWarning`) when NCBI is unreachable.
    """
    wanted = list(dict.fromkeys(str(s).strip() for s in symbols if str(s).strip()))
    result = NcbiFetchResult()
    if not wanted:
        return result
    api_key = api_key if api_key is not None else os.environ.get("NCBI_API_KEY") or None
    email = email if email is not None else os.environ.get("NCBI_EMAIL") or None
    wait = pause if pause is not None else (0.11 if api_key else 0.34)
    common: dict[str, Any] = {"db": "gene", "retmode": "json", "tool": tool}
    if email:
        common["email"] = email
    if api_key:
        common["api_key"] = api_key
    first = True

    def call(endpoint: str, params: Mapping[str, Any]) -> Any:
        nonlocal first
        if not first and wait > 0:
            time.sleep(wait)
        first = False
        return _get_json(
            endpoint, {**common, **params}, timeout=timeout, retries=retries, pause=wait
        )

    pending = list(wanted)
    try:
        for batch in _chunks(wanted, max(1, search_batch)):
            ids = parse_esearch(
                call(
                    "esearch.fcgi",
                    {"term": esearch_term(batch, taxid), "retmax": max(20, 4 * len(batch))},
                )
            )
            records: dict[str, NcbiGeneRecord] = {}
            for id_batch in _chunks(ids, max(1, summary_batch)):
                records.update(parse_esummary(call("esummary.fcgi", {"id": ",".join(id_batch)})))
            matched = match_records(batch, records.values(), taxid=taxid)
            for s in batch:
                record = matched.get(s)
                if record is None:
                    result.not_found.append(s)
                    continue
                description = record_description(record, s, fetched=fetched)
                if description is None:
                    result.no_summary.append(s)
                else:
                    result.descriptions[s] = description
            pending = pending[len(batch) :]
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        # URLError covers HTTPError and DNS failures; ValueError: a reply that is not the
        # documented JSON (e.g. an HTML error page)
        if isinstance(exc, urllib.error.HTTPError):
            result.error = f"HTTP {exc.code} {exc.reason}"
        else:
            result.error = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        result.not_fetched = pending
        if warn:
            warnings.warn(NcbiUnavailableWarning(result.error, pending), stacklevel=2)
    return result


def fill_missing_descriptions(
    table: DescriptionTable,
    genes: Iterable[str],
    *,
    fetch: Callable[..., NcbiFetchResult] = fetch_ncbi_summaries,
    **fetch_options: Any,
) -> tuple[DescriptionTable, NcbiFetchResult]:
    """``table`` with the ``genes`` it lacks filled from NCBI Gene (the table's own rows
    are kept), and the fetch result (which genes NCBI could not give, and why)."""
    gaps = table.missing(genes)
    if not gaps:
        return table, NcbiFetchResult()
    got = fetch(gaps, **fetch_options)
    if not got.descriptions:
        return table, got
    return table.updated(got.table), got
