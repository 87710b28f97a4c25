"""Take the README's screenshots in a real napari viewer (run under a virtual X server).

    xvfb-run -a python scripts/screenshots.py [--data ../shared/data] [--out docs/images]
        [--cv-dir DIR] [--skip-widgets] [--only hage|dkan|zero-shot]...

Writes ``her2st_C2_spots.png`` (a her2st section with its measured spots coloured by ERBB2)
and ``sample_data.png`` (the synthetic sample), canvas only, and the whole window with the
dock widgets at work (real predictions, driven through the widgets as a user would):

- on the synthetic sample with the bundled demo run: ``widget_predict.png`` (a finished
  prediction), ``widget_genes_sample.png`` (ERBB2 heatmap, measured-vs-predicted PCC),
  ``widget_spots.png`` (drawn spots + a grid, the live table and bar plot),
  ``widget_export.png`` (an export to ``.h5ad`` done);
- with ``--cv-dir DIR`` (the output folder of ``benchmarks/her2st_cv.py``: ``C2.h5ad``,
  ``C2.zarr`` predicted by the fold-C2 PixNet that never saw C2): ``widget_genes_her2st.png``
  and ``widget_spots_her2st.png``; and, for each spot-model run of fold C2 it holds
  (``hage/fold-C2``, ``dkan/fold-C2``), ``widget_LABEL_genes.png`` and
  ``widget_LABEL_spots.png``: that run predicts the whole held-out C2 through the Predict
  widget (a spot model, on a patch lattice), ERBB2 is shown as a heatmap, spots of two
  sizes aggregate it, and Export writes them to ``.h5ad``; ``--only zero-shot``:
  ``widget_zero_shot.png``, the ALIGN-ST rank-split run of fold C2 (``align-st-zero-shot-
  rank/fold-C2``, never trained on the top 250 genes) predicts C2 and the Zero-shot widget
  adds MUCL1 from a typed description, with its PCC against the measured spots.

The window is shown without being mapped on screen, because screenshots of a hidden viewer
come out black under Xvfb. The sample is copied to a temporary folder (its prediction and
project land there) and ``HISTOEXPRESS_HOME`` points there too: nothing is written to the
repository (but ``--out``), ``~/.cache`` or ``--cv-dir``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _show_unmapped(viewer: Any, size: tuple[int, int] = (1400, 1000)) -> None:
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    window.resize(*size)
    window.show()


def _fill_grid(viewer, spots, region, slide, rect_um) -> None:  # type: ignore[no-untyped-def]
    """Draw ``rect_um`` (row, col µm) as the grid region, fill it, wait for the table."""
    from napari_histoexpress.widgets import _common

    region.add(rect_um / _common.slide_mpp(slide), shape_type="rectangle")
    spots.fill_button.click()
    region.mode = "pan_zoom"
    viewer.layers.selection.active = spots.spots_layer()
    spots.spots_layer().mode = "pan_zoom"
    _wait_until(lambda: len(spots.table_rows()) > 0, "the spots table")


def her2st_screenshot(data: Path, out: Path) -> Path:
    import napari

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


# --------------------------------------------------------------------------- widgets in action
#: Window size of the widget screenshots (the whole napari window, dock included).
WINDOW_SIZE = (1600, 1000)
#: Width of the dock area holding the four (tabbed) widgets.
DOCK_WIDTH = 470
#: PNGs are quantized (and downscaled if needed) to stay under this size.
MAX_PNG_BYTES = 400_000


def _wait(ms: int = 300) -> None:
    """Process Qt events for ``ms`` milliseconds (rendering, queued signals, timers)."""
    from qtpy.QtTest import QTest

    QTest.qWait(ms)


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        _wait(100)


def _save_small_png(image: Any, path: Path, max_bytes: int = MAX_PNG_BYTES) -> Path:
    """Save a PIL image as a palette PNG under ``max_bytes`` (downscaling when needed)."""
    from PIL import Image

    rgb = image.convert("RGB")
    scale = 1.0
    while True:
        size = (round(rgb.width * scale), round(rgb.height * scale))
        img = rgb if scale == 1.0 else rgb.resize(size, Image.Resampling.LANCZOS)
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_bytes or scale < 0.4:
            return path
        scale *= 0.85


def _predict_with_demo_run(w: dict[str, Any], docks: dict[str, Any], slide: Any) -> Any:
    """The Predict widget on ``slide`` with the bundled demo run on the CPU (one click);
    returns the slide's map store (raises when the prediction failed)."""
    from napari_histoexpress.widgets import _common

    _show_dock(docks, "Predict")
    w["Predict"].demo_button.click()
    w["Predict"].device_combo.setCurrentText("cpu")
    w["Predict"].predict_button.click()
    _wait_until(lambda: not w["Predict"].busy, "the prediction")
    store = _common.slide_map(slide)
    if store is None:
        raise RuntimeError(f"prediction failed: {w['Predict'].status_label.text()}")
    return store


def _grab_window(viewer: Any, path: Path) -> Path:
    """The whole napari window (canvas + dock widgets) as a PNG under the size limit."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image

    _wait(600)
    for toast in list(NapariQtNotification._instances):  # notifications shown over the canvas
        toast.close()
    _wait(200)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(rgba)[..., :3])
    if np.asarray(image).std() < 1.0:
        raise RuntimeError(f"{path.name}: the window grab is blank")
    return _save_small_png(image, path)


def _widget_viewer() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A viewer with the dock widgets tabbed on the right: ``(viewer, widgets, docks)``."""
    import napari
    from qtpy.QtCore import Qt

    from napari_histoexpress.widgets import (
        ExportWidget,
        GenesWidget,
        PredictWidget,
        SpotsWidget,
        ZeroShotWidget,
    )

    viewer = napari.Viewer(show=False)
    _show_unmapped(viewer, WINDOW_SIZE)
    widgets: dict[str, Any] = {}
    docks: dict[str, Any] = {}
    for name, cls in (
        ("Predict", PredictWidget),
        ("Genes", GenesWidget),
        ("Zero-shot", ZeroShotWidget),
        ("Spots", SpotsWidget),
        ("Export", ExportWidget),
    ):
        widgets[name] = cls(viewer)
        docks[name] = viewer.window.add_dock_widget(
            widgets[name], name=name, area="right", tabify=True
        )
    viewer.window._qt_window.resizeDocks(
        [docks["Predict"]], [DOCK_WIDTH], Qt.Orientation.Horizontal
    )
    viewer.scale_bar.visible = True
    _wait(300)
    return viewer, widgets, docks


def _close(viewer: Any, widgets: dict[str, Any]) -> None:
    """Close the viewer, first disconnecting the widgets from the shared ``hub`` (this
    script keeps references to them, so psygnal's weak callbacks would outlive their Qt
    objects and the next viewer's ``set_slide_map`` would call into deleted widgets)."""
    from napari_histoexpress.widgets import _common

    for widget in widgets.values():
        _common.hub.map_changed.disconnect(widget._on_map_changed, missing_ok=True)
    widgets.clear()
    viewer.close()


def _show_dock(docks: dict[str, Any], name: str) -> None:
    docks[name].show()
    docks[name].raise_()
    _wait(200)


def _frame(viewer: Any, centre_um: tuple[float, float], extent_um: float) -> None:
    """Centre the camera on ``(y, x)`` µm so that ``extent_um`` fits the canvas."""
    viewer.camera.center = centre_um
    viewer.camera.zoom = min(viewer.window._qt_viewer.canvas.size) / extent_um


def _outline(viewer: Any, layer: Any, screen_px: float = 5.0) -> None:
    """Spot outlines ``screen_px`` screen pixels wide at the current zoom (Shapes edge
    widths are in data pixels: the default 2 px vanish when a slide is zoomed out)."""
    if len(layer.data):
        data_px = screen_px / (viewer.camera.zoom * float(layer.scale[-1]))
        layer.edge_width = [data_px] * len(layer.data)
        layer.refresh()  # napari redraws edges only then


def _to_top(viewer: Any, layer: Any) -> None:
    viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))


def _show_gene(genes: Any, query: str, gene: str) -> Any:
    """Type ``query`` in the Genes widget's search box and click ``gene`` in the list."""
    genes.filter_edit.setText(query)
    listed = genes.listed_genes()
    if gene not in listed:
        raise RuntimeError(f"{gene} not listed for the search {query!r}: {listed}")
    item = genes.gene_list.item(listed.index(gene))
    genes.gene_list.setCurrentItem(item)
    genes.gene_list.itemClicked.emit(item)
    layer = genes.heatmap_layer(gene)
    if layer is None:
        raise RuntimeError(f"no {gene} heatmap layer after the click")
    return layer


def _wait_for_pcc(genes: Any) -> None:
    _wait_until(lambda: genes.comparison is not None, "the measured-vs-predicted comparison")
    _wait(300)


def sample_widget_screenshots(out: Path, work: Path) -> list[Path]:
    """The four widgets on the synthetic sample with the bundled demo run's prediction.

    The sample (slide + its measured-spots ``.h5ad``) is copied into ``work``, so the
    prediction and the project folder land there, never in the repository.
    """
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.widgets import _common

    slides = work / "sample"
    slides.mkdir()
    sample = sample_paths()
    shutil.copy(sample["image"], slides / Path(sample["image"]).name)
    h5ad = shutil.copy(sample["spots"], slides / Path(sample["spots"]).name)

    viewer, w, docks = _widget_viewer()
    paths: list[Path] = []
    try:
        layers = viewer.open(str(h5ad), plugin="napari-histoexpress")
        (slide,) = [layer for layer in layers if _common.is_slide_layer(layer)]
        viewer.reset_view()

        # Predict: the bundled demo run, one click
        _predict_with_demo_run(w, docks, slide)
        paths.append(_grab_window(viewer, out / "widget_predict.png"))

        # Genes: search HER2, click ERBB2; measured spots coloured by it, PCC shown
        _show_dock(docks, "Genes")
        heat = _show_gene(w["Genes"], "her2", "ERBB2")
        _wait_for_pcc(w["Genes"])
        paths.append(_grab_window(viewer, out / "widget_genes_sample.png"))

        # Spots: hide the measured spots; a few clicks' worth of spots + a small grid
        for layer in layers:
            if layer is not slide:
                layer.visible = False
        heat.visible = False  # spots on the plain H&E: clearer
        _show_dock(docks, "Spots")
        spots = w["Spots"]
        spots.preset_combo.setCurrentText("Visium 55 µm")
        for x, y in ((620.0, 420.0), (880.0, 640.0), (520.0, 900.0)):
            spots.add_spot(x, y)
        spots.region_button.click()
        region = spots.region_layer()
        rect = np.array([[250.0, 950.0], [250.0, 1350.0], [600.0, 1350.0], [600.0, 950.0]])
        _fill_grid(viewer, spots, region, slide, rect)
        _frame(viewer, (600.0, 930.0), 1000.0)
        _outline(viewer, spots.spots_layer())
        spots.spots_layer().opacity = 1.0
        _outline(viewer, region, 3.0)
        paths.append(_grab_window(viewer, out / "widget_spots.png"))

        # Export: every spot with all genes to an .h5ad (the project's default file)
        _show_dock(docks, "Export")
        export = w["Export"]
        export.export_button.click()
        _wait_until(lambda: export._worker is None and export.last_result is not None, "export")
        paths.append(_grab_window(viewer, out / "widget_export.png"))
    finally:
        _close(viewer, w)
    return paths


def her2st_widget_screenshots(cv_dir: Path, out: Path) -> list[Path]:
    """Genes and Spots widgets on her2st section C2 with real held-out predictions.

    ``cv_dir`` is the output folder of ``benchmarks/her2st_cv.py``: ``C2.h5ad`` (the imported
    section, opened with the plugin's reader: slide + measured spots) and ``C2.zarr`` (the
    dense map of C2 predicted by the PixNet of fold C2, which never saw C2). Nothing in
    ``cv_dir`` is written.
    """
    from napari_histoexpress.widgets import _common

    h5ad, store = cv_dir / "C2.h5ad", cv_dir / "C2.zarr"
    for need in (h5ad, store):
        if not need.exists():
            raise FileNotFoundError(f"{need}: not found (run benchmarks/her2st_cv.py first)")
    viewer, w, docks = _widget_viewer()
    paths: list[Path] = []
    try:
        layers = viewer.open(str(h5ad), plugin="napari-histoexpress")
        (slide,) = [layer for layer in layers if _common.is_slide_layer(layer)]
        points = next(layer for layer in layers if type(layer).__name__ == "Points")
        _common.set_slide_map(slide, store)
        run = cv_dir / "pixnet" / "fold-C2"
        if run.is_dir():
            w["Predict"].set_run_dir(run)
        _wait(300)

        world = points.data * np.asarray(points.scale)
        centre = tuple(world.mean(axis=0))
        extent = float(np.ptp(world, axis=0).max()) * 1.2

        _show_dock(docks, "Genes")
        heat = _show_gene(w["Genes"], "her2", "ERBB2")
        heat.opacity = 0.75
        _to_top(viewer, points)  # measured spots (coloured by ERBB2) above the heatmap
        points.opacity = 1.0
        _wait_for_pcc(w["Genes"])
        _frame(viewer, centre, extent)
        paths.append(_grab_window(viewer, out / "widget_genes_her2st.png"))

        # Spots: a few 55 µm spots and a small hexagonal grid, around the tissue's centre
        points.visible = False
        heat.visible = False  # spots on the plain H&E: clearer
        _show_dock(docks, "Spots")
        spots = w["Spots"]
        spots.preset_combo.setCurrentText("Visium 55 µm")
        inside = world[np.argsort(np.hypot(*(world - np.asarray(centre)).T))[:12]]
        y0, x0 = inside.mean(axis=0)
        for dy, dx in ((-250.0, -300.0), (-150.0, 250.0), (200.0, -250.0)):
            spots.add_spot(float(x0 + dx), float(y0 + dy))
        spots.region_button.click()
        region = spots.region_layer()
        rect = np.array([[y0, x0 - 200.0], [y0, x0 + 200.0], [y0 + 300.0, x0 + 200.0],
                         [y0 + 300.0, x0 - 200.0]])  # fmt: skip
        _fill_grid(viewer, spots, region, slide, rect)
        _frame(viewer, (float(y0), float(x0)), 1000.0)
        _outline(viewer, spots.spots_layer())
        spots.spots_layer().opacity = 1.0
        _outline(viewer, region, 3.0)
        paths.append(_grab_window(viewer, out / "widget_spots_her2st.png"))
    finally:
        _close(viewer, w)
    return paths


SPOT_RUNS = ("hage", "dkan")


def _open_and_predict(viewer: Any, w: Any, docks: Any, h5ad: Path, run: Path, name: str) -> Any:
    """Open the section ``h5ad`` (slide + measured spots), predict its whole slide with
    ``run`` through the Predict widget on the CPU; returns the measured-spots layer."""
    from napari_histoexpress.widgets import _common

    layers = viewer.open(str(h5ad), plugin="napari-histoexpress")
    (slide,) = [layer for layer in layers if _common.is_slide_layer(layer)]
    points = next(layer for layer in layers if type(layer).__name__ == "Points")
    predict = w["Predict"]
    _show_dock(docks, "Predict")
    predict.set_run_dir(run)
    predict.device_combo.setCurrentText("cpu")
    predict.restart_check.setChecked(True)
    predict.predict_button.click()
    _wait_until(lambda: not predict.busy, f"the {name} prediction")
    if _common.slide_map(slide) is None:
        raise RuntimeError(f"{name} prediction failed: {predict.status_label.text()}")
    print(f"Predict widget: {predict.status_label.text()}")
    return points


def spot_run_screenshots(cv_dir: Path, out: Path, label: str = "hage") -> list[Path]:
    """The spot-model run ``label`` of fold C2 (``cv_dir/LABEL/fold-C2``, trained on C3–C6:
    HAGE, DKAN) predicts the whole of C2 through the Predict widget (DKAN: both passes);
    Genes shows ERBB2 with the measured spots; Spots aggregates 55 µm and 100 µm circles
    from the map; Export writes them to ``.h5ad`` (into the temporary project folder:
    ``HISTOEXPRESS_HOME`` is a temporary folder). Writes ``widget_LABEL_genes.png`` and
    ``widget_LABEL_spots.png``."""

    name = label.upper()
    h5ad, run = cv_dir / "C2.h5ad", cv_dir / label / "fold-C2"
    for need in (h5ad, run / "config.json"):
        if not need.exists():
            raise FileNotFoundError(f"{need}: not found (run benchmarks/her2st_cv.py first)")
    viewer, w, docks = _widget_viewer()
    paths: list[Path] = []
    try:
        points = _open_and_predict(viewer, w, docks, h5ad, run, name)

        world = points.data * np.asarray(points.scale)
        centre = tuple(world.mean(axis=0))
        extent = float(np.ptp(world, axis=0).max()) * 1.2
        _show_dock(docks, "Genes")
        heat = _show_gene(w["Genes"], "her2", "ERBB2")
        heat.opacity = 0.75
        _to_top(viewer, points)
        points.opacity = 1.0
        _wait_for_pcc(w["Genes"])
        _frame(viewer, centre, extent)
        paths.append(_grab_window(viewer, out / f"widget_{label}_genes.png"))

        points.visible = False
        _show_dock(docks, "Spots")
        spots = w["Spots"]
        inside = world[np.argsort(np.hypot(*(world - np.asarray(centre)).T))[:12]]
        y0, x0 = inside.mean(axis=0)
        spots.preset_combo.setCurrentText("Visium 55 µm")
        for dy, dx in ((-250.0, -300.0), (200.0, -250.0)):
            spots.add_spot(float(x0 + dx), float(y0 + dy))
        spots.preset_combo.setCurrentText("ST 100 µm")
        for dy, dx in ((-150.0, 250.0), (250.0, 300.0)):
            spots.add_spot(float(x0 + dx), float(y0 + dy))
        _wait_until(lambda: len(spots.table_rows()) >= 4, "the spots table")
        _frame(viewer, (float(y0), float(x0)), 1200.0)
        _outline(viewer, spots.spots_layer())
        spots.spots_layer().opacity = 1.0
        paths.append(_grab_window(viewer, out / f"widget_{label}_spots.png"))

        _show_dock(docks, "Export")
        export = w["Export"]
        export.export_button.click()
        _wait_until(lambda: export._worker is None and export.last_result is not None, "export")
        print(f"Export widget: {export.last_result}")
    finally:
        _close(viewer, w)
    return paths


ZERO_SHOT_RUN = "align-st-zero-shot-rank"
ZERO_SHOT_GENE = "MUCL1"
ZERO_SHOT_TEXT = "secreted mucin of goblet and breast luminal cells"


def zero_shot_screenshot(cv_dir: Path, out: Path, label: str = ZERO_SHOT_RUN) -> list[Path]:
    """The fold-C2 run of the ALIGN-ST rank split (``cv_dir/LABEL/fold-C2``: trained on C3–C6
    and on the genes ranked 251–1,000 only) predicts C2 whole through the Predict widget;
    in the Zero-shot widget the user types a description of a gene the model never trained
    on (MUCL1, rank 8) and sees its dense map and its PCC against C2's measured spots.
    Writes ``widget_zero_shot.png``."""

    h5ad, run = cv_dir / "C2.h5ad", cv_dir / label / "fold-C2"
    for need in (h5ad, run / "config.json"):
        if not need.exists():
            raise FileNotFoundError(f"{need}: not found (run benchmarks/her2st_cv.py first)")
    viewer, w, docks = _widget_viewer()
    try:
        points = _open_and_predict(viewer, w, docks, h5ad, run, "ALIGN-ST")
        zero = w["Zero-shot"]
        _show_dock(docks, "Zero-shot")
        zero.search_bank("mucin")
        zero.symbol_edit.setText(ZERO_SHOT_GENE)
        zero.description_edit.setPlainText(ZERO_SHOT_TEXT)
        zero.add_button.click()
        _wait_until(lambda: zero._worker is None, "the zero-shot gene")
        if zero.last_layer is None:
            raise RuntimeError(f"zero-shot failed: {zero.status.text()}")
        print(f"Zero-shot widget: {zero.pcc_label.text()}")
        zero.last_layer.opacity = 0.8
        _to_top(viewer, points)
        points.opacity = 1.0
        world = points.data * np.asarray(points.scale)
        _frame(viewer, tuple(world.mean(axis=0)), float(np.ptp(world, axis=0).max()) * 1.2)
        points.visible = False
        return [_grab_window(viewer, out / "widget_zero_shot.png")]
    finally:
        _close(viewer, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument(
        "--cv-dir",
        type=Path,
        default=None,
        help="output folder of benchmarks/her2st_cv.py (C2.h5ad, C2.zarr): her2st widget shots",
    )
    parser.add_argument(
        "--skip-widgets", action="store_true", help="only the two canvas screenshots"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SPOT_RUNS, "zero-shot"],
        help="only the screenshots of this spot-model run of --cv-dir, or the zero-shot "
        "widget on the ALIGN-ST rank-split run (repeatable)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="histoexpress-shots-") as tmp:
        work = Path(tmp)
        os.environ["HISTOEXPRESS_HOME"] = str(work / "home")
        if args.only:
            if args.cv_dir is None:
                parser.error("--only needs --cv-dir")
            for label in args.only:
                shots = (
                    zero_shot_screenshot(args.cv_dir, args.out)
                    if label == "zero-shot"
                    else spot_run_screenshots(args.cv_dir, args.out, label)
                )
                for path in shots:
                    print(path)
            return
        print(sample_screenshot(args.out))
        if (args.data / "her2st").exists():
            print(her2st_screenshot(args.data, args.out))
        else:
            print(f"skipped the her2st screenshot: {args.data / 'her2st'} not found")
        if args.skip_widgets:
            return
        for path in sample_widget_screenshots(args.out, work):
            print(path)
        if args.cv_dir is not None:
            for path in her2st_widget_screenshots(args.cv_dir, args.out):
                print(path)
            for label in SPOT_RUNS:
                if (args.cv_dir / label / "fold-C2" / "config.json").exists():
                    for path in spot_run_screenshots(args.cv_dir, args.out, label):
                        print(path)
                else:
                    print(f"skipped the {label} screenshots: no {args.cv_dir / label / 'fold-C2'}")
        else:
            print("skipped the her2st widget screenshots: no --cv-dir")


if __name__ == "__main__":
    main()
