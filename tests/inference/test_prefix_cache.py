"""The chunked prefix-sum engine of predict_circles and SpotExpression: exact (brute force,
the in-memory aggregator), independent of batches, cache size and threads, bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import napari_histoexpress.inference.prefix_cache as pc
from napari_histoexpress.geometry import CircleAggregator, brute_force_circle_sum
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.prefix_cache import (
    PrefixChunkCache,
    circle_sums,
    iter_circle_sums,
)

GENES = ["a", "b", "c"]


class _Tile:
    def __init__(self, y: int, x: int) -> None:
        self.map_y0, self.map_x0 = y, x


def _store(tmp_path: Path, shape=(75, 101), c=4, chunk=16, background=True, dtype="float32"):
    """A map whose width and height are not multiples of the chunk, with background
    (never predicted) tiles when ``background``."""
    rng = np.random.default_rng(4)
    W = rng.normal(size=(c, len(GENES))).astype(np.float32)
    b = rng.normal(size=len(GENES)).astype(np.float32)
    store = DenseMapStore.create(
        tmp_path / "m.zarr", map_shape=shape, feature_dim=c, genes=GENES, head_W=W, head_b=b,
        map_mpp=4.0, chunk=chunk, dtype=dtype,
        attrs={"slide": {"path": "/data/s.tif", "shape": [shape[0] * 8, shape[1] * 8], "mpp": 0.5}},
    )  # fmt: skip
    feats = (rng.normal(size=(*shape, c)) + 2.0).astype(np.float32)
    rows, cols = store.tile_grid
    skipped = np.zeros((rows, cols), bool)
    if background:
        skipped[1, 2] = skipped[3, 0] = skipped[0, cols - 1] = True
    for i in range(rows):
        for j in range(cols):
            if not skipped[i, j]:
                t = _Tile(i * chunk, j * chunk)
                store.write_tile(t, feats[i * chunk : (i + 1) * chunk, j * chunk : (j + 1) * chunk])
                store.mark_done((i, j))
    if skipped.any():
        store.mark_background(skipped)
    return store


def _circles(n: int, shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = shape
    centres = np.stack([rng.uniform(-6, w + 6, n), rng.uniform(-6, h + 6, n)], axis=1)
    radii = np.concatenate([rng.uniform(0.02, 1.5, n // 2), rng.uniform(1.5, 30, n - n // 2)])
    return centres, radii


def _reference(store: DenseMapStore) -> np.ndarray:
    return store.read_features(slice(None), slice(None)).astype(np.float64)


def test_equals_brute_force_and_the_in_memory_aggregator(tmp_path: Path) -> None:
    store = _store(tmp_path)
    full = _reference(store)  # NaN on the background tiles
    centres, radii = _circles(120, store.map_shape)
    cache = PrefixChunkCache(store, budget_bytes=64 * 2**20)
    sums, area = circle_sums(cache, centres, radii)
    ref_sums, ref_area = CircleAggregator(full).aggregate_many(
        centres, radii, "sum", return_area=True
    )
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(area, ref_area, rtol=1e-10, atol=1e-10)
    valid = np.isfinite(full).all(axis=2)
    clean = np.where(valid[..., None], full, 0.0)
    for k in range(0, 120, 7):
        (cx, cy), r = centres[k], radii[k]
        np.testing.assert_allclose(
            sums[k], brute_force_circle_sum(clean, cx, cy, r), rtol=1e-9, atol=1e-9
        )
        want_area = brute_force_circle_sum(valid.astype(float), cx, cy, r)[0]
        assert area[k] == pytest.approx(want_area, rel=1e-9, abs=1e-9)
    assert (area == 0).any() and (area > 0).any()  # some circles off the map / on glass


@pytest.mark.parametrize("budget_chunks", [1, 2, 5])
def test_small_caches_and_many_batches_change_nothing(
    tmp_path: Path, budget_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache smaller than a query's chunks sums the knots group by group; tiny batches
    split the circles: the results are the same to rounding and the budget holds."""
    store = _store(tmp_path)
    centres, radii = _circles(80, store.map_shape, seed=1)
    big = PrefixChunkCache(store, budget_bytes=64 * 2**20)
    want, want_area = circle_sums(big, centres, radii)
    small = PrefixChunkCache(store, budget_bytes=budget_chunks * big.slot_bytes)
    assert small.capacity == budget_chunks
    monkeypatch.setattr(pc, "BATCH_KNOTS", 64)
    seen: list[tuple[int, int]] = []
    got, got_area = circle_sums(
        small, centres, radii, block_px=8, progress=lambda d, t: seen.append((d, t))
    )
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(got_area, want_area, rtol=1e-11, atol=1e-11)
    assert len(seen) > 3 and seen[-1][0] == seen[-1][1] == len(seen)
    assert small.stats.bytes <= budget_chunks * small.slot_bytes
    assert small.stats.misses > small.capacity  # chunks were evicted and read again
    # the batches cover every circle once
    idx = np.concatenate([i for i, _s, _a in iter_circle_sums(big, centres, radii)])
    assert sorted(idx.tolist()) == list(range(80))


def test_threads_share_one_cache(tmp_path: Path) -> None:
    """Six threads query one small cache at once (they evict each other's chunks, pinned
    chunks are never overwritten): every result equals a private, large cache's."""
    store = _store(tmp_path, background=False, dtype="float16")
    jobs = [_circles(60, store.map_shape, seed=s) for s in range(6)]
    want = [circle_sums(PrefixChunkCache(store, budget_bytes=2**30), *j) for j in jobs]
    probe = PrefixChunkCache(store, budget_bytes=2**20)
    cache = PrefixChunkCache(store, budget_bytes=6 * probe.slot_bytes)
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results[k] = circle_sums(cache, *jobs[k])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == len(jobs)
    for k, (s, a) in results.items():
        np.testing.assert_allclose(s, want[k][0], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(a, want[k][1], rtol=1e-11, atol=1e-11)
    assert not cache._pins.any()  # every pin released
    assert cache.stats.bytes <= 6 * cache.slot_bytes


def test_a_failed_read_releases_its_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path, background=False)
    cache = PrefixChunkCache(store, budget_bytes=64 * 2**20)
    centres, radii = _circles(20, store.map_shape, seed=3)
    calls = {"n": 0}
    read = store.read_features

    def flaky(rows: slice, cols: slice) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk went away")
        return read(rows, cols)

    monkeypatch.setattr(store, "read_features", flaky)
    with pytest.raises(OSError, match="went away"):
        circle_sums(cache, centres, radii)
    assert not cache._pins.any()
    got = circle_sums(cache, centres, radii)  # nothing half-loaded is served
    want = circle_sums(PrefixChunkCache(store, budget_bytes=64 * 2**20), centres, radii)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)


def test_clear_forgets_chunks(tmp_path: Path) -> None:
    store = _store(tmp_path)
    cache = PrefixChunkCache(store, budget_bytes=64 * 2**20)
    circle_sums(cache, *_circles(10, store.map_shape))
    assert cache.stats.chunks > 0 and cache.stats.bytes == cache.stats.chunks * cache.slot_bytes
    cache.clear()
    assert cache.stats.chunks == 0 and cache.stats.bytes == 0
    circle_sums(cache, *_circles(10, store.map_shape))
    assert cache.stats.hits == 0 and cache.stats.misses == cache.stats.chunks > 0


def test_chunks_in_use_are_never_evicted(tmp_path: Path) -> None:
    """Chunks pinned by one query (another thread's, here held by hand) stay in their slots
    while a second query cycles every other chunk through the rest of the cache."""
    store = _store(tmp_path, background=False)
    probe = PrefixChunkCache(store, budget_bytes=2**20)
    cache = PrefixChunkCache(store, budget_bytes=4 * probe.slot_bytes)
    held = cache._acquire(np.array([0, 1]))  # pinned, and the least recently used
    before = cache._pool[held[0] * cache._slot_rows : (held[0] + 1) * cache._slot_rows].copy()
    centres, radii = _circles(40, store.map_shape, seed=9)
    got = circle_sums(cache, centres, radii)  # needs most of the 35 chunks, 2 slots free
    assert cache._slots[0] == held[0] and cache._slots[1] == held[1]
    after = cache._pool[held[0] * cache._slot_rows : (held[0] + 1) * cache._slot_rows]
    np.testing.assert_array_equal(after, before)
    cache._release(held)
    want = circle_sums(PrefixChunkCache(store, budget_bytes=2**30), centres, radii)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-11)
