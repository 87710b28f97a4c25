"""The columnar spots table (a zarr group in one zip): round trips, encodings, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io.spot_store import FORMAT, read_spot_store, write_spot_store
from napari_histoexpress.io.spot_table import id_numbers, ids_from_numbers


def test_id_numbers_round_trip_only_canonical_ids() -> None:
    nums = id_numbers(["spot_0", "spot_12", "spot_007", "spot_", "tumour", "spot_3x"])
    assert nums.tolist() == [0, 12, -1, -1, -1, -1]
    assert ids_from_numbers(np.array([0, 12, 10**12])).tolist() == [
        "spot_0",
        "spot_12",
        f"spot_{10**12}",
    ]
    with pytest.raises(ValueError):
        ids_from_numbers(np.array([-1]))


def test_round_trip_of_every_encoding(tmp_path: Path) -> None:
    n = 1000
    table = pd.DataFrame(
        {
            "id": ids_from_numbers(np.arange(n) * 3),
            "x_um": np.linspace(0.1, 5000.3, n),
            "y_um": np.full(n, 7.25),
            "diameter_um": 8.0,
            "source": ["grid"] * (n - 1) + ["drawn"],
            "layer": [None] * 10 + ["bins"] * (n - 10),
            "count": np.arange(n, dtype=np.int32),
            "flag": np.arange(n) % 2 == 0,
        }
    )
    path = write_spot_store(table, tmp_path / "t.zarr.zip")
    back = read_spot_store(path)
    assert back.columns.tolist() == table.columns.tolist()
    for col in ("x_um", "y_um", "diameter_um", "count", "flag"):
        np.testing.assert_array_equal(back[col].to_numpy(), table[col].to_numpy())
    assert back["id"].tolist() == table["id"].tolist()
    assert back["source"].tolist() == table["source"].tolist()
    assert back["layer"].isna().sum() == 10 and (back["layer"].iloc[10:] == "bins").all()
    nums = read_spot_store(path, ids=False)
    assert "id" not in nums and nums["id_number"].tolist() == (np.arange(n) * 3).tolist()
    # arbitrary ids are kept as text
    other = pd.DataFrame({"id": ["a", "spot_1", "b"], "x_um": [1.0, 2.0, 3.0]})
    back = read_spot_store(write_spot_store(other, tmp_path / "o.zarr.zip"), ids=False)
    assert back["id"].tolist() == ["a", "spot_1", "b"]
    # an empty table
    empty = read_spot_store(write_spot_store(table.iloc[:0], tmp_path / "e.zarr.zip"))
    assert len(empty) == 0 and empty.columns.tolist() == table.columns.tolist()


def test_any_zarr_reader_opens_it(tmp_path: Path) -> None:
    import zarr
    from zarr.storage import ZipStore

    table = pd.DataFrame({"id_number": np.arange(5, dtype=np.int64), "x_um": np.arange(5.0)})
    path = write_spot_store(table, tmp_path / "t.zarr.zip")
    store = ZipStore(path, mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        assert group.attrs["format"] == FORMAT and group.attrs["columns"] == ["id", "x_um"]
        assert group["id_number"][:].tolist() == [0, 1, 2, 3, 4]
    finally:
        store.close()


def test_failed_write_keeps_the_old_file_and_bad_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_histoexpress.io import spot_store

    path = tmp_path / "t.zarr.zip"
    write_spot_store(pd.DataFrame({"x_um": [1.0]}), path)
    before = path.read_bytes()

    def boom() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(spot_store, "_compressor", boom)
    with pytest.raises(InputFileError, match="disk full"):
        write_spot_store(pd.DataFrame({"x_um": [2.0, 3.0]}), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(InputFileError, match="does not exist"):
        write_spot_store(pd.DataFrame({"x_um": [1.0]}), tmp_path / "missing" / "t.zarr.zip")
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="cannot read"):
        read_spot_store(tmp_path / "bad.zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("zarr.json", '{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    with pytest.raises(InputFileError, match="not a napari-histoexpress spots table"):
        read_spot_store(tmp_path / "other.zip")
