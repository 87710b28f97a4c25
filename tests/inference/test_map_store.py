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
    # never-predicted pixels (background and pending tiles) read as missing, not as 0
    level0 = store.features_level(0).compute()
    assert np.isnan(level0[:16, :32]).all() and np.isnan(level0[16:32, 16:]).all()
    assert not np.isnan(level0[16:32, :16]).any()
    assert np.isnan(store.gene_map("A").compute()[:16, :32]).all()
    store.set_tissue(np.eye(4, dtype=bool), downsample=32.0)
    np.testing.assert_array_equal(DenseMapStore.open(store.path).tissue, np.eye(4, dtype=bool))


def _reference_pool(values: np.ndarray) -> np.ndarray:
    """2x2 mean pool with ragged edges (the mean of the pixels that exist), numpy."""
    h, w = values.shape[:2]
    padded = np.full((h + h % 2, w + w % 2, *values.shape[2:]), np.nan)
    padded[:h, :w] = values
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, -1)
    return np.nanmean(blocks, axis=(1, 3))


def _half_predicted(tmp_path: Path, fill_value: float = 0.0) -> tuple:
    """A store whose tiles are computed, skipped as background or still pending."""
    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    store = DenseMapStore.create(
        tmp_path / "h.zarr", map_shape=(130, 50), feature_dim=4, genes=["A", "B", "C"],
        head_W=W, head_b=b, map_mpp=8.0, chunk=(6, 6), fill_value=fill_value,
    )  # fmt: skip
    feats = rng.normal(size=(130, 50, 4)).astype(np.float32) + 3.0
    rows, cols = store.tile_grid
    state = rng.integers(0, 3, size=(rows, cols))  # 0 pending, 1 computed, 2 background
    state[0, 0] = 1
    predicted = np.zeros((130, 50), bool)
    for r in range(rows):
        for c in range(cols):
            ys, xs = slice(6 * r, 6 * r + 6), slice(6 * c, 6 * c + 6)
            if state[r, c] == 1:
                store.write_tile(_At(6 * r, 6 * c), feats[ys, xs])
                store.mark_done((r, c))
                predicted[ys, xs] = True
    store.mark_background(state == 2)
    return store, feats, predicted, W, b


class _At:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x


@pytest.mark.parametrize("fill_value", [0.0, 0.5])
def test_unpredicted_pixels_are_missing_at_every_level(tmp_path: Path, fill_value) -> None:
    """Background and pending pixels are NaN at level 0 and pooled levels are means over
    the predicted pixels only (lazy and stored pyramid alike), whatever the fill value."""
    store, feats, predicted, W, b = _half_predicted(tmp_path, fill_value)
    assert store.n_levels == 3
    mask = predicted.astype(np.float64)[..., None]
    sums = np.where(predicted[..., None], feats, 0.0)
    refs, fracs = [np.where(predicted[..., None], feats, np.nan)], [mask[..., 0]]
    for _ in (1, 2):  # chained ragged pooling of the masked sums and of the mask
        sums, mask = _reference_pool(sums), _reference_pool(mask)
        with np.errstate(invalid="ignore"):
            refs.append(np.where(mask > 0, sums / mask, np.nan))
        fracs.append(mask[..., 0])
    # footprints (4 x 4 px at level 2) straddling computed and skipped 6 x 6 px tiles
    assert ((fracs[2] > 0) & (fracs[2] < 1)).any() and (fracs[2] == 0).any()
    for stage in ("lazy", "stored"):
        if stage == "stored":
            store.build_pyramid()
        for level in (0, 1, 2):
            np.testing.assert_allclose(
                store.predicted_fraction(level).compute(), fracs[level], atol=1e-6
            )
            got = store.features_level(level).compute()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(refs[level]))
            np.testing.assert_allclose(got, refs[level], rtol=1e-5, atol=1e-5)
        gene = store.gene_map("B", level=1).compute()
        np.testing.assert_allclose(gene, refs[1] @ W[:, 1] + b[1], rtol=1e-4, atol=1e-4)
        maps = store.gene_maps(["A", "C"], level=0).compute()
        np.testing.assert_array_equal(np.isnan(maps[..., 0]), ~predicted)
    ref0 = refs[0]
    window = store.read_features(slice(5, 30), slice(7, 50))
    np.testing.assert_allclose(window, ref0[5:30, 7:50], rtol=1e-6)
    assert window.dtype == np.float32


def test_gene_means_average_predicted_pixels_only(tmp_path: Path) -> None:
    """The slide-wide mean of each gene ignores background (what a tissue mean needs)."""
    store, feats, predicted, W, b = _half_predicted(tmp_path)
    want = feats[predicted].mean(axis=0) @ W + b
    # level 0 is exact; the coarsest level weighs pixels by their predicted share
    np.testing.assert_allclose(store.gene_means(level=0), want, rtol=1e-5)
    np.testing.assert_allclose(store.gene_means(), want, rtol=0.02)
    np.testing.assert_allclose(store.gene_means(["C"], level=0), want[2:], rtol=1e-5)
    # the same through the lazy maps, ignoring non-finite values
    nanmean = np.nanmean(store.gene_maps(store.genes, level=0).compute(), axis=(0, 1))
    np.testing.assert_allclose(nanmean, want, rtol=1e-5)
    # with every tile still pending nothing is predicted
    empty = DenseMapStore.create(
        tmp_path / "e.zarr", map_shape=(20, 20), feature_dim=4, genes=["A", "B", "C"],
        head_W=W, head_b=b, map_mpp=8.0, chunk=8,
    )  # fmt: skip
    assert np.isnan(empty.gene_means()).all()
    assert np.isnan(empty.gene_map("A").compute()).all()


def test_create_in_a_missing_or_file_folder_names_the_store(tmp_path: Path) -> None:
    """Missing parents are created; a file in the way is named, with no hidden temp name."""
    _store_at(tmp_path / "new" / "C2.zarr")
    assert (tmp_path / "new" / "C2.zarr").is_dir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "C2.zarr"
    with pytest.raises(InputFileError, match="cannot create the map store") as info:
        _store_at(out)
    assert str(out) in str(info.value) and ".tmp-" not in str(info.value)


def _store_at(path: Path) -> DenseMapStore:
    return DenseMapStore.create(
        path, map_shape=(8, 8), feature_dim=2, chunk=8, genes=["A"],
        head_W=np.ones((2, 1), np.float32), head_b=np.zeros(1, np.float32), map_mpp=4.0,
    )  # fmt: skip
