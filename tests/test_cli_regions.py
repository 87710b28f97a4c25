"""`histoexpress spots --regions`: QuPath annotations → one row per annotation (.csv, .h5ad)
or back to GeoJSON with the genes as measurements; --circles + --regions → one .geojson."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon, mapping

from napari_histoexpress.cli import main
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.io.geojson import read_annotations

TUMOUR = Polygon([(8, 8), (200, 16), (180, 220), (16, 180)], [[(60, 60), (100, 70), (80, 120)]])


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=(40, 40), feature_dim=3, genes=["ERBB2", "KRT19"],
        head_W=rng.normal(size=(3, 2)), head_b=np.zeros(2), map_mpp=4.0, chunk=16,
        attrs={"slide": {"path": "/data/s.tif", "shape": [320, 320], "mpp": 0.5}},
    )  # fmt: skip
    store.write_all(rng.normal(size=(40, 40, 3)).astype(np.float32))
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "3f0c1d8e-2b7a-4c3e-9d51-0a1b2c3d4e5f",
                "geometry": mapping(TUMOUR),
                "properties": {
                    "objectType": "annotation",
                    "name": "T1",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                },
            }
        ],
    }
    regions = tmp_path / "annotations.geojson"
    regions.write_text(json.dumps(doc))
    return tmp_path / "m.zarr", regions


def test_spots_regions_csv_h5ad_geojson(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, regions = _setup(tmp_path)
    assert (
        main(
            [
                "spots",
                "--map",
                str(store),
                "--regions",
                str(regions),
                "--out",
                str(tmp_path / "r.csv"),
            ]
        )
        == 0
    )
    assert "1 regions x 2 genes" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "r.csv")
    assert list(table.columns[:4]) == ["id", "name", "classification", "object_type"]
    assert table.loc[0, "classification"] == "Tumor" and table.loc[
        0, "area_fraction"
    ] == pytest.approx(1.0)
    assert table.loc[0, "area_um2"] == pytest.approx(TUMOUR.area * 0.25)
    assert (
        main(
            [
                "spots",
                "--map",
                str(store),
                "--regions",
                str(regions),
                "--out",
                str(tmp_path / "r.h5ad"),
            ]
        )
        == 0
    )
    adata = ad.read_h5ad(tmp_path / "r.h5ad")
    assert adata.shape == (1, 2)
    np.testing.assert_allclose(adata.X[0], table[["ERBB2", "KRT19"]].to_numpy()[0], rtol=1e-6)
    out = tmp_path / "r.geojson"
    assert main(["spots", "--map", str(store), "--regions", str(regions), "--out", str(out)]) == 0
    (ann,) = read_annotations(out)
    assert ann.geometry.equals(TUMOUR) and ann.classification == "Tumor" and ann.name == "T1"
    assert ann.measurements["ERBB2"] == pytest.approx(table.loc[0, "ERBB2"])


def test_spots_circles_and_regions_to_one_geojson(tmp_path: Path) -> None:
    store, regions = _setup(tmp_path)
    circles = tmp_path / "c.csv"
    pd.DataFrame(
        {"id": ["a", "b"], "x_um": [20.0, 40.0], "y_um": [30.0, 40.0], "diameter_um": [10.0, 20.0]}
    ).to_csv(circles, index=False)
    out = tmp_path / "all.geojson"
    args = ["spots", "--map", str(store), "--circles", str(circles), "--regions", str(regions)]
    assert main([*args, "--out", str(out)]) == 0
    objs = read_annotations(out)
    assert [o.object_type for o in objs] == ["annotation", "detection", "detection"]
    assert objs[1].name == "a" and set(objs[1].measurements) >= {
        "ERBB2",
        "KRT19",
        "area_fraction",
        "diameter_um",
    }
    # centre: x_um / mpp + 0.5 in QuPath pixels
    assert objs[2].geometry.centroid.x == pytest.approx(40.0 / 0.5 + 0.5)
    assert main([*args, "--out", str(tmp_path / "x.csv")]) != 0  # both need .geojson
    assert main(["spots", "--map", str(store), "--out", str(tmp_path / "y.csv")]) != 0
