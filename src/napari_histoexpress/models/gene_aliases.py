"""Gene-symbol search with the names pathologists type (HER2, PD-L1, Ki-67, ER, CK19 ...).

A model predicts genes under their current HGNC-approved symbols (``ERBB2``, ``CD274``,
``MKI67``), while users think in the names of immunohistochemistry markers. :data:`ALIASES`
maps approved symbols to those names.

Source and scope of the table: the *previous symbols* and *alias symbols* of the HGNC
symbol reports (https://www.genenames.org, "Previous symbols" / "Alias symbols" fields)
for common pathology markers of breast and other carcinomas, immune and stromal cells,
plus the usual IHC spellings of those aliases (``Ki-67``, ``HER2/neu``, ``alpha-SMA``,
``CK19`` for keratin 19). It is deliberately small and curated, not a full HGNC dump: a
full alias table maps many short aliases to several genes (e.g. ``ER``, ``PR``), and only
the marker meaning a pathologist intends is kept here. Matching ignores case and any
character that is not a letter or digit (``"pd-l1"``, ``"PDL1"`` and ``"PD L1"`` are the
same query).

Ranking (:func:`search_genes`, :func:`filter_genes`): genes whose symbol *starts with*
the query first (an exact symbol first of all), then symbols *containing* it, then genes
found only through an alias (an exact alias before an alias that starts with the query).
Within each group the input order (the model's order) is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["ALIASES", "GeneMatch", "aliases_of", "filter_genes", "normalise", "search_genes"]

#: Approved HGNC symbol -> previous/alias symbols and common IHC spellings (see module doc).
ALIASES: dict[str, tuple[str, ...]] = {
    # breast-cancer receptors and proliferation
    "ERBB2": ("HER2", "HER-2", "HER2/neu", "NEU", "NGL", "CD340"),
    "ESR1": ("ER", "ER-alpha", "ERa", "ESR", "ESRA", "NR3A1"),
    "ESR2": ("ER-beta", "ERb", "ESRB", "NR3A2"),
    "PGR": ("PR", "NR3C3"),
    "AR": ("NR3C4", "AIS", "DHTR"),
    "MKI67": ("Ki-67", "KI67", "MIB-1", "KIA", "PPP1R105"),
    "EGFR": ("HER1", "ERBB1", "ERBB"),
    "ERBB3": ("HER3",),
    "ERBB4": ("HER4",),
    "CCND1": ("cyclin D1", "BCL1", "PRAD1"),
    "TP53": ("p53",),
    "CDKN2A": ("p16", "p16INK4a", "INK4A", "MTS1"),
    "TFF1": ("pS2", "BCEI"),
    "SCGB2A2": ("mammaglobin", "MGB1", "UGB2"),
    "MUC1": ("EMA", "CD227", "PEM"),
    "CEACAM5": ("CEA", "CD66e"),
    "GATA3": ("HDR",),
    # immune checkpoints
    "CD274": ("PD-L1", "PDL1", "B7-H1", "B7H1", "PDCD1L1", "PDCD1LG1"),
    "PDCD1LG2": ("PD-L2", "PDL2", "B7-DC", "CD273"),
    "PDCD1": ("PD-1", "PD1", "CD279"),
    "CTLA4": ("CD152",),
    "LAG3": ("CD223",),
    "HAVCR2": ("TIM-3", "TIM3", "CD366"),
    # epithelium (keratins use the CK / K names)
    "KRT5": ("CK5", "K5"),
    "KRT7": ("CK7", "K7"),
    "KRT8": ("CK8", "K8", "CK-8"),
    "KRT14": ("CK14", "K14"),
    "KRT17": ("CK17", "K17"),
    "KRT18": ("CK18", "K18", "CYK18"),
    "KRT19": ("CK19", "CK-19", "K19"),
    "KRT20": ("CK20", "K20"),
    "CDH1": ("E-cadherin", "ECAD", "CD324", "UVO"),
    "EPCAM": ("TACSTD1", "CD326", "ESA", "EGP40", "KSA"),
    # immune cells
    "PTPRC": ("CD45", "LCA", "L-CA", "T200"),
    "CD3E": ("CD3", "T3E"),
    "CD8A": ("CD8", "Leu2"),
    "MS4A1": ("CD20", "B1", "Bp35", "LEU-16"),
    "FOXP3": ("IPEX", "JM2"),
    "ITGAX": ("CD11c",),
    "NCAM1": ("CD56",),
    "KIT": ("CD117", "c-KIT"),
    "TPSAB1": ("tryptase", "TPS1"),
    # stroma and vessels
    "ACTA2": ("SMA", "alpha-SMA", "ACTSA", "AAT6"),
    "PECAM1": ("CD31",),
    "VWF": ("F8VWF", "von Willebrand factor"),
    "PDGFRB": ("CD140b", "PDGFR1"),
    "S100A4": ("FSP1", "CAPL", "P9KA"),
    "SPP1": ("OPN", "osteopontin", "BNSP"),
    "FAP": ("FAPA", "seprase"),
    "MYC": ("c-Myc", "bHLHe39"),
}

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Case-folded ``text`` without anything but letters and digits (``"PD-L1"`` -> ``"pdl1"``)."""
    return _NON_ALNUM.sub("", str(text).casefold())


def _alias_index(table: dict[str, tuple[str, ...]]) -> dict[str, list[tuple[str, str]]]:
    """Approved symbol (normalised) -> its ``(normalised alias, alias)`` pairs."""
    return {normalise(g): [(normalise(a), a) for a in aliases] for g, aliases in table.items()}


_INDEX = _alias_index(ALIASES)


def aliases_of(gene: str) -> tuple[str, ...]:
    """The curated aliases of an approved symbol (empty when none are known)."""
    return tuple(a for _, a in _INDEX.get(normalise(gene), ()))


@dataclass(frozen=True)
class GeneMatch:
    """One search hit: the ``gene`` (a symbol of the searched list), how it matched, and the
    alias that matched (``kind == "alias"`` only)."""

    gene: str
    kind: Literal["exact", "prefix", "substring", "alias"]
    alias: str | None = None


def search_genes(query: str, genes: Iterable[str]) -> list[GeneMatch]:
    """Rank ``genes`` matching ``query`` (see the module docstring for the order).

    An empty query (or one with no letter or digit) returns every gene, in order, as
    ``"prefix"`` hits.
    """
    genes = [str(g) for g in genes]
    q_raw = str(query).strip().casefold()
    q = normalise(query)
    if not q:
        return [GeneMatch(g, "prefix") for g in genes]
    exact: list[GeneMatch] = []
    prefix: list[GeneMatch] = []
    substring: list[GeneMatch] = []
    alias_exact: list[GeneMatch] = []
    alias_prefix: list[GeneMatch] = []
    for g in genes:
        raw, norm = g.casefold(), normalise(g)
        if raw == q_raw or norm == q:
            exact.append(GeneMatch(g, "exact"))
        elif raw.startswith(q_raw) or norm.startswith(q):
            prefix.append(GeneMatch(g, "prefix"))
        elif q_raw in raw or q in norm:
            substring.append(GeneMatch(g, "substring"))
        else:
            hits = [(na, a) for na, a in _INDEX.get(norm, ()) if na.startswith(q)]
            if not hits:
                continue
            same = [a for na, a in hits if na == q]
            if same:
                alias_exact.append(GeneMatch(g, "alias", same[0]))
            else:
                alias_prefix.append(GeneMatch(g, "alias", hits[0][1]))
    return exact + prefix + substring + alias_exact + alias_prefix


def filter_genes(query: str, genes: Sequence[str]) -> list[str]:
    """The symbols of :func:`search_genes` hits, best first (``"her2"`` -> ``["ERBB2"]``)."""
    return [m.gene for m in search_genes(query, genes)]
