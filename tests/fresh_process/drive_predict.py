"""Drive the Predict widget as a user does, in a fresh Python process (no pre-imports).

Run by ``tests/test_fresh_process.py`` as ``python drive_predict.py ORDER`` on the suite's
virtual X server. ``ORDER`` is ``sample-first`` (File ▸ Open Sample, then dock Predict from
the plugin manifest) or ``slide-first`` (open the slide file with the plugin's reader, then
dock). The viewer window is shown, so napari has made its OpenGL context (Mesa llvmpipe on
Xvfb) before the plugin first imports torch. Then: click *Bundled demo run*, click *Predict*,
wait for the background prediction, check the report, close, exit 0. Any crash ends the
process with a non-zero code (a segfault: -11/139); a failed check exits 1 with a reason.
"""

from __future__ import annotations

import sys
import time

PLUGIN = "napari-histoexpress"
PREDICT_COMMAND = f"{PLUGIN}.predict_widget"
TIMEOUT_S = 240.0


def fail(reason: str) -> None:
    print(f"FAIL: {reason}", flush=True)
    sys.exit(1)


def predict_display_name() -> str:
    """The Predict widget's display name, read from the plugin's manifest (as the menu does)."""
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    for contribution in manifest.contributions.widgets or []:
        if contribution.command == PREDICT_COMMAND:
            return contribution.display_name
    fail(f"no widget with command {PREDICT_COMMAND} in the manifest")
    raise AssertionError  # unreachable


def main(order: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    for name in ("torch", "timm", "torchvision", "triton"):
        if name in sys.modules:
            fail(f"{name} was imported before the viewer: the test would hide the crash")
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()

    def pump(seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    pump()  # the canvas draws: the GL context exists
    if order == "sample-first":
        viewer.open_sample(PLUGIN, "synthetic_tissue")
    elif order == "slide-first":
        from napari_histoexpress.io.synthetic import sample_paths

        viewer.open(str(sample_paths()["image"]), plugin=PLUGIN)
    else:
        fail(f"unknown order {order!r}")
    pump()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, predict_display_name())
    pump()
    widget.demo_button.click()
    if not widget.predict_button.isEnabled():
        fail(f"Predict is disabled: {widget.status_label.text()}")
    widget.predict_button.click()
    pump(0.5)
    if not widget.busy and widget.last_report is None:
        fail(f"the prediction did not start: {widget.status_label.text()}")
    deadline = time.monotonic() + TIMEOUT_S
    while widget.busy:
        if time.monotonic() > deadline:
            fail(f"the prediction did not finish in {TIMEOUT_S:.0f} s")
        pump(0.1)
    pump()
    report = widget.last_report
    if report is None or report.status != "complete":
        fail(f"no complete prediction: {widget.status_label.text()}")
    if "triton" in sys.modules and "torch" not in sys.modules:
        fail("unexpected import state")
    print(f"OK {order}: {report.summary()}", flush=True)
    viewer.close()
    pump()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sample-first")
