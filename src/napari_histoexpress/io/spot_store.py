"""A spots table as a compact columnar file: a zarr group in one zip file (no pickle).

A slide's project keeps large bin sets (a Visium HD capture area at 8 µm is ~660,000 bins,
a CSV of ~50 MB that takes seconds to write and read) in ``spot_bins.zarr.zip``
(:mod:`napari_histoexpress.project`). The layout, version 1:

- the zarr v3 group's attributes: ``format`` (:data:`FORMAT`), ``version``, ``n_rows``,
  ``columns`` (the table's column order) and ``encodings`` (column → how it is stored);
- one 1-D array per column, chunked by :data:`CHUNK_ROWS` rows, zstd-compressed (blosc,
  byte shuffle: lattice coordinates compress to a few bytes per row):

  * ``numeric``: float / integer / bool columns as they are;
  * ``spot_number``: the ``id`` column when every id is ``spot_<n>`` (the ids the widgets
    give): the int64 numbers ``n`` in an array named ``id_number``;
  * ``text``: other text columns (e.g. arbitrary ids), variable-length UTF-8;
  * ``category``: text columns with few distinct values (``source``, ``layer``): int32
    codes (``-1`` = missing) and the categories in the array's ``categories`` attribute.

The file is written to a temporary name beside the target and renamed into place
(:func:`~.export.write_atomic`): a reader never sees half a table. Any zarr reader opens it
(``zarr.open_group(zarr.storage.ZipStore(path, mode="r"))``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputFileError
from .export import write_atomic
from .spot_table import id_numbers, ids_from_numbers

__all__ = ["CHUNK_ROWS", "FORMAT", "read_spot_store", "write_spot_store"]

FORMAT = "napari-histoexpress spots table"
VERSION = 1
CHUNK_ROWS = 1 << 18
#: Text columns with at most this many distinct values are stored as categories.
MAX_CATEGORIES = 4096


def _compressor() -> Any:
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def _encode(name: str, col: pd.Series) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """``(encoding, {array name: values}, array attributes)`` of one column."""
    if name == "id_number":  # the ids given as their numbers (see write_spot_store)
        numbers = col.to_numpy(dtype=np.int64)
        if (numbers < 0).any():
            raise ValueError("spot id numbers must be >= 0")
        return "spot_number", {"id_number": numbers}, {}
    if name == "id":
        numbers = id_numbers(col)
        if len(numbers) == 0 or (numbers >= 0).all():
            return "spot_number", {"id_number": numbers}, {}
    numeric = pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col)
    if numeric and not isinstance(col.dtype, pd.CategoricalDtype):
        return "numeric", {name: col.to_numpy()}, {}
    values = col.astype(object)
    missing = values.isna().to_numpy(dtype=bool)
    cats = pd.unique(values[~missing].astype(str))
    if name != "id" and len(cats) <= MAX_CATEGORIES:
        codes = pd.Categorical(values.where(~missing, None), categories=cats).codes
        return "category", {name: codes.astype(np.int32)}, {"categories": [str(c) for c in cats]}
    text = values.where(~missing, "").astype(str).to_numpy(dtype=np.dtypes.StringDType())
    return "text", {name: text}, {}


def write_spot_store(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` (any columns; see the module docstring) to the zip file ``path``,
    atomically. An int64 column ``id_number`` (and no ``id``) is stored as the ids
    ``spot_<id_number>``. Raises :class:`InputFileError` when the folder is missing or
    unwritable."""
    import zarr
    from zarr.storage import ZipStore

    table = table.reset_index(drop=True)
    names = [str(c) for c in table.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate column names in {names}")
    if "id" in names and "id_number" in names:
        raise ValueError("give the ids as 'id' or as 'id_number', not both")
    encoded = [_encode(c, table[c]) for c in names]
    columns = ["id" if c == "id_number" else c for c in names]
    parts = [(c, *enc) for c, enc in zip(columns, encoded, strict=True)]

    def write(tmp: Path) -> None:
        tmp.unlink()  # the zip store makes the file itself
        store = ZipStore(tmp, mode="w")
        try:
            group = zarr.create_group(
                store,
                attributes={
                    "format": FORMAT,
                    "version": VERSION,
                    "n_rows": len(table),
                    "columns": columns,
                    "encodings": {c: enc for c, enc, _, _ in parts},
                },
            )
            for _col, _enc, arrays, attrs in parts:
                for name, values in arrays.items():
                    group.create_array(
                        name,
                        data=values,
                        chunks=(max(1, min(CHUNK_ROWS, len(values))),),
                        compressors=_compressor() if values.dtype.kind != "T" else "auto",
                        attributes=attrs,
                    )
        finally:
            store.close()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
            return write_atomic(Path(path), write)
    except OSError as exc:
        raise InputFileError(path, f"cannot write the table ({exc.strerror or exc})") from exc


def read_spot_store(path: str | os.PathLike[str], *, ids: bool = True) -> pd.DataFrame:
    """The table of :func:`write_spot_store`. With ``ids=False`` an ``id`` column stored as
    numbers comes back as the int64 column ``id_number`` instead (no text made: fast for a
    million rows). Raises :class:`InputFileError` for a file that is not such a table."""
    import zarr
    from zarr.storage import ZipStore

    if not zipfile.is_zipfile(path):
        raise InputFileError(path, "cannot read the spots table (not a zip file)")
    try:
        store = ZipStore(Path(path), mode="r")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputFileError(path, f"cannot read the spots table ({exc})") from exc
    try:
        group: Any = zarr.open_group(store, mode="r")
        attrs: dict[str, Any] = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise InputFileError(path, "is not a napari-histoexpress spots table")
        if int(attrs.get("version", 0)) > VERSION:
            raise InputFileError(
                path, f"was written by a newer napari-histoexpress (version {attrs['version']})"
            )
        n = int(attrs["n_rows"])
        out: dict[str, Any] = {}
        for col in attrs["columns"]:
            enc = attrs["encodings"][col]
            if enc == "spot_number":
                numbers = np.asarray(group["id_number"][:], dtype=np.int64)
                if ids:
                    out["id"] = ids_from_numbers(numbers)
                else:
                    out["id_number"] = numbers
                continue
            arr = group[col]
            values = arr[:]
            if enc == "category":
                cats = list(arr.attrs["categories"])
                out[col] = pd.Categorical.from_codes(np.asarray(values, np.int32), cats).astype(
                    object
                )
            elif enc == "text":
                out[col] = np.asarray(values).astype(object)
            else:
                out[col] = np.asarray(values)
            if len(out[col]) != n:
                raise InputFileError(path, f"column {col!r} has {len(out[col])} rows, not {n}")
    except InputFileError:
        raise
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
        raise InputFileError(path, f"cannot read the spots table ({exc})") from exc
    finally:
        with contextlib.suppress(Exception):  # a store that never opened has nothing to close
            store.close()
    return pd.DataFrame(out)
