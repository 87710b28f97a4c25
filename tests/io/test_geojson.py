"""QuPath GeoJSON: reading annotations (polygons, holes, classes), errors, round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from shapely.geometry import MultiPolygon, Polygon

from napari_histoexpress.errors import InputFileError, InputFileWarning
from napari_histoexpress.io.geojson import (
    annotation_feature,
    circle_feature,
    circle_polygon,
    qupath_to_world_um,
    read_annotations,
    world_um_to_qupath,
    write_features,
)

SQUARE_WITH_HOLE = Polygon(
    [(10, 10), (110, 10), (110, 110), (10, 110)], [[(40, 40), (60, 40), (60, 60), (40, 60)]]
)
TWO_PARTS = MultiPolygon(
    [
        Polygon([(200, 0), (260, 0), (260, 50)]),
        Polygon([(300, 300), (330, 300), (330, 330), (300, 330)]),
    ]
)


def _qupath_feature(geometry: dict, **props) -> dict:
    return {
        "type": "Feature",
        "id": "3f0c1d8e-2b7a-4c3e-9d51-0a1b2c3d4e5f",
        "geometry": geometry,
        "properties": {"objectType": "annotation", **props},
    }


def test_reads_feature_collection_list_and_single_feature(tmp_path: Path) -> None:
    from shapely.geometry import mapping

    feat = _qupath_feature(
        mapping(SQUARE_WITH_HOLE),
        name="tumour 1",
        classification={"name": "Tumor", "color": [200, 0, 0]},
        measurements=[{"name": "Num Detections", "value": 12}],  # QuPath 0.3 style
    )
    for doc in ({"type": "FeatureCollection", "features": [feat]}, [feat], feat):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps(doc))
        (ann,) = read_annotations(path)
        assert ann.geometry.equals(SQUARE_WITH_HOLE) and len(ann.geometry.interiors) == 1
        assert (ann.name, ann.classification, ann.color) == ("tumour 1", "Tumor", (200, 0, 0))
        assert ann.object_type == "annotation" and ann.id == feat["id"]
        assert ann.measurements == {"Num Detections": 12.0} and ann.index == 0


def test_points_and_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    from shapely.geometry import mapping

    doc = {
        "type": "FeatureCollection",
        "features": [
            _qupath_feature({"type": "Point", "coordinates": [1, 2]}),
            _qupath_feature(mapping(TWO_PARTS), classification={"name": "Stroma"}),
            _qupath_feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
        ],
    }
    path = tmp_path / "mixed.geojson"
    path.write_text(json.dumps(doc))
    with pytest.warns(InputFileWarning, match=r"1 Point \(feature 0\).*1 LineString \(feature 2\)"):
        (ann,) = read_annotations(path)
    assert isinstance(ann.geometry, MultiPolygon) and ann.index == 1
    assert ann.label == "Stroma"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", r"not valid JSON \(line 1"),
        ('{"type": "Topology"}', "not GeoJSON features"),
        ('{"type": "FeatureCollection", "features": [42]}', "feature 0 is not a JSON object"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]',
            "feature 0: malformed Polygon",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]',
            r"no polygon annotations \(only 1 Point",
        ),
    ],
)
def test_errors_name_the_file_and_the_feature(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(InputFileError, match=match) as info:
        read_annotations(path)
    assert str(info.value).startswith(str(path))


def test_round_trip_regions_and_circles(tmp_path: Path) -> None:
    feats = [
        annotation_feature(
            SQUARE_WITH_HOLE,
            name="r1",
            classification="Tumor",
            color=(255, 0, 0),
            measurements={"ERBB2": 1.5, "KRT19": float("nan")},
            id="3f0c1d8e-2b7a-4c3e-9d51-0a1b2c3d4e5f",
        ),
        annotation_feature(TWO_PARTS, classification="Stroma"),
        circle_feature(50.0, 60.0, 10.0, name="spot_1", measurements={"ERBB2": 0.25}, id="spot_1"),
    ]
    path = write_features(feats, tmp_path / "out.geojson")
    doc = json.loads(path.read_text())  # strict JSON: no NaN
    assert doc["type"] == "FeatureCollection"
    assert doc["features"][0]["properties"]["measurements"] == {"ERBB2": 1.5}
    assert doc["features"][2]["properties"]["objectType"] == "detection"
    a, b, c = read_annotations(path)
    assert a.geometry.equals(SQUARE_WITH_HOLE) and b.geometry.equals(TWO_PARTS)
    assert (a.name, a.classification, a.color, a.id) == ("r1", "Tumor", (255, 0, 0), feats[0]["id"])
    assert a.measurements == {"ERBB2": 1.5} and b.classification == "Stroma"
    assert c.object_type == "detection" and c.name == "spot_1" and c.measurements == {"ERBB2": 0.25}
    assert c.geometry.area == pytest.approx(math.pi * 100.0, rel=1e-12)
    assert c.geometry.centroid.x == pytest.approx(50.0) and c.geometry.centroid.y == pytest.approx(
        60.0
    )
    # a non-UUID id becomes a stable UUID
    assert circle_feature(1, 2, 3, id="spot_1")["id"] == feats[2]["id"]


def test_world_um_conversion_is_napari_pixel_centres() -> None:
    geom = Polygon([(0.5, 0.5), (10.5, 0.5), (10.5, 4.5)])
    world = qupath_to_world_um(geom, 0.5)
    assert world.bounds == pytest.approx((0.0, 0.0, 5.0, 2.0))
    assert world_um_to_qupath(world, 0.5).equals_exact(geom, 1e-12)
    assert circle_polygon(0, 0, 1, 8).area == pytest.approx(math.pi)
