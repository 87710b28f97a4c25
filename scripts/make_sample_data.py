"""Regenerate the shipped synthetic sample in ``sample_data/`` (or another folder).

Usage::

    python scripts/make_sample_data.py            # writes ./sample_data/ (seed 0)
    python scripts/make_sample_data.py --out /tmp/x --seed 3

The files are deterministic for a given seed and generator version
(``napari_histoexpress.io.synthetic.GENERATOR_VERSION``); ``tests/io/test_synthetic.py``
checks the shipped files still match the generator. Each file must stay under 2 MiB (the
house rules flag larger tracked files); the script fails if one does not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_histoexpress.io.synthetic import (  # noqa: E402
    SAMPLE_SEED,
    generate_synthetic_tissue,
    write_synthetic_sample,
)

MAX_BYTES = 2 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "sample_data")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    tissue = generate_synthetic_tissue(args.seed)
    t1 = time.perf_counter()
    paths = write_synthetic_sample(args.out, args.seed, tissue=tissue)
    t2 = time.perf_counter()
    print(f"generated in {t1 - t0:.1f} s, written in {t2 - t1:.1f} s")
    print(f"image {tissue.image.shape} at {tissue.mpp} µm/px, {tissue.spots.n_obs} spots")
    too_big = False
    for key, path in paths.items():
        size = path.stat().st_size
        print(f"{key:6s} {path}  {size / 2**20:.2f} MiB")
        too_big |= size > MAX_BYTES
    if too_big:
        print("error: a file exceeds 2 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
