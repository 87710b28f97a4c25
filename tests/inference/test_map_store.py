"""The dense-map zarr store: tiles, done mask, lazy gene maps, pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.inference.map_store import DenseMapStore, GeneSource, Normalisation


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


# ---------------------------------------------------------------- the store owns its head
def _finished(tmp_path: Path) -> tuple[DenseMapStore, np.ndarray, np.ndarray, np.ndarray]:
    store, feats, W, b = _store(tmp_path, shape=(150, 97))  # 3 levels
    _fill(store, feats)
    store.build_pyramid()
    store.set_status("complete")
    return store, feats, W, b


def test_apply_head_mean_sum_subsets_and_nan_rows(tmp_path: Path) -> None:
    store, _feats, W, b = _store(tmp_path)
    rng = np.random.default_rng(5)
    pooled = rng.normal(size=(6, 4))
    pooled[2] = np.nan  # a circle off the map
    area = rng.uniform(1, 50, 6)
    W64, b64 = W.astype(np.float64), b.astype(np.float64)
    got = store.apply_head(pooled)
    assert got.dtype == np.float64 and got.shape == (6, 3)
    np.testing.assert_array_equal(got[[0, 1, 3, 4, 5]], (pooled @ W64 + b64)[[0, 1, 3, 4, 5]])
    assert np.isnan(got[2]).all()
    summed = store.apply_head(pooled, area=area, reduce="sum")
    np.testing.assert_allclose(summed[0], pooled[0] @ W64 + area[0] * b64)
    assert np.isnan(summed[2]).all()
    sub = store.apply_head(pooled, genes=["C", 0])
    np.testing.assert_array_equal(sub[0], (pooled[0] @ W64 + b64)[[2, 0]])
    np.testing.assert_allclose(store.apply_head(pooled[0]), got[0], rtol=1e-12)  # (C,) -> (G,)
    with pytest.raises(ValueError, match="reduce"):
        store.apply_head(pooled, reduce="max")
    with pytest.raises(ValueError, match="area"):
        store.apply_head(pooled, reduce="sum")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        store.apply_head(pooled[:, :3])
    with pytest.raises(KeyError, match="not in this map"):
        store.apply_head(pooled, genes=["ZZZ"])


def test_head_block_is_the_lazy_maps_per_chunk_head(tmp_path: Path) -> None:
    store, feats, _W, _b = _finished(tmp_path)
    level1 = np.asarray(store.features_level(1).compute())
    # float32 like the lazy maps (equal up to the BLAS rounding of another block shape)
    for level, block in ((0, feats), (1, level1)):
        one = store.head_block(block, "B")
        assert one.dtype == np.float32 and one.shape == block.shape[:2]
        np.testing.assert_allclose(one, store.gene_map("B", level), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            store.head_block(block, ["C", "A"]),
            store.gene_maps(["C", "A"], level),
            rtol=1e-6,
            atol=1e-6,
        )
    ch, cw = store.chunk  # one chunk: the very computation of the lazy map's chunk
    np.testing.assert_array_equal(
        store.head_block(feats[:ch, :cw], "B"), store.gene_map("B")[:ch, :cw]
    )
    assert store.head_block(feats[:2, :2]).shape == (2, 2, 3)
    nan = np.full((1, 4), np.nan, np.float32)
    assert np.isnan(store.head_block(nan, 0)).all()


def test_add_genes_to_a_finished_store(tmp_path: Path) -> None:
    store, feats, W, _b = _finished(tmp_path)
    before = {g: np.asarray(store.gene_map(g).compute()) for g in store.genes}
    files = sorted((tmp_path / "m.zarr" / "features").rglob("*"))
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in files}
    viewer = DenseMapStore.open(tmp_path / "m.zarr")  # another reader, opened before
    assert viewer.genes == ["A", "B", "C"]

    rng = np.random.default_rng(9)
    w_new = rng.normal(size=(4, 2)).astype(np.float32)
    b_new = np.array([0.5, -1.0], np.float32)
    store.add_genes(["ZS1", "ZS2"], w_new, b_new, source="zero-shot", encoder="text-enc-v1")

    assert store.genes == ["A", "B", "C", "ZS1", "ZS2"]
    np.testing.assert_allclose(
        store.gene_map("ZS2").compute(), feats @ w_new[:, 1] + b_new[1], rtol=1e-5, atol=1e-5
    )
    for g, ref in before.items():  # the other genes are unchanged, bit for bit
        np.testing.assert_array_equal(store.gene_map(g).compute(), ref)
    # the features were never touched (same files, same bytes, same times)
    assert sorted((tmp_path / "m.zarr" / "features").rglob("*")) == files
    for p in files:
        assert (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") == stamp[p]
    # every reader sees the new genes at once: apply_head, gene means, another instance
    pooled = feats[:3, 0].astype(np.float64)
    np.testing.assert_allclose(store.apply_head(pooled)[:, 3:], pooled @ w_new + b_new, rtol=1e-6)
    assert store.gene_means().shape == (5,)
    assert viewer.genes == store.genes
    np.testing.assert_array_equal(viewer.head_block(feats, "ZS1"), store.head_block(feats, "ZS1"))
    sources = store.gene_sources
    assert [(s.symbol, s.source) for s in sources] == [
        ("A", "model"), ("B", "model"), ("C", "model"),
        ("ZS1", "zero-shot"), ("ZS2", "zero-shot"),
    ]  # fmt: skip
    assert sources[3].encoder == "text-enc-v1" and sources[3].time
    # reopened: still there; the superseded head arrays are gone
    ro = DenseMapStore.open(tmp_path / "m.zarr")
    assert ro.genes == store.genes and ro.status == "complete"
    np.testing.assert_array_equal(ro.head[0][:, :3], W)
    np.testing.assert_array_equal(ro.head[1][3:], b_new)
    assert "head/W" not in ro._group and ro.attrs["head_arrays"] == "head/v1"
    # a status write by a stale writer keeps the new genes (attrs are re-read first)
    store.set_status("complete")
    assert DenseMapStore.open(tmp_path / "m.zarr").genes == store.genes


def test_add_genes_refuses_bad_inputs_and_replaces_on_request(tmp_path: Path) -> None:
    store, feats, _W, _b = _finished(tmp_path)
    w = np.ones((4, 1), np.float32)
    name = str(store.path)
    with pytest.raises(ValueError, match="already in this map") as info:
        store.add_genes(["B"], w, [0.0], source="zero-shot")
    assert name in str(info.value)
    bad: list[tuple[object, object, object, str]] = [
        (["N1"], np.ones((3, 1)), [0.0], "must be"),  # wrong feature count
        (["N1", "N2"], np.ones((4, 1)), [0.0], "must be"),  # too few columns
        (["N1"], w, [0.0, 1.0], "must be"),  # b too long
        (["N1"], np.full((4, 1), np.nan), [0.0], "finite"),
        (["N1"], w, [np.inf], "finite"),
        (["N1"], np.full((4, 1), 1e39), [0.0], "finite"),  # overflows float32
        (["N1", "N1"], np.ones((4, 2)), [0.0, 0.0], "more than once"),
        ([], np.ones((4, 0)), [], "no gene"),
        ([""], w, [0.0], "non-empty"),
    ]
    for symbols, W_, b_, match in bad:
        with pytest.raises(ValueError, match=match) as info:
            store.add_genes(symbols, W_, b_, source="zero-shot")  # type: ignore[arg-type]
        assert name in str(info.value)
    with pytest.raises(ValueError, match="source"):
        store.add_genes(["N1"], w, [0.0], source="")
    with pytest.raises(ValueError, match="read-only"):
        DenseMapStore.open(store.path).add_genes(["N1"], w, [0.0], source="zero-shot")
    assert store.genes == ["A", "B", "C"] and "head_arrays" not in store.attrs
    # one gene may be a vector and a scalar; replace=True overwrites a column in place
    store.add_genes("N1", np.arange(4.0), 2.0, source="zero-shot")
    store.add_genes(["B"], 2 * w, [1.0], source="manual", replace=True)
    assert store.genes == ["A", "B", "C", "N1"]
    np.testing.assert_allclose(
        store.gene_map("B").compute(), feats.sum(axis=2) * 2 + 1.0, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        store.gene_map("N1").compute(), feats @ np.arange(4.0) + 2.0, rtol=1e-5, atol=1e-5
    )
    assert store.gene_sources[1].source == "manual"
    assert list(store._group["head"].group_keys()) == ["v2"]  # only the current head kept


def test_a_crash_before_the_commit_leaves_the_old_head(tmp_path: Path) -> None:
    """New head arrays written but the attrs never switched: readers keep the old head, and
    the next add_genes cleans the orphan up."""
    store, _feats, W, _b = _finished(tmp_path)
    orphan = store._group.create_array("head/v1/W", shape=(4, 9), dtype=np.float32)
    orphan[...] = 7.0
    ro = DenseMapStore.open(store.path)
    assert ro.genes == ["A", "B", "C"]
    np.testing.assert_array_equal(ro.head[0], W)
    store.add_genes(["N1"], np.ones(4), 0.0, source="zero-shot")
    assert store.attrs["head_arrays"] == "head/v2"
    assert list(store._group["head"].group_keys()) == ["v2"]
    np.testing.assert_array_equal(DenseMapStore.open(store.path).head[0][:, :3], W)


def test_typed_metadata_new_and_old_stores(tmp_path: Path) -> None:
    prov = {"model": "pixnet", "created": "2024-01-02T03:04:05+00:00", "target_sum": 1e4}
    store = DenseMapStore.create(
        tmp_path / "a.zarr", map_shape=(8, 8), feature_dim=2, chunk=8, genes=["A"],
        head_W=np.ones((2, 1)), head_b=np.zeros(1), map_mpp=4.0,
        attrs={"stride": 4, "model_mpp": None, "provenance": prov,
               "slide": {"path": "/d/s.tif", "shape": [64, 48], "mpp": 0.25}},
    )  # fmt: skip
    assert store.slide_mpp == 0.25 and store.map_mpp == 4.0
    assert store.model_mpp == 1.0  # native resolution: map_mpp / stride
    assert store.slide_path == "/d/s.tif" and store.slide_shape == (64, 48)
    assert store.provenance == prov
    assert store.normalisation == Normalisation(target_sum=1e4)  # old record: target_sum only
    assert store.gene_sources == [GeneSource("A", "model", None, prov["created"])]
    # stores of today's runs record the training normalisation (provenance or attribute)
    norm = {"target_sum": 1e6, "transform": "log1p", "description": "per million"}
    with_norm = DenseMapStore.create(
        tmp_path / "b.zarr", map_shape=(8, 8), feature_dim=2, chunk=8, genes=["A"],
        head_W=np.ones((2, 1)), head_b=np.zeros(1), map_mpp=None,
        attrs={"model_mpp": 0.5}, normalisation=norm,
    )  # fmt: skip
    assert with_norm.normalisation == Normalisation(1e6, "log1p", "per million")
    assert with_norm.model_mpp == 0.5 and with_norm.map_mpp is None
    # nothing recorded: every typed field says "unknown"
    bare = _store_at(tmp_path / "c.zarr")
    assert bare.slide_mpp is None and bare.slide_path is None and bare.slide_shape is None
    assert bare.normalisation is None and bare.provenance == {} and bare.model_mpp is None
    with pytest.raises(ValueError, match="target_sum"):
        _store_norm(tmp_path / "d.zarr", {"transform": "log1p"})


def _store_norm(path: Path, norm: dict) -> DenseMapStore:
    return DenseMapStore.create(
        path, map_shape=(8, 8), feature_dim=2, chunk=8, genes=["A"],
        head_W=np.ones((2, 1)), head_b=np.zeros(1), map_mpp=4.0, normalisation=norm,
    )  # fmt: skip


def test_attrs_are_sanitised_by_to_jsonable(tmp_path: Path) -> None:
    store = DenseMapStore.create(
        tmp_path / "j.zarr", map_shape=(8, 8), feature_dim=2, chunk=8, genes=["A"],
        head_W=np.ones((2, 1)), head_b=np.zeros(1), map_mpp=np.float32(4.0),
        attrs={"x": np.float64("nan"), "p": tmp_path, "t": (1, np.int64(2)), "o": object},
    )  # fmt: skip
    attrs = DenseMapStore.open(store.path).attrs
    assert attrs["x"] is None and attrs["p"] == str(tmp_path) and attrs["t"] == [1, 2]
    assert attrs["o"] == str(object) and attrs["map_mpp"] == 4.0
    assert not hasattr(store, "update_attrs")


def test_feature_moments_and_gene_stats_weigh_predicted_share(tmp_path: Path) -> None:
    store, feats, predicted, W, b = _half_predicted(tmp_path)
    m0 = store.feature_moments(0, covariance=True)
    x = feats[predicted].astype(np.float64)
    np.testing.assert_allclose(m0.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m0.cov, np.cov(x.T, bias=True), rtol=1e-6, atol=1e-9)
    assert m0.n_pixels == predicted.sum() and m0.weight == predicted.sum()
    stats = store.gene_stats(["C", "A"], level=0)
    values = x @ W[:, [2, 0]].astype(np.float64) + b[[2, 0]]
    assert stats.genes == ["C", "A"]
    np.testing.assert_allclose(stats.mean, values.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.sd, values.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(store.gene_means(level=0), store.gene_stats(level=0).mean)
    # a coarse level straddling background: the weighted mean is still the level-0 mean
    m2 = store.feature_moments(2)
    np.testing.assert_allclose(m2.mean, m0.mean, rtol=0.02)
    assert m2.cov is None and 0 < m2.weight < m2.n_pixels  # some pixels partly predicted
