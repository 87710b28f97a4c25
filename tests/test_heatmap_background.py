"""Skipped background is transparent in a gene heatmap drawn by a real napari viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_background_tiles_are_transparent_in_the_heatmap(make_napari_viewer, tmp_path) -> None:
    """The right half of the map is background skipped by tissue detection: the heatmap
    must let the slide show through there (NaN, drawn transparent), not paint the bias."""
    from napari.layers import Layer
    from qtpy.QtCore import Qt

    from napari_histoexpress import gene_heatmap_layer_data

    store = _half_background_store(tmp_path)
    data, kwargs, _ = gene_heatmap_layer_data(store, "ERBB2")
    assert kwargs["multiscale"] and len(data) == store.n_levels
    for level, arr in enumerate(data):  # every level: left half values, right half missing
        values = np.asarray(arr)
        half = values.shape[1] // 2
        assert np.isfinite(values[:, :half]).all(), level
        assert np.isnan(values[:, half + 1 :]).all(), level
    lo, hi = kwargs["contrast_limits"]
    assert 1.0 <= lo < hi <= 3.0  # from predicted pixels only, not pulled to the bias (-5)

    viewer = make_napari_viewer(show=False)
    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    window.show()
    green = np.zeros((128, 128, 3), np.uint8)
    green[..., 1] = 200
    viewer.add_image(green, rgb=True, scale=(8.0, 8.0), translate=(3.75, 3.75))
    viewer.add_layer(Layer.create(data, {**kwargs, "opacity": 1.0}, "image"))
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    # the map fills the canvas width minus the canvas's own background at the edges
    h, w = shot.shape[:2]
    row = h // 2
    map_cols = [c for c in range(w) if not (shot[row, c] == shot[0, 0]).all()]
    x0, x1 = min(map_cols), max(map_cols)
    on_tissue = shot[row, x0 + (x1 - x0) // 4]
    on_background = shot[row, x0 + 3 * (x1 - x0) // 4]
    np.testing.assert_array_equal(on_background, [0, 200, 0])  # the slide shows through
    assert not np.array_equal(on_tissue, [0, 200, 0])  # the heatmap is drawn on tissue


def test_heatmap_of_a_gene_added_to_the_map(tmp_path: Path) -> None:
    """A gene added after prediction gets a heatmap like the others (the store's per-chunk
    head), background still missing, contrast limits from its own values."""
    from napari_histoexpress import gene_heatmap_layer_data

    store = _half_background_store(tmp_path)
    store.add_genes(["ZS"], -np.ones(1), 1.0, source="zero-shot")  # values -7..-6
    data, kwargs, _ = gene_heatmap_layer_data(store, "ZS")
    level0 = np.asarray(data[0])
    assert np.isnan(level0[:, 65:]).all() and np.isfinite(level0[:, :64]).all()
    np.testing.assert_allclose(level0[:, :64], 1.0 - np.asarray(store.features_level(0))[:, :64, 0])
    lo, hi = kwargs["contrast_limits"]
    assert -7.0 <= lo < hi <= -6.0 and kwargs["name"] == "ZS"


def _half_background_store(tmp_path: Path):
    from napari_histoexpress.inference.map_store import DenseMapStore

    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=(128, 128), feature_dim=1, genes=["ERBB2"],
        head_W=np.ones((1, 1), np.float32), head_b=np.array([-5.0], np.float32), map_mpp=8.0,
        chunk=32, attrs={"slide": {"path": "s.tif", "shape": [2048, 2048], "mpp": 0.5}},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    feats = (7.0 + rng.uniform(0, 1, size=(128, 64, 1))).astype(np.float32)  # values 2..3
    background = np.zeros(store.tile_grid, bool)
    background[:, 2:] = True
    for r in range(4):
        for c in range(2):
            store.write_tile(_At(32 * r, 32 * c), feats[32 * r : 32 * r + 32, 32 * c : 32 * c + 32])
            store.mark_done((r, c))
    store.mark_background(background)
    store.build_pyramid()
    store.set_status("complete")
    return store


class _At:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x
