"""Where a slide's project folder goes (issue 9, item 15), and setting aside a bad table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from napari_histoexpress import project


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(home))
    return home / "projects"


def test_shipped_sample_slide_gets_the_user_cache(_home: Path) -> None:
    from napari_histoexpress.io.synthetic import sample_paths

    slide = Path(sample_paths()["image"])
    assert project.in_installed_package(slide)
    folder = project.project_dir(slide)
    assert folder.parent == _home and folder.name.startswith(slide.name)
    assert project.spots_path(slide).parent == folder
    assert project.default_map_path(slide, "runs/demo", create=False).parent.parent == folder


def test_slide_inside_site_packages_gets_the_user_cache(
    tmp_path: Path, _home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "venv" / "lib" / "site-packages"
    slide = site / "somepkg" / "data" / "slide.tif"
    slide.parent.mkdir(parents=True)
    slide.write_bytes(b"")
    assert project.project_dir(slide).parent == slide.parent  # writable, not installed code
    monkeypatch.setattr(project, "installed_roots", lambda: (site,))
    folder = project.project_dir(slide, create=True)
    assert folder.parent == _home and folder.is_dir()
    assert not any(p.name.endswith(project.PROJECT_SUFFIX) for p in slide.parent.iterdir())
    # an old project folder left inside the package is not used any more
    (slide.parent / f"{slide.name}{project.PROJECT_SUFFIX}").mkdir()
    assert project.project_dir(slide) == folder


def test_writable_folder_keeps_the_project_beside_the_slide(tmp_path: Path) -> None:
    slide = tmp_path / "slides" / "a.tif"
    slide.parent.mkdir()
    slide.write_bytes(b"")
    assert not project.in_installed_package(slide)
    assert project.project_dir(slide) == slide.parent / f"a.tif{project.PROJECT_SUFFIX}"


def test_set_aside_spots_keeps_an_unreadable_table(tmp_path: Path) -> None:
    slide = tmp_path / "a.tif"
    slide.write_bytes(b"")
    assert project.set_aside_spots(slide) is None
    path = project.spots_path(slide)
    path.parent.mkdir()
    path.write_text("garbage", encoding="utf-8")
    kept = project.set_aside_spots(slide)
    assert kept is not None and kept.read_text(encoding="utf-8") == "garbage"
    assert not path.exists() and kept.name.startswith("spots.csv.unreadable-")
    path.write_text("more", encoding="utf-8")
    again = project.set_aside_spots(slide)
    assert again is not None and again != kept and again.exists() and kept.exists()
    spots = pd.DataFrame({"x_um": [1.0], "y_um": [2.0], "diameter_um": [3.0], "layer": ["g"]})
    project.save_spots(slide, spots)
    assert project.load_spots(slide)["layer"].tolist() == ["g"]
