"""Finding a gene symbol in a table or embedding file the way users type it.

One rule for every lookup of :mod:`~napari_histoexpress.models.gene_knowledge`
(descriptions, embedding files), built on :mod:`~napari_histoexpress.models.gene_aliases`:

1. the symbol exactly as written (``"ERBB2"``);
2. the same symbol ignoring case and anything but letters and digits
   (:func:`~napari_histoexpress.models.gene_aliases.normalise`: ``"erbb2"``, ``"HLA-A"`` ==
   ``"hla a"``), when exactly one entry has that normalised form;
3. an alias of the curated table :data:`~napari_histoexpress.models.gene_aliases.ALIASES`
   (``"HER2"`` -> ``ERBB2``), in both directions: a query that is an alias finds the
   approved symbol's entry, and an approved-symbol query finds an entry filed under one of
   its aliases (e.g. a file that still uses an older symbol).

A normalised form or alias shared by several entries is ambiguous and matches nothing
(never a silent guess); :meth:`SymbolIndex.match` then says so in ``how``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..gene_aliases import ALIASES, normalise

__all__ = ["SymbolIndex", "SymbolMatch"]

MatchKind = Literal["exact", "case", "alias", "ambiguous", "none"]


@dataclass(frozen=True)
class SymbolMatch:
    """Where a query was found: ``index`` into the indexed symbols (``None`` when not
    found), the ``symbol`` found, and ``how`` (``"exact"``, ``"case"`` (ignoring case and
    punctuation), ``"alias"``, ``"ambiguous"`` or ``"none"``)."""

    query: str
    index: int | None
    symbol: str | None
    how: MatchKind

    @property
    def found(self) -> bool:
        return self.index is not None


class SymbolIndex:
    """Index of ``symbols`` (a table's or file's gene symbols, in its order) for lookups
    by the rules of the module docstring.

    Args:
        symbols: the entries' symbols; exact duplicates are the caller's business (the
            first one wins here).
        aliases: approved symbol -> aliases (default: the curated
            :data:`~napari_histoexpress.models.gene_aliases.ALIASES`; ``{}`` turns alias
            matching off).
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        aliases: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.symbols: list[str] = [str(s) for s in symbols]
        self._exact: dict[str, int] = {}
        self._norm: dict[str, list[int]] = {}
        for i, s in enumerate(self.symbols):
            self._exact.setdefault(s, i)
            rows = self._norm.setdefault(normalise(s), [])
            if i not in rows:
                rows.append(i)
        table = ALIASES if aliases is None else aliases
        # normalised alias -> normalised approved symbols, and the reverse
        self._alias_to: dict[str, set[str]] = {}
        self._approved_to: dict[str, set[str]] = {}
        for approved, names in table.items():
            na = normalise(approved)
            for name in names:
                nn = normalise(name)
                if nn and nn != na:
                    self._alias_to.setdefault(nn, set()).add(na)
                    self._approved_to.setdefault(na, set()).add(nn)

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and self.find(query) is not None

    def find(self, query: str) -> int | None:
        """The row of ``query`` (see the module docstring), or ``None``."""
        return self.match(query).index

    def match(self, query: str) -> SymbolMatch:
        """Find ``query`` and say how it matched."""
        query = str(query).strip()
        if query in self._exact:
            i = self._exact[query]
            return SymbolMatch(query, i, self.symbols[i], "exact")
        nq = normalise(query)
        if not nq:
            return SymbolMatch(query, None, None, "none")
        rows = self._norm.get(nq, [])
        if len(rows) == 1:
            return SymbolMatch(query, rows[0], self.symbols[rows[0]], "case")
        if len(rows) > 1:
            return SymbolMatch(query, None, None, "ambiguous")
        # an alias typed -> the approved symbol's entry; an approved symbol typed -> an
        # entry filed under one of its aliases
        candidates: set[int] = set()
        for other in self._alias_to.get(nq, set()) | self._approved_to.get(nq, set()):
            candidates.update(self._norm.get(other, []))
        if len(candidates) == 1:
            (i,) = candidates
            return SymbolMatch(query, i, self.symbols[i], "alias")
        if candidates:
            return SymbolMatch(query, None, None, "ambiguous")
        return SymbolMatch(query, None, None, "none")
