"""Take the README's QuPath-regions screenshot (``docs/images/qupath_regions.png``).

    xvfb-run -a python scripts/screenshot_qupath_regions.py [--out docs/images]

The synthetic sample is copied to a temporary folder and predicted there with the bundled
demo run (the Predict widget); a QuPath-style GeoJSON (a tumour outline with a hole and a
stroma polygon, full-resolution pixels) written beside it is opened with *File > Open*; the
tumour annotation is filled with a Visium grid (*Fill with grid*: the hole stays empty), and
each annotation is labelled with its area-weighted ERBB2 mean
(:func:`napari_histoexpress.inference.region_means.region_gene_table`, what
``histoexpress spots --regions`` writes). Nothing is written to the repository but the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from screenshots import (
    REPO,
    _close,
    _frame,
    _grab_window,
    _predict_with_demo_run,
    _show_dock,
    _widget_viewer,
)


def qupath_regions_screenshot(out: Path, work: Path) -> Path:
    from shapely.geometry import Polygon, mapping

    from napari_histoexpress._region_layers import layer_regions
    from napari_histoexpress.inference.region_means import region_gene_table
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.widgets import _common

    slides = work / "sample"
    slides.mkdir()
    image = Path(shutil.copy(sample_paths()["image"], slides / Path(sample_paths()["image"]).name))
    viewer, w, docks = _widget_viewer()
    try:
        layers = viewer.open(str(image), plugin="napari-histoexpress")
        (slide,) = [layer for layer in layers if _common.is_slide_layer(layer)]
        viewer.reset_view()
        store = _predict_with_demo_run(w, docks, slide)
        mpp = _common.slide_mpp(slide)
        s = 1.0 / mpp  # QuPath pixels per µm
        tumour = Polygon(
            [(250 * s, 250 * s), (900 * s, 200 * s), (1050 * s, 700 * s), (600 * s, 950 * s),
             (300 * s, 750 * s)],
            [[(550 * s, 450 * s), (750 * s, 450 * s), (700 * s, 650 * s), (520 * s, 620 * s)]],
        )  # fmt: skip
        stroma = Polygon([(1100 * s, 900 * s), (1400 * s, 950 * s), (1300 * s, 1350 * s),
                          (950 * s, 1250 * s)])  # fmt: skip
        feats = [
            {"type": "Feature", "id": uid, "geometry": mapping(g),
             "properties": {"objectType": "annotation", "name": name,
                            "classification": {"name": cls, "color": colour}}}
            for uid, g, name, cls, colour in (
                ("0b6c1d8e-2b7a-4c3e-9d51-0a1b2c3d4e5f", tumour, "T1", "Tumor", [230, 30, 30]),
                ("1c7d2e9f-3c8b-4d4f-8e62-1b2c3d4e5f60", stroma, "S1", "Stroma", [40, 160, 255]),
            )
        ]  # fmt: skip
        geojson = image.with_name(image.name + ".geojson")
        geojson.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        (regions,) = viewer.open(str(geojson), plugin="napari-histoexpress")
        _show_dock(docks, "Spots")
        spots = w["Spots"]
        spots.preset_combo.setCurrentText("Visium 55 µm")
        viewer.layers.selection.active = regions
        regions.selected_data = {0}
        spots.fill_button.click()
        regions.selected_data = set()
        anns = layer_regions(
            [[regions.data_to_world(v) for v in shape] for shape in regions.data],
            regions.features,
            mpp=mpp,
            metadata=regions.metadata,
        )
        _table, x = region_gene_table(store, anns)
        erbb2 = x[:, store.genes.index("ERBB2")]
        labels = [f"{a.classification}: ERBB2 {erbb2[k]:.2f}" for k, a in enumerate(anns)]
        feats_df = regions.features.copy()
        feats_df["label"] = [
            labels[a] if r == "exterior" else ""
            for a, r in zip(feats_df["annotation"], feats_df["ring"], strict=True)
        ]
        regions.features = feats_df
        regions.text = {"string": "{label}", "size": 13, "color": "black", "anchor": "upper_left"}
        regions.edge_width = [5.0 / mpp] * len(regions.data)
        regions.mode = "pan_zoom"
        viewer.layers.selection.active = regions
        _frame(viewer, (780.0, 860.0), 1500.0)
        return _grab_window(viewer, out / "qupath_regions.png")
    finally:
        _close(viewer, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histoexpress_qupath_shot_") as tmp:
        os.environ["HISTOEXPRESS_HOME"] = str(Path(tmp) / "home")
        print(qupath_regions_screenshot(args.out, Path(tmp)))


if __name__ == "__main__":
    main()
