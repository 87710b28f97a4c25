"""A slide's µm/px saved in its project folder, and the reader applying it on reopen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress import slide_settings
from napari_histoexpress.errors import InputFileError


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path / "home"))


@pytest.fixture
def plain_png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "slides" / "plain.png"
    path.parent.mkdir()
    Image.fromarray(np.full((96, 64, 3), 200, np.uint8)).save(path)
    return path


def test_save_and_load_round_trip(plain_png: Path) -> None:
    assert slide_settings.load_mpp(plain_png) is None
    where = slide_settings.save_mpp(plain_png, 0.688)
    assert where == plain_png.parent / "plain.png.histoexpress" / "slide.json"
    assert slide_settings.load_mpp(plain_png) == pytest.approx(0.688)
    # other keys of the file survive a later save
    data = json.loads(where.read_text())
    where.write_text(json.dumps({**data, "note": "kept"}))
    slide_settings.save_mpp(plain_png, 0.5)
    assert json.loads(where.read_text()) == {"microns_per_pixel": 0.5, "note": "kept"}
    assert not list(where.parent.glob(".slide.json.*"))  # no temp file left


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "abc", None])
def test_invalid_values_are_refused(plain_png: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="positive number"):
        slide_settings.save_mpp(plain_png, bad)  # type: ignore[arg-type]
    assert not slide_settings.settings_path(plain_png).exists()


def test_broken_settings_file_names_itself(plain_png: Path) -> None:
    path = slide_settings.save_mpp(plain_png, 0.5)
    path.write_text("{not json")
    with pytest.raises(InputFileError, match="cannot read the slide settings") as info:
        slide_settings.load_mpp(plain_png)
    assert info.value.path == str(path)
    path.write_text(json.dumps({"microns_per_pixel": -2}))
    with pytest.raises(InputFileError, match="positive number"):
        slide_settings.load_mpp(plain_png)


def test_reader_opens_the_slide_at_the_saved_mpp(plain_png: Path, recwarn: Any) -> None:
    from napari_histoexpress._reader import read

    ((_, kwargs, _),) = read(str(plain_png))
    assert kwargs["metadata"]["microns_per_pixel"] is None
    np.testing.assert_allclose(kwargs["scale"], [1, 1])
    assert any("µm/px is unknown" in str(w.message) for w in recwarn)
    recwarn.clear()

    slide_settings.save_mpp(plain_png, 0.688)
    ((_, kwargs, _),) = read(str(plain_png))
    np.testing.assert_allclose(kwargs["scale"], [0.688, 0.688])
    assert kwargs["metadata"]["microns_per_pixel"] == pytest.approx(0.688)
    assert kwargs["metadata"]["mpp_source"] == slide_settings.MPP_SOURCE
    assert not any("µm/px is unknown" in str(w.message) for w in recwarn)


def test_reader_ignores_a_broken_settings_file(
    plain_png: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from napari_histoexpress._reader import read

    slide_settings.save_mpp(plain_png, 0.5).write_text("[]")
    with pytest.warns(UserWarning, match="µm/px is unknown"):
        ((_, kwargs, _),) = read(str(plain_png))
    assert kwargs["metadata"]["microns_per_pixel"] is None
    assert "not a JSON object" in caplog.text
