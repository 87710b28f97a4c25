"""Cohort files: slide lists (paths relative to the list, mpp, metadata, errors naming the
file and line), unique map names, the manifest's atomic round trip, the checksum shortcut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io.cohort_files import (
    MANIFEST_NAME,
    CohortSlide,
    assign_names,
    checksum_if_changed,
    file_checksum,
    read_manifest,
    read_slide_list,
    write_manifest,
)


def test_slide_list_paths_mpp_metadata_and_errors(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "list.csv"
    listing.write_text("slide,mpp,patient\na.svs,0.25,P1\n../b.tif,,P2\n/abs/c.ndpi,0.5,P3\n")
    got = read_slide_list(listing)
    assert [s.path for s in got] == [
        tmp_path / "sub" / "a.svs",
        tmp_path / "b.tif",
        Path("/abs/c.ndpi"),
    ]
    assert [s.mpp for s in got] == [0.25, None, 0.5]
    assert [s.metadata for s in got] == [{"patient": "P1"}, {"patient": "P2"}, {"patient": "P3"}]
    for text, match in [
        ("path,patient\na.svs,P1\n", "no 'slide' column"),
        ("slide,mpp\na.svs,-1\n", "line 2: mpp must be a positive"),
        ("slide\na.svs\nb.svs\na.svs\n", "line 4: a.svs is listed already on line 2"),
        ("slide,status\na.svs,x\n", "clash with the manifest"),
        ("slide\n", "no rows"),
    ]:
        listing.write_text(text)
        with pytest.raises(InputFileError, match=match) as info:
            read_slide_list(listing)
        assert str(listing) in str(info.value)


def test_unique_names_and_the_manifest_round_trip(tmp_path: Path) -> None:
    slides = [
        CohortSlide(Path("/a/C2.ome.tif")),
        CohortSlide(Path("/b/C2.tif")),
        CohortSlide(Path("/a/C3.jpg")),
    ]
    names = assign_names(slides)
    assert names[2] == "C3" and names[0].startswith("C2-") and names[1].startswith("C2-")
    assert len(set(names)) == 3
    rows = [
        {
            "name": "C2",
            "slide": "/a/C2.tif",
            "status": "complete",
            "mtime_ns": 1796302065230890261,
            "tiles": 12,
            "patient": "P1",
        }
    ]
    path = write_manifest(tmp_path / MANIFEST_NAME, rows)
    back = read_manifest(path)
    assert back[0]["mtime_ns"] == "1796302065230890261"  # ns integers are not floats
    assert back[0]["tiles"] == "12" and back[0]["patient"] == "P1" and back[0]["error"] == ""
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # no temporary left


def test_checksum_is_reused_only_while_size_and_mtime_match(tmp_path: Path) -> None:
    f = tmp_path / "s.tif"
    f.write_bytes(b"abc")
    checksum, size, mtime = checksum_if_changed(f, None)
    assert checksum == file_checksum(f) and size == 3
    recorded = {"checksum": "sha256:recorded", "size": size, "mtime_ns": mtime}
    assert checksum_if_changed(f, recorded)[0] == "sha256:recorded"
    os.utime(f, ns=(mtime + 10**9, mtime + 10**9))
    assert checksum_if_changed(f, recorded)[0] == checksum
