"""Take the README's bins screenshot (``docs/images/spots_bins.png``) in a real viewer.

    xvfb-run -a python scripts/screenshot_spot_bins.py [--out docs/images]

The synthetic sample is copied to a temporary folder, predicted there with the bundled demo
run (the Predict widget, one click), then, in the Spots widget as a user would: Visium HD
8 µm bins fill the tissue (*Draw region* + *Fill with grid*: a bins layer), a region of them
is selected (*Select in region*) and the table ranks its genes against the slide, beside a
hand-drawn 500 µm spot. Helpers come from ``scripts/screenshots.py``; nothing is written to
the repository but the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from screenshots import (
    REPO,
    _close,
    _frame,
    _grab_window,
    _predict_with_demo_run,
    _show_dock,
    _wait_until,
    _widget_viewer,
)


def spot_bins_screenshot(out: Path, work: Path) -> Path:
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
        _predict_with_demo_run(w, docks, slide)

        _show_dock(docks, "Spots")
        spots = w["Spots"]
        mpp = _common.slide_mpp(slide)
        spots.preset_combo.setCurrentText("Visium HD 8 µm")
        spots.region_button.click()
        region = spots.region_layer()
        tissue = np.array([[150.0, 150.0], [150.0, 1390.0], [1390.0, 1390.0], [1390.0, 150.0]])
        region.add(tissue / mpp, shape_type="rectangle")
        spots.fill_button.click()
        (bins,) = spots.bins_layers()
        # a polygon inside: select its bins, the table ranks them against the slide
        poly = np.array([[400.0, 450.0], [350.0, 800.0], [650.0, 900.0], [750.0, 500.0]])
        region.selected_data = set()
        region.add(poly / mpp, shape_type="polygon")
        region.selected_data = {len(region.data) - 1}
        viewer.layers.selection.active = bins
        viewer.layers.selection.active = region
        spots.select_in_region()
        n = len(bins.selected_data)
        _wait_until(
            lambda: (
                len(spots.last_spots) == n
                and "computing" not in spots.selection_label.text()
                and bool(spots.table_rows())
                and spots.slide_stats() is not None
            ),
            "the table of the selected bins",
        )
        spots.update_table()
        region.mode = "pan_zoom"
        # a hand-drawn 500 µm spot beside them
        spots.add_spot(1100.0, 1050.0, 500.0)
        drawn = spots.spots_layer()
        drawn.edge_width = [6.0 / mpp]
        viewer.layers.selection.active = bins
        bins.mode = "pan_zoom"
        _frame(viewer, (770.0, 770.0), 1400.0)
        return _grab_window(viewer, out / "spots_bins.png")
    finally:
        _close(viewer, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histoexpress_bins_shot_") as tmp:
        os.environ["HISTOEXPRESS_HOME"] = str(Path(tmp) / "home")
        print(spot_bins_screenshot(args.out, Path(tmp)))


if __name__ == "__main__":
    main()
