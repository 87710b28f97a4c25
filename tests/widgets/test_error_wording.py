"""How the widgets word errors for a napari toast: the problem first, the file last."""

from __future__ import annotations

from napari_histoexpress.errors import InputFileError, MissingResolutionError, StoreMismatchError
from napari_histoexpress.widgets import _common
from napari_histoexpress.widgets._predict import mismatch_message

LONG = "/home/someone/projects/her2st/C2.jpg.histoexpress/maps/demo_run.zarr"


def test_input_file_errors_lead_with_the_problem() -> None:
    text = _common.describe(InputFileError(LONG, "gene 'XYZ' is not in the map"))
    assert text == f"Gene 'XYZ' is not in the map — {LONG}"
    assert _common.describe(KeyError("x")) == "KeyError: 'x'"
    assert _common.problem_first("µm/px unknown", "a.jpg") == "µm/px unknown — a.jpg"


def test_setting_hints_name_the_gui_not_python() -> None:
    exc = MissingResolutionError("/data/C2.jpg", "the slide's µm/px is unknown")
    text = _common.describe(exc)
    assert text.startswith("The slide's µm/px is unknown; type the slide's µm/px in")
    assert '"slide µm/px" field' in text and text.endswith("/data/C2.jpg")


def test_store_mismatch_in_gui_words() -> None:
    exc = StoreMismatchError(
        LONG,
        "cannot resume: the existing store differs in tile_px, halo_px; "
        "pass resume=False to replace it or choose another output path",
    )
    text = mismatch_message(exc)
    assert text.startswith("This slide's existing map for this run was made with other")
    assert "(other tile px, tile overlap)" in text and "tick Start over" in text
    assert "resume=" not in text and text.endswith(LONG)
