"""The GeoJSON reader's layer data without a viewer: a file beside no slide opens in pixels
with a warning; only ``.geojson`` files are claimed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon, mapping

from napari_histoexpress._reader import get_reader
from napari_histoexpress._region_layers import layer_regions, read_regions_layer


def test_geojson_beside_no_slide_opens_in_pixels(tmp_path: Path) -> None:
    poly = Polygon([(10, 10), (50, 10), (50, 40)])
    path = tmp_path / "lonely.geojson"
    path.write_text(json.dumps([{"type": "Feature", "geometry": mapping(poly), "properties": {}}]))
    assert get_reader(str(path)) is not None
    assert get_reader(str(tmp_path / "config.json")) is None
    with pytest.warns(UserWarning, match="no slide with a known µm/px"):
        data, kwargs, kind = read_regions_layer(path)
    assert (
        kind == "shapes" and kwargs["scale"] == (1.0, 1.0) and kwargs["metadata"]["slide"] is None
    )
    np.testing.assert_allclose(data[0][0], [9.5, 9.5])  # (Y − 0.5, X − 0.5)
    # a hand-drawn shape without an annotation index is a region of its own
    (ann, drawn) = layer_regions(
        [data[0], np.array([[0.0, 0.0], [0.0, 5.0], [5.0, 5.0]])],
        kwargs["features"].iloc[:1].reindex([0, 1]),
        mpp=1.0,
    )
    assert ann.geometry.symmetric_difference(poly).area < 1e-9 and drawn.geometry.area == 12.5
