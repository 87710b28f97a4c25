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


def test_read_only_folder_sends_the_project_to_the_user_cache(tmp_path: Path, _home: Path) -> None:
    """A folder marked read-only (a shared data set) is not written, even by root, whom
    ``os.access`` always lets write."""
    slide = tmp_path / "shared" / "a.tif"
    slide.parent.mkdir()
    slide.write_bytes(b"")
    slide.parent.chmod(0o555)
    try:
        folder = project.project_dir(slide, create=True)
        assert folder.parent == _home and folder.is_dir()
        assert [p.name for p in slide.parent.iterdir()] == ["a.tif"]
    finally:
        slide.parent.chmod(0o755)


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


def _bins(n: int, start: int = 0, layer: str = "bins 8 µm") -> pd.DataFrame:
    import numpy as np

    return pd.DataFrame(
        {
            "id_number": np.arange(start, start + n, dtype=np.int64),
            "x_um": 8.0 * (np.arange(n) % 100),
            "y_um": 8.0 * (np.arange(n) // 100),
            "diameter_um": 8.0,
            "source": "grid",
            "layer": layer,
        }
    )


def test_bins_table_is_compact_and_loads_with_the_spots(tmp_path: Path) -> None:
    import numpy as np

    slide = tmp_path / "a.tif"
    slide.write_bytes(b"")
    drawn = pd.DataFrame(
        {"id": ["spot_0", "tumour"], "x_um": [1.0, 2.0], "y_um": [3.0, 4.0],
         "diameter_um": [55.0, 100.0], "source": ["drawn", "drawn"], "layer": ["d", "d"]}
    )  # fmt: skip
    project.save_spots(slide, drawn)
    # a project saved before bins existed: no bins table, loads as before
    assert not project.spot_bins_path(slide).exists()
    assert project.load_spots(slide)["id"].tolist() == ["spot_0", "tumour"]
    assert len(project.load_spot_bins(slide)) == 0
    bins = _bins(100_000, start=1)
    path = project.save_spot_bins(slide, bins)
    assert path == project.spot_bins_path(slide) and path.name == project.BINS_FILE
    assert path.stat().st_size < 500_000  # a CSV of these is ~4 MB
    # every spot, ids as text
    spots = project.load_spots(slide)
    assert len(spots) == 100_002 and spots["id"].is_unique
    assert spots["id"].iloc[2] == "spot_1" and spots["id"].iloc[-1] == "spot_100000"
    np.testing.assert_array_equal(spots["x_um"].iloc[2:], bins["x_um"])
    assert set(spots["layer"].iloc[2:]) == {"bins 8 µm"}
    assert len(project.load_spots(slide, bins=False)) == 2
    # as numbers (no text made), the same bins
    back = project.load_spot_bins(slide, ids=False)
    pd.testing.assert_frame_equal(back, bins, check_dtype=False)
    # ids given as text work too; an empty table removes the file
    project.save_spot_bins(slide, project.load_spot_bins(slide).iloc[:5])
    assert project.load_spot_bins(slide)["id"].tolist() == [f"spot_{i}" for i in range(1, 6)]
    assert project.save_spot_bins(slide, bins.iloc[:0]) is None and not path.exists()


def test_bad_bins_tables_are_refused(tmp_path: Path) -> None:
    from napari_histoexpress.errors import InputFileError

    slide = tmp_path / "a.tif"
    slide.write_bytes(b"")
    with pytest.raises(InputFileError, match="is not spot_<n>"):
        project.save_spot_bins(slide, _bins(3).drop(columns="id_number").assign(id="x"))
    with pytest.raises(InputFileError, match="more than once"):
        project.save_spot_bins(slide, _bins(3).assign(id_number=[1, 1, 2]))
    with pytest.raises(InputFileError, match="non-positive"):
        project.save_spot_bins(slide, _bins(3).assign(diameter_um=[8.0, 0.0, 8.0]))
    # a bins id held by the CSV too: loading both says so
    project.save_spot_bins(slide, _bins(3))
    project.save_spots(slide, pd.DataFrame({"id": ["spot_1"], "x_um": [1.0], "y_um": [1.0],
                                            "diameter_um": [5.0]}))  # fmt: skip
    with pytest.raises(InputFileError, match="more than once"):
        project.load_spots(slide)
    # an unreadable bins table: a clear error, and it can be set aside
    path = project.spot_bins_path(slide)
    path.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="cannot read"):
        project.load_spot_bins(slide)
    kept = project.set_aside_spots(slide, project.BINS_FILE)
    assert kept is not None and kept.name.startswith(f"{project.BINS_FILE}.unreadable-")
    assert len(project.load_spot_bins(slide)) == 0
