"""Atomic writers: complete file or no file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io import spatial
from napari_histoexpress.io.export import write_csv_atomic, write_h5ad_atomic
from napari_histoexpress.io.st_datasets import read_h5ad


def _spatial_adata() -> AnnData:
    adata = AnnData(X=sparse.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3)))
    adata.obs_names = ["1x1", "1x2", "2x1", "2x2"]
    adata.var_names = ["A", "B", "C"]
    adata.obsm["spatial"] = np.array([[10.0, 10.0], [10.0, 20.0], [20.0, 10.0], [20.0, 20.0]])
    spatial.set_library(
        adata,
        "lib",
        images={"hires": np.zeros((8, 8, 3), np.uint8)},
        scalefactors={"tissue_hires_scalef": 0.25, "spot_diameter_fullres": 5.0},
        metadata={
            "technology": "st",
            "mpp_source": "user",
            "microns_per_pixel": 2.0,
            "source_image_path": None,
        },
    )
    return adata


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_h5ad_roundtrip(tmp_path: Path) -> None:
    adata = _spatial_adata()
    out = write_h5ad_atomic(adata, tmp_path / "out.h5ad")
    assert out == tmp_path / "out.h5ad"
    assert _leftovers(tmp_path) == ["out.h5ad"]
    back = read_h5ad(out)
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    assert spatial.microns_per_pixel(back) == 2.0
    assert "source_image_path" not in spatial.library(back)[1]["metadata"]  # None left out


def test_h5ad_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.h5ad"
    target.write_bytes(b"previous version")

    def failing_write(self: AnnData, filename: Path, *args, **kwargs) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(AnnData, "write_h5ad", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad_atomic(_spatial_adata(), target)
    assert _leftovers(tmp_path) == ["out.h5ad"]
    assert target.read_bytes() == b"previous version"


def test_csv_roundtrip_and_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame({"ERBB2": [1.5, 2.0], "GAPDH": [0.1, 0.2]}, index=["1x1", "1x2"])
    out = write_csv_atomic(df, tmp_path / "pred.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out, index_col=0), df)
    write_csv_atomic(df, tmp_path / "noindex.csv", index=False)
    assert pd.read_csv(tmp_path / "noindex.csv").columns.tolist() == ["ERBB2", "GAPDH"]

    def failing_to_csv(self: pd.DataFrame, path, *args, **kwargs) -> None:
        Path(path).write_text("ERBB2,GA")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_csv_atomic(df, tmp_path / "new.csv")
    assert _leftovers(tmp_path) == ["noindex.csv", "pred.csv"]


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "absent" / "x.csv")


def test_h5ad_safe_provenance_round_trips(tmp_path: Path) -> None:
    from napari_histoexpress.io.export import h5ad_safe

    prov = {"run": "/r", "mpp": None, "levels": [1, None], "nested": {"a": None, "b": (2, 3)}}
    safe = h5ad_safe(prov)
    assert safe == {"run": "/r", "levels": [1, "None"], "nested": {"b": [2, 3]}}
    adata = AnnData(np.zeros((2, 1), np.float32))
    adata.uns["provenance"] = safe
    write_h5ad_atomic(adata, tmp_path / "a.h5ad")
    import anndata

    back = anndata.read_h5ad(tmp_path / "a.h5ad").uns["provenance"]
    assert back["run"] == "/r" and "mpp" not in back and "a" not in back["nested"]
    assert [str(v) for v in back["levels"]] == ["1", "None"]
    assert list(back["nested"]["b"]) == [2, 3]
