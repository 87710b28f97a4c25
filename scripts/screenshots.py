"""Take the README's screenshots in a real napari viewer (run under a virtual X server).

    xvfb-run -a python scripts/screenshots.py [--data ../shared/data] [--out docs/images]

Writes ``her2st_C2_spots.png`` (a her2st section with its measured spots coloured by ERBB2)
and ``sample_data.png`` (the synthetic sample). The window is shown without being mapped on
screen, because screenshots of a hidden viewer come out black under Xvfb.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _show_unmapped(viewer) -> None:  # type: ignore[no-untyped-def]
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    window.resize(1400, 1000)
    window.show()


def her2st_screenshot(data: Path, out: Path) -> Path:
    import napari
    import numpy as np

    from napari_histoexpress import color_spots_by
    from napari_histoexpress.io.export import write_h5ad_atomic
    from napari_histoexpress.io.st_datasets import read_legacy_st

    her2st = data / "her2st"
    adata = read_legacy_st(
        her2st / "images" / "C2.jpg",
        her2st / "counts" / "C2.tsv.gz",
        her2st / "spots" / "C2_selection.tsv",
    )
    with tempfile.TemporaryDirectory() as tmp:
        h5ad = write_h5ad_atomic(adata, Path(tmp) / "C2.h5ad")
        viewer = napari.Viewer(show=False)
        _show_unmapped(viewer)
        layers = viewer.open(str(h5ad), plugin="napari-histoexpress")
        points = next(layer for layer in layers if type(layer).__name__ == "Points")
        color_spots_by(points, "ERBB2")
        points.opacity = 0.85
        viewer.scale_bar.visible = True
        viewer.reset_view()
        # zoom onto the tissue (the spots' bounding box)
        world = points.data * np.asarray(points.scale)
        viewer.camera.center = tuple(world.mean(axis=0))
        extent = np.ptp(world, axis=0).max() * 1.15
        viewer.camera.zoom = min(viewer.window._qt_viewer.canvas.size) / extent
        path = out / "her2st_C2_spots.png"
        viewer.screenshot(str(path), canvas_only=True, flash=False)
        viewer.close()
    return path


def sample_screenshot(out: Path) -> Path:
    import napari

    viewer = napari.Viewer(show=False)
    _show_unmapped(viewer)
    viewer.open_sample("napari-histoexpress", "synthetic_tissue")
    viewer.scale_bar.visible = True
    viewer.reset_view()
    path = out / "sample_data.png"
    viewer.screenshot(str(path), canvas_only=True, flash=False)
    viewer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(sample_screenshot(args.out))
    if (args.data / "her2st").exists():
        print(her2st_screenshot(args.data, args.out))
    else:
        print(f"skipped the her2st screenshot: {args.data / 'her2st'} not found")


if __name__ == "__main__":
    main()
