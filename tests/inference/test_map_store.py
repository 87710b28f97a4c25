"""The dense-map zarr store: tiles, done mask, lazy gene maps, pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.inference.map_store import DenseMapStore


def _store(tmp_path: Path, shape=(37, 53), c=4, g=3, chunk=16, dtype="float32"):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(c, g)).astype(np.float32)
    b = rng.normal(size=g).astype(np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=c, genes=["A", "B", "C"][:g],
        head_W=W, head_b=b, map_mpp=8.0, attrs={"model_mpp": 2.0, "stride": 4}, chunk=chunk,
        dtype=dtype,
    )  # fmt: skip
    feats = rng.normal(size=(*shape, c)).astype(np.float32)
    return store, feats, W, b


def _fill(store: DenseMapStore, feats: np.ndarray) -> None:
    store.write_all(feats)


def test_create_write_and_reopen(tmp_path: Path) -> None:
    store, feats, W, _b = _store(tmp_path)
    assert store.status == "partial" and store.tile_grid == (3, 4) and store.chunk == (16, 16)
    assert not store.done_mask.any()
    with pytest.raises(ValueError, match="cover the map"):
        store.write_all(feats[:-1])
    _fill(store, feats)
    store.set_status("complete")
    ro = DenseMapStore.open(tmp_path / "m.zarr")
    assert ro.status == "complete" and ro.done_mask.all() and (ro.coverage == 1).all()
    assert ro.is_done(5) and ro.is_done((2, 3))
    assert ro.genes == ["A", "B", "C"] and ro.map_mpp == 8.0 and ro.attrs["stride"] == 4
    np.testing.assert_array_equal(ro.features_level(0).compute(), feats)
    np.testing.assert_array_equal(ro.read_features(slice(5, 30), slice(3, 40)), feats[5:30, 3:40])
    np.testing.assert_array_equal(ro.head[0], W)
    with pytest.raises(Exception):  # noqa: B017 - read-only store refuses writes (zarr error)
        ro.mark_done(0)
    # no temp directory left next to the store
    assert [p.name for p in tmp_path.iterdir()] == ["m.zarr"]


def test_create_refuses_existing_and_open_checks(tmp_path: Path) -> None:
    _store(tmp_path)
    with pytest.raises(FileExistsError):
        _store(tmp_path)
    with pytest.raises(InputFileError, match="not a directory"):
        DenseMapStore.open(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputFileError):
        DenseMapStore.open(tmp_path / "plain")


def test_gene_map_is_features_dot_head(tmp_path: Path) -> None:
    store, feats, W, b = _store(tmp_path)
    _fill(store, feats)
    for g, name in enumerate(store.genes):
        expected = feats @ W[:, g] + b[g]
        np.testing.assert_allclose(store.gene_map(name).compute(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(store.gene_map(g).compute(), expected, rtol=1e-5, atol=1e-5)
    many = store.gene_maps(["C", "A"]).compute()
    np.testing.assert_allclose(many, feats @ W[:, [2, 0]] + b[[2, 0]], rtol=1e-5, atol=1e-5)
    # lazy: one output chunk per feature chunk, nothing computed up front
    assert store.gene_map("A").chunks == ((16, 16, 5), (16, 16, 16, 5))
    with pytest.raises(KeyError, match="not in this map"):
        store.gene_map("ZZZ")


def _pool(x: np.ndarray) -> np.ndarray:
    """Reference 2x2 mean pool with ragged edges."""
    h, w = x.shape[:2]
    out = np.zeros((-(-h // 2), -(-w // 2), x.shape[2]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1, x.shape[2]).mean(0)
    return out


def test_pyramid_levels_are_mean_pooled(tmp_path: Path) -> None:
    store, feats, W, b = _store(tmp_path, shape=(150, 97), chunk=16)
    _fill(store, feats)
    assert store.n_levels == 3  # 150x97 -> 75x49 -> 38x25 (< 64)
    lazy = [np.asarray(store.features_level(k).compute()) for k in range(3)]
    ref1 = _pool(feats)
    ref2 = _pool(ref1)
    np.testing.assert_allclose(lazy[1], ref1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy[2], ref2, rtol=1e-5, atol=1e-6)
    assert store.build_pyramid() == 2
    stored = [np.asarray(lvl.compute()) for lvl in store.feature_pyramid()]
    np.testing.assert_allclose(stored[1], ref1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored[2], ref2, rtol=1e-5, atol=1e-6)
    assert "pyramid/2" in store._group
    # gene maps at coarse levels use the pooled features (the head is linear)
    np.testing.assert_allclose(
        store.gene_map("B", level=1).compute(), ref1 @ W[:, 1] + b[1], rtol=1e-4, atol=1e-4
    )


def test_background_and_fill_value(tmp_path: Path) -> None:
    store, _feats, _, _ = _store(tmp_path, dtype="float16")
    bg = np.zeros(store.tile_grid, bool)
    bg[0, :2] = True
    store.mark_background(bg)
    assert store.is_done((0, 1)) and not store.is_done((1, 1))
    assert store.coverage[0, 0] == 2 and store.coverage[1, 0] == 0
    store.mark_done((1, 0))
    assert store.coverage[1, 0] == 1
    assert store.features_level(0).dtype == np.float16
    assert float(np.abs(store.features_level(0)[:16, :32].compute()).max()) == 0.0
    store.set_tissue(np.eye(4, dtype=bool), downsample=32.0)
    np.testing.assert_array_equal(DenseMapStore.open(store.path).tissue, np.eye(4, dtype=bool))
