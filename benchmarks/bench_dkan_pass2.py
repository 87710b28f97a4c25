"""DKAN's pass 2 (global encoder + heads over every lattice node) on a large slide: time and
peak memory for N nodes, against the memory the nodes' own features take.

Pass 2 of the two-pass lattice predictor hands all tissue nodes of a slide to
``DKAN.slide_context`` (``inference/predict_lattice.py``); it runs the global attention in
query blocks and the heads in chunks of ``inference_chunk`` nodes, so its peak should be the
nodes' pass-1 features plus a bounded working set, not ``N²`` attention logits (50,000 nodes:
10 GB per head unblocked) nor ``N × G × d`` gene tokens (6.4 GB at d = 128).

The model has the CPU defaults (d = 128, 250 genes, 3 × 3 tokens of the Lite0 encoder's
last level: 3,392 raw features per node), random weights (the cost does not depend on them)
and random node features on a square lattice with a tenth of the nodes off the tissue.
glibc's malloc is told to map every allocation over 128 kB (``MALLOC_MMAP_THRESHOLD_``) so
the peak RSS is the live memory (the script re-executes itself with it set).

Run:  python benchmarks/bench_dkan_pass2.py [--nodes 50000] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "131072":
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import numpy as np
    import torch

    from napari_histoexpress.models.base import LatticeNodes
    from napari_histoexpress.models.dkan import DKAN

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.manual_seed(0)
    model = DKAN.from_config({"pretrained": None, "n_genes": args.genes}).eval().to(args.device)
    model.set_gene_vectors(np.random.default_rng(0).normal(size=(args.genes, 384)))
    side = int(np.ceil(np.sqrt(args.nodes)))
    rr, cc = np.divmod(np.arange(args.nodes), side)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(args.nodes, model.node_feature_dim, generator=gen).to(args.device)
    tissue = torch.rand(args.nodes, generator=gen) > 0.1
    rc = torch.from_numpy(np.stack([rr, cc], axis=1))
    nodes = LatticeNodes(feats, rc.double() * 165.76, rc, (side, side), 165.76, tissue)
    before = rss_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.slide_context(nodes)
    seconds = time.perf_counter() - t0
    peak = rss_mb()
    inputs_mb = feats.numel() * 4 / 2**20
    out_mb = out.numel() * 4 / 2**20
    print("| nodes | genes | seconds | nodes/s | peak RSS MB | inputs MB | output MB | growth MB |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.nodes:,} | {args.genes} | {seconds:.1f} | {args.nodes / seconds:,.0f} | "
        f"{peak:,.0f} | {inputs_mb:,.0f} | {out_mb:,.0f} | {peak - before:,.0f} |"
    )


if __name__ == "__main__":
    main()
