"""Spots at Visium HD scale (issue 15): bins in a real napari viewer, measured vs the targets.

Run under a virtual X server (a real viewer draws its canvas):

    xvfb-run -a python benchmarks/bench_spot_bins.py [--skip-large] [--json out.json]

What it measures, each phase in a fresh Python process (so memory is the phase's own), on a
synthetic slide of 7 × 7 mm at 1 µm/px (a pyramidal OME-TIFF) with a dense map like
PixNet's CPU default (8 µm/px map, C = 64 float16 channels, G = 250 genes, 128 px chunks),
driving the Spots and Export dock widgets as a user does (buttons and napari's mouse
callbacks):

- ``100k`` — *Fill with grid* with Visium HD 8 µm bins over a 2.53 × 2.53 mm rectangle
  (317² = 100,489 bins): **layer shown** = from the click until the bins layer is in the
  viewer and its canvas has been drawn (a screenshot of the canvas forces the draw);
  **table shown** = until the table holds every bin's aggregated genes (the aggregation of
  100,489 circles runs in a worker thread: the library's share is given separately as
  "aggregate only", :meth:`SpotExpression.aggregate` of the same bins on a fresh cache).
  Targets: 2 s each. Then **select region** (*Select in region* on a 0.5 × 0.5 mm square,
  3,969 bins) until the table shows them (target 1 s), a **500 µm drawn spot dragged**
  with napari's select tool beside the bins (one mouse move + one table update, median of
  20 moves; target 50 ms, the live-table target of ``bench_live_spots.py``), and **save**
  (the debounced save, forced: the bins go to ``spot_bins.zarr.zip``).
- ``660k`` — a whole Visium HD capture area, 6.5 × 6.5 mm of 8 µm bins (813² = 660,969):
  **fill** (until drawn), **aggregate** (until the table holds every bin), **save**,
  **export** (the Export widget: every bin with 250 genes to ``.h5ad``), **reopen** (the
  slide opened again: the bins come back from the project). Target: fill + aggregate +
  export ≤ 30 s.
- ``memory`` — the viewer's storage of a bin: resident memory after a fill (drawn) minus
  before it, per bin, at 100k and at 660k, each in its own process with the table's
  aggregation held back (its chunk cache and per-circle memo are the library's and are
  not per-bin viewer storage); "flat" means the same bytes per bin at both sizes (ratio
  ≈ 1: nothing grows faster than the bins). The 660k phase also gives the export's peak
  beside the size of its own output matrix (n bins × 250 genes, float32).

Every row prints the measured seconds and ``target/x`` (the target divided by the time:
> 1 is within target). Timings vary with the machine's load; the library's aggregation is
measured separately so the viewer's share can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SLIDE_MM = 7.0
SLIDE_MPP = 1.0
MAP_MPP = 8.0
C = 64
G = 250
CHUNK = 128
BIN_UM = 8.0
TARGETS = {
    "fill 100k: layer shown": 2.0,
    "fill 100k: table shown": 2.0,
    "select region (3,969 bins): table": 1.0,
    "drag 500 µm spot: move + table": 0.05,
    "660k: fill + aggregate + export": 30.0,
}


# ---------------------------------------------------------------------------- data
def make_slide(folder: Path) -> Path:
    from napari_histoexpress.io.synthetic import write_ome_tiff

    n = round(SLIDE_MM * 1000 / SLIDE_MPP)
    rng = np.random.default_rng(0)
    coarse = rng.integers(150, 230, size=(n // 50 + 1, n // 50 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 50, axis=0), 50, axis=1)[:n, :n]
    path = folder / "hd_slide.ome.tif"
    write_ome_tiff(path, np.ascontiguousarray(image), SLIDE_MPP)
    return path


def make_store(folder: Path, slide: Path) -> Path:
    from napari_histoexpress.inference.map_store import DenseMapStore

    n_slide = round(SLIDE_MM * 1000 / SLIDE_MPP)
    size = int(np.ceil(n_slide * SLIDE_MPP / MAP_MPP))
    rng = np.random.default_rng(1)
    store = DenseMapStore.create(
        folder / "hd_map.zarr",
        map_shape=(size, size),
        feature_dim=C,
        genes=[f"gene_{i}" for i in range(G)],
        head_W=(rng.standard_normal((C, G)) / np.sqrt(C)).astype(np.float32),
        head_b=rng.standard_normal(G).astype(np.float32),
        map_mpp=MAP_MPP,
        chunk=CHUNK,
        dtype="float16",
        attrs={"slide": {"path": str(slide), "shape": [n_slide, n_slide], "mpp": SLIDE_MPP}},
    )
    store.write_all(rng.standard_normal((size, size, C), dtype=np.float32).astype(np.float16))
    store.set_status("complete")
    return store.path


# ---------------------------------------------------------------------------- helpers
def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The process's highest resident memory (MB) while inside the ``with`` block."""

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def wait(app: Any, done: Callable[[], bool], timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("waited too long")
        time.sleep(0.01)  # not a busy loop: the workers being timed need the CPU


def table_ready(widget: Any, n: int) -> Callable[[], bool]:
    return lambda: (
        len(widget.last_spots) == n
        and "computing" not in widget.selection_label.text()
        and bool(widget.table_rows())
    )


# ---------------------------------------------------------------------------- phases
def _viewer(folder: Path) -> tuple[Any, Any, Any, Any]:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_histoexpress.widgets import _common

    viewer = napari.Viewer(show=False)
    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    window.resize(1400, 1000)
    window.show()
    app = QApplication.instance()
    slide_path = folder / "hd_slide.ome.tif"
    layers = viewer.open(str(slide_path), plugin="napari-histoexpress")
    slide = next(layer for layer in layers if _common.is_slide_layer(layer))
    _common.set_slide_map(slide, folder / "hd_map.zarr")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-histoexpress", "Spots")
    wait(app, lambda: widget.slide_stats() is not None)  # computed once per map, first
    viewer.screenshot(canvas_only=True)  # the slide drawn once before anything is timed
    return viewer, app, slide, widget


def _draw_region(widget: Any, slide: Any, y0: float, x0: float, y1: float, x1: float) -> None:
    from napari_histoexpress.widgets import _common

    region = widget.region_layer(create=True)
    rect = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) / _common.slide_mpp(slide)
    region.selected_data = set()
    region.add(rect, shape_type="rectangle")
    region.selected_data = {len(region.data) - 1}
    widget.viewer.layers.selection.active = region


def _fill(app: Any, viewer: Any, widget: Any) -> tuple[Any, float]:
    """Click *Fill with grid*; the seconds until the bins layer is drawn."""
    t0 = time.perf_counter()
    widget.fill_button.click()
    app.processEvents()
    layer = widget.bins_layers()[-1]
    viewer.screenshot(canvas_only=True)  # forces a draw of the canvas (read back, not saved)
    return layer, time.perf_counter() - t0


def _save(widget: Any, slide: Any) -> float:
    """Seconds of one save of the slide's spots after its bins changed (the debounced save
    may have run already: a bins change is made and saved at once)."""
    from napari_histoexpress.widgets import _common

    key = widget.drawing.slide_key_of(slide)
    widget.flush_saves()
    widget.drawing.bins.changed(widget.bins_layers()[-1])  # as after a move or a deletion
    t0 = time.perf_counter()
    widget.saver.save(key)
    assert _common.alive(widget) and widget.saver.error is None, widget.saver.error
    return time.perf_counter() - t0


def phase_100k(folder: Path) -> dict[str, float]:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks

    from napari_histoexpress.inference.live_spots import SpotExpression
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.widgets import _spot_layer

    out: dict[str, float] = {}
    viewer, app, slide, widget = _viewer(folder)
    widget.preset_combo.setCurrentText("Visium HD 8 µm")
    _draw_region(widget, slide, 1000.0, 1000.0, 3528.0, 3528.0)
    t0 = time.perf_counter()
    bins, out["fill 100k: layer shown"] = _fill(app, viewer, widget)
    n = len(bins.data)
    out["n bins 100k"] = n
    wait(app, table_ready(widget, n))
    out["fill 100k: table shown"] = time.perf_counter() - t0
    spots = _spot_layer.bins_table(bins)
    t1 = time.perf_counter()
    SpotExpression(DenseMapStore.open(folder / "hd_map.zarr")).aggregate(spots)
    out["aggregate only 100k (library)"] = time.perf_counter() - t1

    # select a 0.5 mm square of bins: the table shows them
    _draw_region(widget, slide, 2000.0, 2000.0, 2504.0, 2504.0)
    viewer.layers.selection.active = bins
    viewer.layers.selection.active = widget.region_layer()
    t1 = time.perf_counter()
    widget.select_in_region()
    n_sel = len(bins.selected_data)
    out["n selected"] = n_sel
    wait(app, table_ready(widget, n_sel))
    out["select region (3,969 bins): table"] = time.perf_counter() - t1

    # drag a 500 µm drawn spot with napari's select tool, beside the bins
    layer = widget.spots_layer(create=True)
    widget.add_spot(5000.0, 5000.0, 500.0)
    viewer.layers.selection.active = layer
    layer.mode = "select"
    start = np.array([5010.0, 5005.0])
    ev = read_only_mouse_event(type="mouse_press", position=tuple(start))
    mouse_press_callbacks(layer, ev)
    wait(app, table_ready(widget, 1))
    times = []
    for k in range(1, 21):
        pos = start + np.array([0.0, 7.0 * k])
        ev = read_only_mouse_event(
            type="mouse_move", is_dragging=True, position=tuple(pos), pos=np.zeros(2)
        )
        t1 = time.perf_counter()
        mouse_move_callbacks(layer, ev)
        widget.update_table()  # what the throttled poke runs
        times.append(time.perf_counter() - t1)
    out["drag 500 µm spot: move + table"] = float(np.median(times))
    out["save 100k"] = _save(widget, slide)
    viewer.close()
    return out


def phase_660k(folder: Path) -> dict[str, float]:
    from napari_histoexpress import project
    from napari_histoexpress.inference.live_spots import SpotExpression
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.widgets import _common, _spot_layer

    out: dict[str, float] = {}
    viewer, app, slide, widget = _viewer(folder)
    widget.preset_combo.setCurrentText("Visium HD 8 µm")
    _draw_region(widget, slide, 250.0, 250.0, 6750.0, 6750.0)
    t0 = time.perf_counter()
    bins, out["660k: fill (layer shown)"] = _fill(app, viewer, widget)
    n = len(bins.data)
    out["n bins 660k"] = n
    wait(app, table_ready(widget, n))
    out["660k: aggregate (table shown)"] = (
        time.perf_counter() - t0 - out["660k: fill (layer shown)"]
    )
    out["660k: save"] = _save(widget, slide)
    out["660k: saved table MB"] = (
        project.spot_bins_path(_common.slide_path(slide)).stat().st_size / 1e6
    )

    _dock, export = viewer.window.add_plugin_dock_widget("napari-histoexpress", "Export")
    t1 = time.perf_counter()
    with PeakRSS() as peak:
        base = rss_mb()
        export.export_button.click()
        wait(app, lambda: export.last_result is not None and export._worker is None)
    out["660k: export .h5ad"] = time.perf_counter() - t1
    out["660k: export peak MB over start"] = peak.peak - base
    out["660k: export X MB (n × 250 float32)"] = n * G * 4 / 2**20
    out["660k: h5ad MB"] = Path(export.last_result.path).stat().st_size / 1e6
    out["660k: fill + aggregate + export"] = (
        out["660k: fill (layer shown)"] + out["660k: aggregate (table shown)"]
    ) + out["660k: export .h5ad"]
    spots = _spot_layer.bins_table(bins)
    t1 = time.perf_counter()
    SpotExpression(DenseMapStore.open(folder / "hd_map.zarr")).aggregate(spots)
    out["aggregate only 660k (library)"] = time.perf_counter() - t1

    # reopen: the slide again, its bins back from the project
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    t1 = time.perf_counter()
    viewer.open(str(folder / "hd_slide.ome.tif"), plugin="napari-histoexpress")
    wait(app, lambda: len(widget.bins_layers()) == 1)
    viewer.screenshot(canvas_only=True)
    out["660k: reopen (bins restored, drawn)"] = time.perf_counter() - t1
    viewer.close()
    return out


def phase_memory(folder: Path, label: str, side_um: float) -> dict[str, float]:
    """Resident memory per bin of a fill of a ``side_um`` square (table held back)."""
    viewer, app, slide, widget = _viewer(folder)
    widget.table_view.poke = lambda: None  # the library's caches are not viewer storage
    widget.preset_combo.setCurrentText("Visium HD 8 µm")
    _draw_region(widget, slide, 250.0, 250.0, 250.0 + side_um, 250.0 + side_um)
    app.processEvents()
    mem0 = rss_mb()
    bins, _ = _fill(app, viewer, widget)
    widget.flush_saves()
    app.processEvents()
    out = {f"bytes per bin {label}": (rss_mb() - mem0) * 2**20 / len(bins.data)}
    viewer.close()
    return out


# ---------------------------------------------------------------------------- main
def _run_phase(name: str, folder: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--phase", name, "--folder", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"phase {name} failed (exit {done.returncode})")
    result: dict[str, float] = json.loads(lines[-1][len("RESULT ") :])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-large", action="store_true", help="only the 100k phase")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--phase", choices=["100k", "660k", "mem100k", "mem660k"], help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        os.environ["HISTOEXPRESS_HOME"] = str(args.folder / "home")
        # each phase starts from a slide without saved spots
        shutil.rmtree(args.folder / "hd_slide.ome.tif.histoexpress", ignore_errors=True)
        phases: dict[str, Callable[[Path], dict[str, float]]] = {
            "100k": phase_100k,
            "660k": phase_660k,
            "mem100k": lambda f: phase_memory(f, "100k", 2528.0),
            "mem660k": lambda f: phase_memory(f, "660k", 6500.0),
        }
        print("RESULT " + json.dumps(phases[args.phase](args.folder)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="bench_spot_bins_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        slide = make_slide(folder)
        make_store(folder, slide)
        print(f"synthetic slide + map made in {time.perf_counter() - t0:.1f} s")
        results = _run_phase("100k", folder)
        results.update(_run_phase("mem100k", folder))
        if not args.skip_large:
            results.update(_run_phase("660k", folder))
            results.update(_run_phase("mem660k", folder))
    if "bytes per bin 660k" in results:
        results["memory per bin 660k / 100k"] = (
            results["bytes per bin 660k"] / results["bytes per bin 100k"]
        )

    print(f"\n{'measure':<44} {'value':>12} {'target':>8} {'target/x':>9}")
    for key, value in results.items():
        target = TARGETS.get(key)
        if target is None:
            print(f"{key:<44} {value:>12.3f}")
        else:
            print(f"{key:<44} {value:>11.3f}s {target:>7.2f}s {target / value:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
