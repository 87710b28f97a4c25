"""Take the README's OME-TIFF heatmap screenshot (``docs/images/heatmap_ome_tiff.png``).

    xvfb-run -a python scripts/screenshot_heatmap_tiff.py [--out docs/images]

The synthetic sample is copied to a temporary folder and predicted there with the bundled
demo run (the Predict widget, one click); the Export widget writes KRT19 and ERBB2 as a
heatmap OME-TIFF (its *Heatmaps as OME-TIFF* section), and the file is opened again with
File > Open (this plugin's reader) over the slide: the KRT19 layer read from the file is
shown. Helpers come from ``scripts/screenshots.py``; nothing is written to the repository but
the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from screenshots import (
    REPO,
    _close,
    _grab_window,
    _predict_with_demo_run,
    _show_dock,
    _wait_until,
    _widget_viewer,
)


def heatmap_tiff_screenshot(out: Path, work: Path) -> Path:
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

        _show_dock(docks, "Export")
        export = w["Export"]
        export.heatmap_genes_edit.setText("KRT19 ERBB2")
        export.heatmap_button.click()
        _wait_until(lambda: export.last_heatmap is not None, "the OME-TIFF export")
        path = export.last_heatmap.path
        opened = viewer.open(str(path), plugin="napari-histoexpress")
        for layer in opened[1:]:
            layer.visible = False
        viewer.layers.selection.active = opened[0]
        viewer.reset_view()
        return _grab_window(viewer, out / "heatmap_ome_tiff.png")
    finally:
        _close(viewer, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histoexpress_tiff_shot_") as tmp:
        os.environ["HISTOEXPRESS_HOME"] = str(Path(tmp) / "home")
        print(heatmap_tiff_screenshot(args.out, Path(tmp)))


if __name__ == "__main__":
    main()
