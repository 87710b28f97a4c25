"""Spots at Visium HD scale: live table updates and whole capture areas, vs their targets.

A dense-map store like PixNet's default CPU run writes it
(:data:`napari_histoexpress.training.tasks.pixnet.PIXNET_CPU_DEFAULTS`:
``decoder_dim`` 64 → C = 64 float16 feature channels, 8 µm/px map, 128 px chunks, zstd)
with G = 250 genes, over a big map (default 1536 × 1536 px = 12.3 × 12.3 mm at 8 µm/px).
Three parts, each row printed with ``target/x`` = target ÷ measured (≥ 1: within target):

1. **Drag** — one live update is :meth:`SpotExpression.aggregate` of the shown spots (every
   gene's mean over them), for spot diameters of 2, 16, 55, 100 and 500 µm and three cases:

   - ``1 moved``:          a single selected spot dragged by a few µm;
   - ``10 sel, 1 moved``:  a selection of 10 spots (spread over the map) of which one moved
                           (the others are memoised);
   - ``10 moved``:         a selection of 10 spots dragged together (all recomputed).

   ``cold``: a fresh :class:`SpotExpression` (empty chunk cache, nothing memoised: the first
   update after opening the map; zarr reads + zstd decoding + prefix sums of every chunk
   the circles touch; the OS page cache is warm since the store was just written), median
   over distinct spot positions. ``warm``: the chunks around the spots are cached (the drag
   goes on), the moved circles are new; best of several runs. Targets: 20 ms warm, 100 ms
   cold.
2. **Table of 10,000 selected spots** — what the Spots widget shows for a selection: the
   selection's mean (:func:`~napari_histoexpress.inference.spot_compare_table.selection_table`
   = ``pending`` + ``aggregate``), its comparison with the slide's tissue (Δ, z) and the
   ranking (:func:`~napari_histoexpress.inference.spot_compare.rank`), for a square region of
   10,000 Visium HD bins (2 and 8 µm, gap-free) just moved by a few µm (all new circles, warm
   chunk cache); ``vs group``: the same against a second group of 10,000 bins (memoised, as
   while the selection is dragged). Target: 200 ms.
3. **Whole capture area** — :func:`predict_circles` of every 8 µm bin of a 6.5 × 6.5 mm
   Visium HD capture area (812² = 659,344 bins; the AnnData with all 250 genes), and of a
   quarter of it: seconds and the peak memory above the process's baseline (sampled),
   against the bins' own storage (``X`` float32 + ``obs`` + ``obsm``). Target: 30 s; memory
   flat in the number of bins beyond their storage: ``extra MB`` = peak − storage (the
   chunk cache, one batch) should hardly grow with the bins (the last line: its growth per
   bin, the bins' coordinates and sort order, vs their storage per bin).

Run: ``python benchmarks/bench_live_spots.py [--size 1536] [--map-mpp 8] [--skip-hd]``
(a few minutes and ~300 MB of temporary disk for the default size, ~2 GB of RAM).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from napari_histoexpress.inference.live_spots import SpotExpression
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spot_compare import rank, slide_stats
from napari_histoexpress.inference.spot_compare_table import selection_table
from napari_histoexpress.inference.spots import predict_circles

C = 64
G = 250
CHUNK = 128
SLIDE_MPP = 0.5
DIAMETERS_UM = [2.0, 16.0, 55.0, 100.0, 500.0]
TARGET_WARM_S = 0.020
TARGET_COLD_S = 0.100
TARGET_TABLE_S = 0.200
TARGET_HD_S = 30.0
HD_SIDE_UM = 6500.0
HD_BIN_UM = 8.0


def make_store(path: Path, size: int, map_mpp: float) -> DenseMapStore:
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((C, G)) / np.sqrt(C)).astype(np.float32)
    b = rng.standard_normal(G).astype(np.float32)
    slide_px = int(size * map_mpp / SLIDE_MPP)
    store = DenseMapStore.create(
        path,
        map_shape=(size, size),
        feature_dim=C,
        genes=[f"gene_{i}" for i in range(G)],
        head_W=W,
        head_b=b,
        map_mpp=map_mpp,
        chunk=CHUNK,
        dtype="float16",
        attrs={"slide": {"path": "bench.tif", "shape": [slide_px] * 2, "mpp": SLIDE_MPP}},
    )
    for y in range(0, size, CHUNK):
        tile = rng.standard_normal((min(CHUNK, size - y), size, C), dtype=np.float32)
        for x in range(0, size, CHUNK):
            t = SimpleNamespace(map_y0=y, map_x0=x, row=y // CHUNK, col=x // CHUNK)
            store.write_tile(t, tile[:, x : x + CHUNK])
            store.mark_done(t)
    store.set_status("complete")
    return store


def _spots(rng: np.random.Generator, n: int, d: float, extent_um: float) -> pd.DataFrame:
    m = d + 50.0
    return pd.DataFrame(
        {
            "x_um": rng.uniform(m, extent_um - m, n),
            "y_um": rng.uniform(m, extent_um - m, n),
            "diameter_um": np.full(n, d),
        }
    )


def _grid(n_side: int, d: float, x0: float, y0: float) -> pd.DataFrame:
    """A gap-free square lattice of ``n_side²`` bins of diameter ``d`` (pitch ``d``)."""
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    return pd.DataFrame(
        {
            "x_um": x0 + xx.ravel() * d,
            "y_um": y0 + yy.ravel() * d,
            "diameter_um": np.full(n_side * n_side, d),
        }
    )


def _best(fn, reps: int = 7) -> float:  # type: ignore[no-untyped-def]
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_drag(store: DenseMapStore, extent_um: float) -> list[tuple[float, str, float, float]]:
    rng = np.random.default_rng(1)
    rows = []
    for d in DIAMETERS_UM:
        for case in ("1 moved", "10 sel, 1 moved", "10 moved"):
            n = 1 if case == "1 moved" else 10
            colds = []
            for _ in range(5):
                spots = _spots(rng, n, d, extent_um)
                expr = SpotExpression(store)
                t0 = time.perf_counter()
                expr.aggregate(spots)
                colds.append(time.perf_counter() - t0)
            cold = float(np.median(colds))
            spots = _spots(rng, n, d, extent_um)
            expr = SpotExpression(store)
            expr.aggregate(spots)  # chunks of the neighbourhood cached, all memoised
            step = iter(range(1, 10_000))

            def update(spots=spots, expr=expr, case=case, step=step) -> None:  # type: ignore[no-untyped-def]
                k = next(step)
                moved = spots.copy()
                dx = 0.37 * k % 20.0  # a fresh position each run (never memoised)
                if case == "10 moved":
                    moved["x_um"] += dx
                else:
                    moved.loc[0, "x_um"] += dx
                expr.aggregate(moved)

            warm = _best(update)
            rows.append((d, case, cold, warm))
    return rows


def bench_table(store: DenseMapStore) -> list[tuple[float, str, float]]:
    """The live table of 10,000 selected bins (moved, warm chunks), vs slide and vs group."""
    stats = slide_stats(store)
    rows = []
    for d in (2.0, 8.0):
        sel = _grid(100, d, 3000.0, 3000.0)
        ref = _grid(100, d, 3000.0 + 100 * d + 40.0, 3000.0)
        expr = SpotExpression(store)
        expr.aggregate(sel)  # chunks cached
        expr.aggregate(ref)  # the reference group memoised
        step = iter(range(1, 10_000))

        def table(sel=sel, expr=expr, ref=None, step=step) -> pd.DataFrame:  # type: ignore[no-untyped-def]
            moved = sel.assign(x_um=sel["x_um"] + 0.37 * next(step) % 20.0)
            expr.pending(moved)  # what the widget asks first (worker thread or not)
            return rank(selection_table(expr, moved, stats, ref), "delta")

        rows.append((d, "vs slide", _best(table, reps=5)))
        rows.append((d, "vs group", _best(lambda table=table, ref=ref: table(ref=ref), reps=5)))
    return rows


class _PeakRSS:
    """Peak resident memory (MB) above the level at entry, sampled every 5 ms."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def above(self) -> float:
        return self.peak - self.base


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def bench_hd(store: DenseMapStore) -> list[tuple[int, float, float, float]]:
    import anndata  # noqa: F401 - imported before the baseline, not counted as the bins'

    rows = []
    n_full = int(HD_SIDE_UM // HD_BIN_UM)
    for n_side in (n_full // 2, n_full):
        bins = _grid(n_side, HD_BIN_UM, 1000.0, 1000.0)
        bins.insert(0, "id", [f"b{i}" for i in range(len(bins))])
        with _PeakRSS() as mem:
            t0 = time.perf_counter()
            adata = predict_circles(store, bins)
            seconds = time.perf_counter() - t0
        obs_bytes = adata.obs.memory_usage(deep=True).sum()
        storage = (adata.X.nbytes + obs_bytes + adata.obsm["spatial"].nbytes) / 2**20
        rows.append((len(bins), seconds, mem.above, storage))
        del adata
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1536, help="map side in px")
    parser.add_argument("--map-mpp", type=float, default=8.0, help="µm per map px")
    parser.add_argument("--skip-hd", action="store_true", help="skip the capture-area part")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-live-spots-"))
    try:
        t0 = time.perf_counter()
        store = make_store(tmp / "map.zarr", args.size, args.map_mpp)
        t_make = time.perf_counter() - t0
        extent = args.size * args.map_mpp
        # correctness: the live values equal predict_circles'
        check = _spots(np.random.default_rng(2), 10, 55.0, extent)
        diff = np.nanmax(
            np.abs(SpotExpression(store).values(check) - predict_circles(store, check).X)
        )
        print(
            f"map {args.size}x{args.size} px at {args.map_mpp:g} µm/px "
            f"({extent / 1000:.1f} mm), C={C} float16, G={G}, chunk {CHUNK}; "
            f"store written in {t_make:.1f} s; max|live - predict_circles| = {diff:.1e}"
        )
        print(
            f"\n1. drag: one live update (targets {TARGET_WARM_S * 1e3:.0f} ms warm, "
            f"{TARGET_COLD_S * 1e3:.0f} ms cold)"
        )
        header = (
            f"{'diam µm':>7} {'r px':>6} {'case':>16} {'cold ms':>8} {'warm ms':>8} "
            f"{'target/cold':>11} {'target/warm':>11}"
        )
        print(header)
        print("-" * len(header))
        for d, case, cold, warm in bench_drag(store, extent):
            r_px = d / 2 / args.map_mpp
            print(
                f"{d:7.0f} {r_px:6.2f} {case:>16} {cold * 1e3:8.2f} {warm * 1e3:8.2f} "
                f"{TARGET_COLD_S / cold:11.2f} {TARGET_WARM_S / warm:11.2f}"
            )
        print(
            f"\n2. table of 10,000 selected bins, moved (warm chunks; target "
            f"{TARGET_TABLE_S * 1e3:.0f} ms)"
        )
        header = f"{'bin µm':>7} {'case':>9} {'ms':>8} {'target/x':>9}"
        print(header)
        print("-" * len(header))
        for d, case, sec in bench_table(store):
            print(f"{d:7.0f} {case:>9} {sec * 1e3:8.1f} {TARGET_TABLE_S / sec:9.2f}")
        if not args.skip_hd:
            print(
                f"\n3. predict_circles of a Visium HD capture area, {HD_BIN_UM:g} µm bins "
                f"(target {TARGET_HD_S:.0f} s; memory above baseline vs the bins' storage)"
            )
            header = (
                f"{'bins':>8} {'s':>7} {'target/x':>9} {'peak MB':>8} {'storage MB':>10} "
                f"{'extra MB':>8}"
            )
            print(header)
            print("-" * len(header))
            hd = bench_hd(store)
            for n, sec, peak, storage in hd:
                print(
                    f"{n:8d} {sec:7.2f} {TARGET_HD_S / sec:9.2f} {peak:8.0f} {storage:10.0f} "
                    f"{peak - storage:8.0f}"
                )
            (n0, _, p0, s0), (n1, _, p1, s1) = hd
            per_bin = ((p1 - s1) - (p0 - s0)) * 2**20 / (n1 - n0)
            print(
                f"extra memory per bin (slope of 'extra MB'): {per_bin:.0f} B, vs "
                f"{(s1 - s0) * 2**20 / (n1 - n0):.0f} B of storage per bin"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
