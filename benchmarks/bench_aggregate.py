"""Circle aggregation speed: factorised features vs. a full gene map vs. brute force.

A PixNet map of a 4.1 × 4.1 mm region at 4 µm/px (1024 × 1024 px; PixNet's default CPU
map is 8 µm/px, its stride-2 paper setting 4 µm/px at 2 µm/px input) with C = 128 feature
channels and its G = 250-gene map ``G = features @ W.T + b``. For spot radii from 27.5 µm
(Visium) to 2 mm, time per circle of:

- ``factorised``: :class:`CircleAggregator` on the C-channel features, then the linear head;
- ``full map``:   :class:`CircleAggregator` on the G-channel gene map;
- ``brute``:      O(r²) masked sum with exact pixel weights over the disk's bounding box
                  on the gene map (:func:`brute_force_circle_sum`).

All three give the same numbers (the max abs difference is printed). Times are the best of
a few runs, per circle, for a batch of ``n`` circles in one ``aggregate_many`` call; ``one
circle`` is one ``aggregate_many`` call + head for a single circle (the mean over the ``n``
circles of each one's best time), against the target of 1 ms for one circle of up to 2 mm
radius with all genes (``target/one`` ≥ 1: within target). Prefix-sum construction is a
one-off per map and is reported separately. BLAS runs on one thread: the head products here
are tiny, and on a loaded machine (or under ``nice``) a woken BLAS worker thread can wait
milliseconds for a core, which would time the scheduler, not the aggregation.

Run: ``python benchmarks/bench_aggregate.py`` (about a minute, ~5 GB RAM).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from napari_histoexpress.geometry import CircleAggregator, brute_force_circle_sum

UM_PER_PX = 4.0
SIZE = 1024
C = 128
G = 250
RADII_UM = [27.5, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0]
TARGET_ONE_S = 0.001  # one circle, all genes, factorised, up to 2 mm radius


def _timeit(fn, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Best of ``reps`` runs (seconds): robust to other load on the machine."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((SIZE, SIZE, C), dtype=np.float32)
    w = (rng.standard_normal((G, C)) / np.sqrt(C)).astype(np.float32)
    b = rng.standard_normal(G).astype(np.float32)
    t0 = time.perf_counter()
    gmap = (feats.reshape(-1, C) @ w.T + b).reshape(SIZE, SIZE, G)
    t_head_map = time.perf_counter() - t0

    t0 = time.perf_counter()
    agg_f = CircleAggregator(feats)
    t_pre_f = time.perf_counter() - t0
    t0 = time.perf_counter()
    agg_g = CircleAggregator(gmap)
    t_pre_g = time.perf_counter() - t0
    w64, b64 = w.astype(np.float64), b.astype(np.float64)

    print(
        f"map {SIZE}x{SIZE} px at {UM_PER_PX} µm/px, C={C} features, G={G} genes; "
        f"one-off: gene map {t_head_map:.2f} s, prefix sums C {t_pre_f:.2f} s, G {t_pre_g:.2f} s"
    )
    header = (
        f"{'radius µm':>9} {'px':>6} {'n':>4} {'factorised ms':>13} {'one circle ms':>13} "
        f"{'target/one':>10} {'full map ms':>11} {'brute ms':>9} {'full/fact':>9} "
        f"{'brute/fact':>10} {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for r_um in RADII_UM:
        r = r_um / UM_PER_PX
        n = 32 if r < 100 else (8 if r < 400 else 4)
        lo, hi = r + 1, SIZE - 1 - r
        centres = rng.uniform(lo, hi, size=(n, 2))
        radii = np.full(n, r)

        def factorised(centres=centres, radii=radii):  # type: ignore[no-untyped-def]
            return agg_f.aggregate_many(centres, radii) @ w64.T + b64

        def full(centres=centres, radii=radii):  # type: ignore[no-untyped-def]
            return agg_g.aggregate_many(centres, radii)

        n_brute = min(n, 4)

        def brute(centres=centres, r=r, k=n_brute):  # type: ignore[no-untyped-def]
            return np.stack(
                [brute_force_circle_sum(gmap, x, y, r) / (np.pi * r * r) for x, y in centres[:k]]
            )

        t_f = _timeit(factorised) / n
        t_one = float(
            np.mean([_timeit(partial(factorised, centres[k : k + 1], radii[:1])) for k in range(n)])
        )
        t_g = _timeit(full) / n
        t_b = _timeit(brute, reps=2) / n_brute
        diff = max(
            np.abs(factorised() - full()).max(),
            np.abs(full()[:n_brute] - brute()).max(),
        )
        print(
            f"{r_um:9.1f} {r:6.1f} {n:4d} {t_f * 1e3:13.3f} {t_one * 1e3:13.3f} "
            f"{TARGET_ONE_S / t_one:10.2f} {t_g * 1e3:11.3f} {t_b * 1e3:9.2f} "
            f"{t_g / t_f:9.1f} {t_b / t_f:10.1f} {diff:9.1e}"
        )


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
