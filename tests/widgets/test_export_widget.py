"""Export widget: a real viewer, the sample slide with its predicted map, drawn + grid spots."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_histoexpress import project
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_export import CSV_FIXED_COLUMNS
from napari_histoexpress.inference.spots import predict_circles
from napari_histoexpress.io import spatial
from napari_histoexpress.widgets import _common, _export, _spot_layer
from napari_histoexpress.widgets._export import ExportWidget

pytestmark = pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter`:FutureWarning")

SPOTS = pd.DataFrame(
    {
        "id": ["d0", "d1", "g0", "g1", "g2"],
        "x_um": [300.0, 700.5, 400.0, 1000.0, 1200.0],
        "y_um": [300.0, 1100.0, 800.0, 450.0, 1000.0],
        "diameter_um": [55.0, 120.0, 55.0, 55.0, 55.0],
        "source": ["drawn", "drawn", "grid", "grid", "grid"],
    }
)


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Notifications the widget shows (errors, infos, warnings), by kind."""
    seen: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(_export, "notify_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(_export, "notify_info", lambda m: seen["info"].append(str(m)))
    monkeypatch.setattr(_export, "notify_warning", lambda m: seen["warning"].append(str(m)))
    return seen


def _open_slide(viewer, path: Path):
    (layer,) = [
        lay
        for lay in viewer.open(str(path), plugin="napari-histoexpress")
        if _common.is_slide_layer(lay)
    ]
    return layer


def _add_spots(viewer, slide_layer, spots: pd.DataFrame = SPOTS):
    mpp = _common.slide_mpp(slide_layer)
    return viewer._add_layer_from_data(
        *_spot_layer.spots_layer_data(spots, slide_name=slide_layer.name, mpp=mpp)
    )[0]


def _genes(store: Path) -> list[str]:
    return DenseMapStore.open(store).genes


def _run(qtbot, widget: ExportWidget, notes: dict[str, list[str]]) -> None:
    n_before = len(notes["info"]) + len(notes["error"])
    widget.export_button.click()
    qtbot.waitUntil(
        lambda: len(notes["info"]) + len(notes["error"]) > n_before and widget._worker is None,
        timeout=60_000,
    )


def test_export_h5ad_round_trip_and_scanpy_plot(
    make_napari_viewer, qtbot, notes, slide_copy: Path, sample_map: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    from matplotlib.collections import PatchCollection

    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    assert "No slide open" in widget.status.text()
    slide = _open_slide(viewer, slide_copy)
    assert widget.slide_layer is slide and "no predicted map" in widget.status.text()
    _common.set_slide_map(slide, sample_map)
    assert "No spots" in widget.status.text()
    spots_layer = _add_spots(viewer, slide)
    assert widget.status.text().startswith("5 spot(s) in 1 layer(s)")

    out = project.project_dir(slide_copy) / "spots.h5ad"
    assert Path(widget.path_edit.text()) == out
    _run(qtbot, widget, notes)
    assert notes["error"] == [] and notes["warning"] == []
    assert notes["info"] == [f"Exported 5 spots × {len(_genes(sample_map))} genes to {out}"]
    assert out.is_file() and widget.last_result.path == out

    adata = sc.read_h5ad(out)
    table = _spot_layer.spots_table(spots_layer)
    ref = predict_circles(sample_map, table)
    assert list(adata.obs_names) == SPOTS["id"].tolist() and list(adata.var_names) == _genes(
        sample_map
    )
    np.testing.assert_array_equal(adata.X, ref.X)
    assert np.isfinite(adata.X).all()
    mpp = _common.slide_mpp(slide)
    np.testing.assert_allclose(adata.obsm["spatial"], SPOTS[["x_um", "y_um"]] / mpp, atol=1e-6)
    np.testing.assert_allclose(adata.obs["diameter_um"], SPOTS["diameter_um"], rtol=1e-9)
    _, lib = spatial.library(adata)
    assert lib["metadata"]["source_image_path"] == str(slide_copy)
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(55.0 / mpp)
    assert adata.uns["histoexpress"]["map_store"] == str(sample_map)

    scalef = lib["scalefactors"]["tissue_hires_scalef"]
    try:
        ax = sc.pl.spatial(adata, color="ERBB2", show=False)[0]
        (coll,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
        centres = np.array([p.vertices.min(0) + p.vertices.max(0) for p in coll.get_paths()]) / 2
        want = adata.obsm["spatial"] * scalef
        np.testing.assert_allclose(
            centres[np.lexsort(centres.T[::-1])], want[np.lexsort(want.T[::-1])], atol=1e-6
        )
        h, w = lib["images"]["hires"].shape[:2]
        np.testing.assert_allclose(ax.get_images()[0].get_extent(), (-0.5, w - 0.5, h - 0.5, -0.5))
    finally:
        plt.close("all")


def test_export_csv_of_grid_spots_to_a_browsed_file(
    make_napari_viewer, qtbot, notes, slide_copy: Path, sample_map: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    viewer = make_napari_viewer()
    slide = _open_slide(viewer, slide_copy)
    _common.set_slide_map(slide, sample_map)
    _add_spots(viewer, slide, SPOTS.iloc[:3])
    _add_spots(viewer, slide, SPOTS.iloc[2:]).name = "more spots"  # g0 in both layers
    widget = ExportWidget(viewer)
    widget.spots_combo.setCurrentText("Grid spots only")
    assert widget.status.text().startswith("4 spot(s) in 2 layer(s)")
    widget.format_combo.setCurrentText(".csv")
    assert Path(widget.path_edit.text()) == project.project_dir(slide_copy) / (
        "spots_expression.csv"
    )
    chosen = tmp_path / "exports" / "grid"
    chosen.parent.mkdir()
    monkeypatch.setattr(
        _export.QFileDialog, "getSaveFileName", lambda *a, **k: (str(chosen), "CSV table (*.csv)")
    )
    widget.browse_button.click()
    assert widget.path_edit.text() == str(chosen) + ".csv"
    _run(qtbot, widget, notes)
    assert notes["error"] == []
    df = pd.read_csv(str(chosen) + ".csv", dtype={"id": str})
    assert list(df.columns) == [*CSV_FIXED_COLUMNS, *_genes(sample_map)]
    assert df["id"].tolist() == ["g0", "more spots:g0", "more spots:g1", "more spots:g2"]
    assert set(df["source"]) == {"grid"}
    ref = predict_circles(sample_map, SPOTS.iloc[[2, 2, 3, 4]].assign(id=df["id"].tolist()))
    np.testing.assert_allclose(df[_genes(sample_map)].to_numpy(), ref.X, rtol=1e-5, atol=1e-6)
    assert notes["info"] == [f"Exported 4 spots × {len(_genes(sample_map))} genes to {chosen}.csv"]


def test_user_errors_are_notified(
    make_napari_viewer, qtbot, notes, slide_copy: Path, sample_map: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    widget.export_button.click()
    assert "no slide layer" in notes["error"][-1]
    slide = _open_slide(viewer, slide_copy)
    widget.export_button.click()
    assert "has no predicted map" in notes["error"][-1] and slide.name in notes["error"][-1]
    _common.set_slide_map(slide, sample_map)
    widget.export_button.click()
    assert "no spots" in notes["error"][-1]
    _add_spots(viewer, slide, SPOTS[SPOTS.source == "drawn"])
    widget.spots_combo.setCurrentText("Grid spots only")
    widget.export_button.click()
    assert "no spots" in notes["error"][-1] and "grid" in notes["error"][-1]
    widget.spots_combo.setCurrentText("All spots (drawn + grid)")
    # the project's own spots table is never overwritten
    widget.path_edit.setText(str(project.spots_path(slide_copy)))
    widget.export_button.click()
    assert "saved spots table" in notes["error"][-1]
    # a missing (or unwritable) folder: reported from the worker, nothing written
    bad = tmp_path / "no_such_folder" / "out.h5ad"
    widget.path_edit.setText(str(bad))
    _run(qtbot, widget, notes)
    assert str(bad) in notes["error"][-1] and "does not exist" in notes["error"][-1]
    assert notes["info"] == [] and not bad.parent.exists()
    assert "Export failed" in widget.status.text() and widget.export_button.isEnabled()
    assert len(notes["error"]) == 6
    # the slide file went away: exported without image, the user is warned
    slide_copy.rename(slide_copy.with_name("moved.ome.tif"))
    out = tmp_path / "no_image.h5ad"
    widget.path_edit.setText(str(out))
    _run(qtbot, widget, notes)
    assert len(notes["error"]) == 6 and notes["info"][-1].endswith(str(out))
    (warning,) = notes["warning"]
    assert str(slide_copy) in warning and "without image" in warning
    assert "without image" in widget.status.text()
    adata = ad.read_h5ad(out)
    assert not spatial.library(adata)[1].get("images")
    assert list(adata.uns["histoexpress"]["warnings"]) == [warning]


def test_slide_list_follows_the_viewer(
    make_napari_viewer, notes, slide_copy: Path, sample_map: Path
) -> None:
    viewer = make_napari_viewer()
    widget = ExportWidget(viewer)
    assert widget.slide_combo.count() == 0 and widget.path_edit.text() == ""
    slide = _open_slide(viewer, slide_copy)
    assert widget.slide_combo.count() == 1 and widget.slide_combo.currentText() == slide.name
    _common.set_slide_map(slide, sample_map)
    layer = _add_spots(viewer, slide)
    assert widget.status.text().startswith("5 spot(s)")
    layer.data = layer.data[:2]
    assert widget.status.text().startswith("2 spot(s)")
    viewer.layers.remove(slide)
    assert widget.slide_combo.count() == 0 and "No slide open" in widget.status.text()
