"""``histoexpress export heatmap``: the OME-TIFF from the command line, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from heatmap_toys import MAP_MPP, SLIDE_MPP, heatmap_store
from napari_histoexpress.cli import build_parser, main


def test_export_heatmap_writes_the_ome_tiff(tmp_path: Path, capsys) -> None:
    store = heatmap_store(tmp_path / "C2.zarr")
    out = tmp_path / "ERBB2.ome.tif"
    code = main(
        ["export", "heatmap", "--map", str(store.path), "--genes", "ERBB2", "KRT19",
         "--out", str(out)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"-> {out}" in captured.out and "ERBB2, KRT19: 2 channel(s)" in captured.out
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].shape == (2, *store.map_shape)
        assert len(tif.series[0].levels) == store.n_levels
        level0 = tif.series[0].levels[0].asarray()
    ref = np.moveaxis(np.asarray(store.gene_maps(["ERBB2", "KRT19"])), 2, 0)
    np.testing.assert_allclose(level0, np.nan_to_num(ref), rtol=1e-6, atol=1e-6)

    slide_out = tmp_path / "slide.ome.tiff"
    argv = ["export", "heatmap", "--map", str(store.path), "--genes", "her2", "--out",
            str(slide_out), "--match-slide", "--background", "nan", "--mask",
            "--tile-px", "512"]  # fmt: skip
    assert main(argv) == 0
    with tifffile.TiffFile(slide_out) as tif:
        assert tif.series[0].shape == (2, *store.slide_shape)
        assert (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (512, 512)
        x_res = tif.pages[0].tags["XResolution"].value
    assert 1e4 * x_res[1] / x_res[0] == pytest.approx(SLIDE_MPP) and MAP_MPP != SLIDE_MPP


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--genes", "ERBB3"], "ERBB3 (did you mean ERBB2?)"),
        (["--genes", "ERBB2", "--out-name", "x"], None),
    ],
)
def test_unknown_genes_name_close_matches(tmp_path: Path, capsys, extra, expected) -> None:
    store = heatmap_store(tmp_path / "C2.zarr")
    out = tmp_path / "h.ome.tif"
    argv = ["export", "heatmap", "--map", str(store.path), "--out", str(out), *extra]
    if expected is None:  # an unknown flag is argparse's usage error
        with pytest.raises(SystemExit):
            main(argv)
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_outputs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    store = heatmap_store(tmp_path / "C2.zarr")
    base = ["export", "heatmap", "--map", str(store.path), "--genes", "ERBB2", "--out"]
    assert main([*base, str(tmp_path / "h.tif")]) == 2
    assert "must end in .ome.tif or .ome.tiff" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "missing" / "h.ome.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "h.ome.tif"), "--tile-px", "100"]) == 2
    assert "--tile-px 100: TIFF tiles must be a multiple of 16" in capsys.readouterr().err
    assert main(["export", "heatmap", "--map", str(tmp_path / "no.zarr"), "--genes", "A",
                 "--out", str(tmp_path / "h.ome.tif")]) == 2  # fmt: skip
    assert "no dense-map store here" in capsys.readouterr().err
    assert list(tmp_path.glob("*.ome.tif")) == []


def test_export_is_a_group_of_formats(capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["export", "heatmap", "--map", "m.zarr", "--genes", "A", "--out", "a.ome.tif"]
    )
    assert args.command == "export" and args.export_format == "heatmap"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "heatmap", "--help"])
    text = capsys.readouterr().out
    assert "--match-slide" in text and "histoexpress export heatmap --map" in text
