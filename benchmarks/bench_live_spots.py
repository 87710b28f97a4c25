"""Live spot updates: time of one table update of the Spots widget vs the 50 ms target.

A dense-map store like PixNet's default CPU run writes it
(:data:`napari_histoexpress.training.tasks.pixnet.PIXNET_CPU_DEFAULTS`:
``decoder_dim`` 64 → C = 64 float16 feature channels, 8 µm/px map, 128 px chunks, zstd)
with G = 250 genes, over a big map (default 1536 × 1536 px = 12.3 × 12.3 mm at 8 µm/px).
One live update is :meth:`SpotExpression.aggregate` of the shown spots (every gene's mean
over them), timed for spot diameters of 2, 16, 55, 100 and 500 µm and three cases:

- ``1 moved``:          a single selected spot dragged by a few µm;
- ``10 sel, 1 moved``:  a selection of 10 spots (spread over the map) of which one moved
                        (the others are memoised);
- ``10 moved``:         a selection of 10 spots dragged together (all recomputed).

``cold``: a fresh :class:`SpotExpression` (empty chunk cache, nothing memoised: the first
update after opening the map; zarr reads + zstd decoding of every chunk the circles touch;
the OS page cache is warm since the store was just written). ``warm``: the chunks around the
spots are cached (the drag goes on), the moved circles are new. Times are the best of
several runs (``warm``) or the median over distinct spot positions (``cold``), in ms;
``target/x`` is 50 ms divided by the time (> 1: within target).

Run: ``python benchmarks/bench_live_spots.py [--size 1536] [--map-mpp 8]``
(about a minute and ~300 MB of temporary disk for the default size).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from napari_histoexpress.inference.live_spots import SpotExpression
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.spots import predict_circles

C = 64
G = 250
CHUNK = 128
SLIDE_MPP = 0.5
DIAMETERS_UM = [2.0, 16.0, 55.0, 100.0, 500.0]
TARGET_S = 0.050


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


def _best(fn, reps: int = 7) -> float:  # type: ignore[no-untyped-def]
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(store: DenseMapStore, extent_um: float) -> list[tuple[float, str, float, float]]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1536, help="map side in px")
    parser.add_argument("--map-mpp", type=float, default=8.0, help="µm per map px")
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
        header = (
            f"{'diam µm':>7} {'r px':>6} {'case':>16} {'cold ms':>8} {'warm ms':>8} "
            f"{'target/cold':>11} {'target/warm':>11}"
        )
        print(header)
        print("-" * len(header))
        for d, case, cold, warm in bench(store, extent):
            r_px = d / 2 / args.map_mpp
            print(
                f"{d:7.0f} {r_px:6.2f} {case:>16} {cold * 1e3:8.2f} {warm * 1e3:8.2f} "
                f"{TARGET_S / cold:11.1f} {TARGET_S / warm:11.1f}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
