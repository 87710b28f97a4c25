"""Gene descriptions: what each gene is, as text a language model can embed.

The table
---------
A description table has one row per gene with the columns ``symbol``, ``name`` (the full
gene name), ``description`` (a few sentences: what the gene encodes, what it does, where
it is expressed) and ``source`` (where the text comes from, e.g. ``project`` or
``NCBI Gene 2064 (provided by RefSeq, Jul 2008)``).

* **Bundled.** The package ships one such table, :data:`BUNDLED_DESCRIPTIONS`
  (``models/gene_knowledge/descriptions.tsv``, ~1,900 genes of the ST panels the models are
  trained on). Its version is the ``# version: ...`` line at its top when it has one, else
  ``sha256:`` and the first 12 hex digits of the file's checksum (so two tables with the same
  version have the same texts). When the file is missing (not built yet, or a broken
  install), :func:`bundled_descriptions` warns once naming the file and gives an empty
  table (``missing="warn"``, the default), gives it silently (``"empty"``) or raises
  :class:`~napari_histoexpress.errors.InputFileError` naming it (``"error"``).
* **User tables** add genes or override bundled rows: a TSV with the same header (``name``
  and ``source`` may be left out: the source then says which file the row came from), or
  JSON — ``{"ERBB2": "text", ...}``, ``{"ERBB2": {"name": ..., "description": ...}}``, a
  list of records ``[{"symbol": ..., "description": ...}]``, or any of these under a
  ``"genes"`` key beside an optional ``"version"``. Later tables win over earlier ones
  (:func:`load_descriptions`: bundled, then the files of ``$HISTOEXPRESS_GENE_DESCRIPTIONS``
  (``os.pathsep``-separated), then the files given).

TSV rules (chosen so that any description text survives unchanged): tab-separated, UTF-8,
no quoting (a ``"`` is a character like any other; descriptions contain no tab or newline);
leading lines starting with ``#`` are comments, ``# key: value`` lines there (``key`` one
word) are metadata (``version``); blank lines are ignored; a row with another number of
fields than the header is an error naming the line. Rows whose description is empty are skipped (one
warning per file counts them). A symbol listed twice in one file is an error naming both
lines (``duplicates="error"``; ``"first"``/``"last"`` keep one).

Lookup
------
:meth:`DescriptionTable.get` finds a gene by the rules of
:class:`~napari_histoexpress.models.gene_knowledge.symbol_index.SymbolIndex`: exact symbol,
then ignoring case and punctuation, then through the curated aliases (``HER2`` ->
``ERBB2``). An override row is matched to the row it replaces by the same rules; it keeps
the replaced row's symbol (the approved one) and brings its own name, text and source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ...errors import InputFileError, InputFileWarning
from .symbol_index import SymbolIndex, SymbolMatch

__all__ = [
    "BUNDLED_DESCRIPTIONS",
    "COLUMNS",
    "DESCRIPTIONS_ENV",
    "DescriptionTable",
    "GeneDescription",
    "bundled_descriptions",
    "load_descriptions",
    "read_description_file",
]

#: The bundled table (shipped in the wheel beside this module).
BUNDLED_DESCRIPTIONS: Path = Path(__file__).with_name("descriptions.tsv")
#: The columns of a description table, in the order they are written.
COLUMNS: tuple[str, str, str, str] = ("symbol", "name", "description", "source")
#: Environment variable with user tables (``os.pathsep``-separated) read after the bundled one.
DESCRIPTIONS_ENV = "HISTOEXPRESS_GENE_DESCRIPTIONS"

Duplicates = Literal["error", "first", "last"]
MissingBundled = Literal["warn", "error", "empty"]


@dataclass(frozen=True)
class GeneDescription:
    """One gene's description: ``symbol``, full ``name`` (may be empty), ``description``
    (the text that is embedded) and ``source`` (where the text comes from)."""

    symbol: str
    name: str
    description: str
    source: str

    def as_row(self) -> dict[str, str]:
        return {c: getattr(self, c) for c in COLUMNS}


class DescriptionTable:
    """Gene descriptions with symbol/alias lookup (see the module docstring).

    Args:
        entries: the rows; a later row with the same symbol (exactly) replaces an earlier one.
        origin: which file(s) the rows came from, for messages (``"descriptions.tsv +
            mine.tsv"``).
        version: the table's version (see the module docstring), or ``None``.
    """

    def __init__(
        self,
        entries: Iterable[GeneDescription] = (),
        *,
        origin: str = "",
        version: str | None = None,
    ) -> None:
        rows: dict[str, GeneDescription] = {}
        for entry in entries:
            rows[entry.symbol] = entry
        self._rows: list[GeneDescription] = list(rows.values())
        self.origin = origin
        self.version = version
        self._index = SymbolIndex(e.symbol for e in self._rows)

    # -- lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[GeneDescription]:
        return iter(self._rows)

    def __contains__(self, gene: object) -> bool:
        return isinstance(gene, str) and self.get(gene) is not None

    def __repr__(self) -> str:
        return f"DescriptionTable({len(self)} genes from {self.origin or 'no file'})"

    @property
    def symbols(self) -> list[str]:
        return [e.symbol for e in self._rows]

    def match(self, gene: str) -> SymbolMatch:
        """Where ``gene`` is in the table, and how it matched."""
        return self._index.match(gene)

    def get(self, gene: str) -> GeneDescription | None:
        """The description of ``gene`` (by symbol, case-insensitively or by alias), or ``None``."""
        i = self._index.find(gene)
        return None if i is None else self._rows[i]

    def missing(self, genes: Iterable[str]) -> list[str]:
        """The ``genes`` the table has no description for, in the given order."""
        return [g for g in genes if self.get(g) is None]

    # -- combining ----------------------------------------------------------------------
    def updated(self, other: DescriptionTable | Iterable[GeneDescription]) -> DescriptionTable:
        """This table with ``other``'s rows added; a row matching one of ours (exact, case
        or alias) replaces it and keeps our symbol."""
        rows = list(self._rows)
        extra: list[GeneDescription] = []
        for entry in other:
            i = self._index.find(entry.symbol)
            if i is None:
                extra.append(entry)
            else:
                rows[i] = replace(entry, symbol=rows[i].symbol)
        others = other if isinstance(other, DescriptionTable) else None
        origin = " + ".join(o for o in (self.origin, others.origin if others else "") if o)
        version = self.version
        if others is not None and others.version:
            version = f"{version} + {others.version}" if version else others.version
        return DescriptionTable([*rows, *extra], origin=origin, version=version)

    # -- output -------------------------------------------------------------------------
    def to_tsv(self, genes: Sequence[str] | None = None) -> str:
        """The table (or the rows of ``genes`` it has) as TSV text, header first."""
        rows = self._rows if genes is None else [e for g in genes if (e := self.get(g))]
        lines = []
        if self.version:
            lines.append(f"# version: {self.version}")
        lines.append("\t".join(COLUMNS))
        for e in rows:
            lines.append("\t".join(_clean_field(getattr(e, c)) for c in COLUMNS))
        return "\n".join(lines) + "\n"

    def write_tsv(self, path: str | os.PathLike[str], genes: Sequence[str] | None = None) -> Path:
        """Write :meth:`to_tsv` atomically to ``path`` (read by :func:`read_description_file`)."""
        from ...io.export import write_text_atomic

        return write_text_atomic(self.to_tsv(genes), Path(path))


def _clean_field(text: str) -> str:
    """A field without the characters the TSV format cannot hold (tab, newline -> space)."""
    return " ".join(str(text).replace("\t", " ").splitlines())


# ---------------------------------------------------------------------------- reading
def read_description_file(
    path: str | os.PathLike[str],
    *,
    duplicates: Duplicates = "error",
    default_source: str | None = None,
) -> DescriptionTable:
    """Read a description table: JSON for ``.json``, TSV otherwise (module docstring).

    Args:
        path: the file.
        duplicates: a symbol listed twice: ``"error"`` (names both places), ``"first"`` or
            ``"last"`` (keep that one).
        default_source: the ``source`` of rows that give none (default: ``"user file
            NAME"``).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a description table" if path.is_dir() else "does not exist"
        raise InputFileError(path, f"gene-description table {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    source = default_source or f"user file {path.name}"
    if path.suffix.lower() == ".json":
        rows, meta = _parse_json(path, text, source)
    else:
        rows, meta = _parse_tsv(path, text, source)
    kept: dict[str, tuple[str, GeneDescription]] = {}
    empty = 0
    for where, entry in rows:
        if not entry.symbol:
            raise InputFileError(path, f"{where}: empty symbol")
        if not entry.description.strip():
            empty += 1
            continue
        if entry.symbol in kept:
            if duplicates == "error":
                first = kept[entry.symbol][0]
                raise InputFileError(path, f"{entry.symbol} is described twice ({first}, {where})")
            if duplicates == "first":
                continue
        kept[entry.symbol] = (where, entry)
    if empty:
        warnings.warn(
            InputFileWarning(path, f"{empty} row(s) with an empty description were skipped"),
            stacklevel=2,
        )
    version = meta.get("version") or "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return DescriptionTable(
        (e for _, e in kept.values()), origin=str(path), version=str(version).strip()
    )


def _parse_tsv(
    path: Path, text: str, source: str
) -> tuple[list[tuple[str, GeneDescription]], dict[str, str]]:
    meta: dict[str, str] = {}
    lines = text.splitlines()
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith("#")):
        key, colon, value = lines[n].lstrip().lstrip("#").strip().partition(":")
        if colon and re.fullmatch(r"[A-Za-z][\w-]*", key.strip()):
            meta.setdefault(key.strip().lower(), value.strip())
        n += 1
    if n == len(lines):
        raise InputFileError(path, "gene-description table is empty (no header line)")
    header = [h.strip().lower() for h in lines[n].split("\t")]
    absent = [c for c in ("symbol", "description") if c not in header]
    if absent:
        raise InputFileError(
            path,
            f"line {n + 1}: the header needs the columns {', '.join(COLUMNS)} separated by "
            f"tabs (missing: {', '.join(absent)}; found: {lines[n][:80]!r})",
        )
    col = {c: header.index(c) for c in COLUMNS if c in header}
    rows: list[tuple[str, GeneDescription]] = []
    for k in range(n + 1, len(lines)):
        line = lines[k]
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise InputFileError(
                path,
                f"line {k + 1}: {len(fields)} tab-separated fields, the header has "
                f"{len(header)} (a tab or line break inside a description?)",
            )

        def field(name: str, fields: list[str] = fields) -> str:
            return fields[col[name]].strip() if name in col else ""

        rows.append(
            (
                f"line {k + 1}",
                GeneDescription(
                    symbol=field("symbol"),
                    name=field("name"),
                    description=field("description"),
                    source=field("source") or source,
                ),
            )
        )
    return rows, meta


def _parse_json(
    path: Path, text: str, source: str
) -> tuple[list[tuple[str, GeneDescription]], dict[str, str]]:
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise InputFileError(path, f"not valid JSON ({exc})") from exc
    meta: dict[str, str] = {}
    if isinstance(data, dict) and "genes" in data and isinstance(data["genes"], dict | list):
        if data.get("version") is not None:
            meta["version"] = str(data["version"])
        data = data["genes"]
    records: list[tuple[str, Any, Any]] = []  # (where, symbol or None, value)
    if isinstance(data, dict):
        records = [(f"key {k!r}", k, v) for k, v in data.items()]
    elif isinstance(data, list):
        records = [(f"item {i}", None, v) for i, v in enumerate(data)]
    else:
        raise InputFileError(path, "JSON must map symbols to descriptions, or be a list of records")
    rows: list[tuple[str, GeneDescription]] = []
    for where, key, value in records:
        if isinstance(value, str) and key is not None:
            value = {"description": value}
        if not isinstance(value, dict):
            raise InputFileError(
                path, f"{where}: expected a description text or an object, got {value!r:.60}"
            )
        unknown = set(value) - set(COLUMNS)
        if unknown:
            raise InputFileError(
                path, f"{where}: unknown field(s) {sorted(unknown)} (known: {list(COLUMNS)})"
            )
        symbol = value.get("symbol", key)
        if symbol is None:
            raise InputFileError(path, f"{where}: no symbol")
        for name in COLUMNS:
            if name in value and not isinstance(value[name], str):
                raise InputFileError(path, f"{where}: {name} must be text")
        rows.append(
            (
                where,
                GeneDescription(
                    symbol=_clean_field(symbol).strip(),
                    name=_clean_field(value.get("name", "")).strip(),
                    description=_clean_field(value.get("description", "")).strip(),
                    source=_clean_field(value.get("source", "")).strip() or source,
                ),
            )
        )
    return rows, meta


# ---------------------------------------------------------------------------- bundled
def bundled_descriptions(*, missing: MissingBundled = "warn") -> DescriptionTable:
    """The bundled table :data:`BUNDLED_DESCRIPTIONS` (read once per file version).

    Args:
        missing: when the file is absent: ``"warn"`` (one warning naming it, empty table),
            ``"empty"`` (empty table, silently) or ``"error"``
            (:class:`~napari_histoexpress.errors.InputFileError` naming it).
    """
    path = BUNDLED_DESCRIPTIONS
    if not path.is_file():
        problem = (
            "the bundled gene-description table is missing (it ships with napari-histoexpress:"
            " reinstall the package, or give your own description table)"
        )
        if missing == "error":
            raise InputFileError(path, problem)
        if missing == "warn":
            warnings.warn(InputFileWarning(path, problem), stacklevel=2)
        return DescriptionTable(origin=f"{path} (missing)")
    stat = path.stat()
    return _read_bundled(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_bundled(path: str, size: int, mtime_ns: int) -> DescriptionTable:
    return read_description_file(path, default_source="bundled")


def load_descriptions(
    files: Sequence[str | os.PathLike[str]] = (),
    *,
    bundled: bool = True,
    missing_bundled: MissingBundled = "warn",
    use_env: bool = True,
    duplicates: Duplicates = "error",
) -> DescriptionTable:
    """The descriptions to use: the bundled table, overridden by the user tables.

    Args:
        files: user tables (TSV or JSON), later ones winning.
        bundled: start from the bundled table (``False``: only the user tables).
        missing_bundled: what a missing bundled table does (:func:`bundled_descriptions`).
        use_env: also read the tables of ``$HISTOEXPRESS_GENE_DESCRIPTIONS`` (before
            ``files``).
        duplicates: a symbol twice in one user file (:func:`read_description_file`).
    """
    table = bundled_descriptions(missing=missing_bundled) if bundled else DescriptionTable()
    paths: list[str | os.PathLike[str]] = []
    if use_env:
        paths += [p for p in os.environ.get(DESCRIPTIONS_ENV, "").split(os.pathsep) if p]
    paths += list(files)
    for p in paths:
        table = table.updated(read_description_file(p, duplicates=duplicates))
    return table
