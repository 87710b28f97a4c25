"""Cohort prediction on dask.distributed: throughput vs one process, overhead, memory.

Run: ``python benchmarks/bench_cohort.py`` (about 10 minutes on 2 CPU cores;
``--slides 2 --size-um 3000`` for a quick check).

What it measures, from one run, on the same synthetic slides (one 12 × 12 mm slide at
2 µm/px, OME-TIFF, copied ``--slides`` times: the same pixels cost the same, and each copy is
read and checksummed as its own file) with the bundled demo run (PixNet, ResNet18, 4 µm/px,
39 genes), tiles of 512 px (the CLI's default):

* **reference**: ``histoexpress predict`` once per slide, what a user without cohorts runs
  (each command starts Python and loads the run), and one Python process predicting the
  slides one after the other with the run loaded once
  (:func:`~napari_histoexpress.inference.predict_run.load_run` + ``predict_loaded``).
* **cohort, 1 worker** (all cores' torch threads) and **2 workers** (the cores split between
  them): :func:`~napari_histoexpress.inference.cohort.predict_cohort` on a ``LocalCluster``
  of processes, wall time from the call to the last manifest row, cluster start-up
  included; ratio to the reference (target ≥ 0.9 for 1 worker).
* **overhead per task**: 200 empty tasks round-tripped through the same kind of cluster
  (ms per task), and the cohort's own per-slide overhead ``(wall − Σ task wall) / slides``
  for one worker.
* **peak RSS per worker** (``ru_maxrss`` read on every worker after its cohort) for the
  slides of ``--size-um`` and of twice that side (4× the pixels): flat means ≈ 1.
* **per-tile costs** (decode of a tile's window vs the model's forward pass, one process),
  and from them a **paper estimate** (not a measurement) of a 1,000-slide cohort on N GPUs:
  ``slides × tiles per slide × max(decode / decode workers, forward on the GPU) / N``, with
  the GPU forward time an assumption printed beside it (``--gpu-forward-ms``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TILE_PX = 512  # the CLI's default
SLIDE_MPP = 2.0


def _write_slides(folder: Path, n: int, size_um: float, tag: str) -> list[Path]:
    """``n`` copies of one synthetic slide (the same pixels cost the same to predict; copies
    are separate files, so each is decoded and checksummed on its own)."""
    import shutil

    from napari_histoexpress.io.synthetic import generate_synthetic_tissue, write_ome_tiff

    first = folder / f"{tag}0.ome.tif"
    if not first.exists():
        t = generate_synthetic_tissue(100, size_um=size_um, mpp=SLIDE_MPP)
        write_ome_tiff(first, t.image, t.mpp)
    paths = [first]
    for i in range(1, n):
        path = folder / f"{tag}{i}.ome.tif"
        if not path.exists():
            shutil.copyfile(first, path)
        paths.append(path)
    return paths


def _peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not start from the
    parent's peak in a spawned process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cohort(
    run: Path, slides: list[Path], out: Path, workers: int, threads: int
) -> tuple[float, Any, list[float]]:
    import distributed

    from napari_histoexpress.inference.cohort import local_cluster, predict_cohort
    from napari_histoexpress.io.cohort_files import CohortSlide

    t0 = time.perf_counter()
    with local_cluster(workers, threads=threads, device="cpu") as cluster:
        result = predict_cohort(
            run,
            [CohortSlide(p) for p in slides],
            out,
            scheduler=cluster.scheduler_address,
            device="cpu",
            tile_px=TILE_PX,
            threads_per_worker=threads,
            progress=False,
        )
        wall = time.perf_counter() - t0
        with distributed.Client(cluster.scheduler_address) as client:
            rss = list(client.run(_peak_rss_mb).values())
    assert result.n_complete == len(slides), result.rows
    return wall, result, rss


def _overhead_ms(workers: int, n_tasks: int = 200) -> float:
    import distributed

    from napari_histoexpress.inference.cohort import local_cluster

    with (
        local_cluster(workers, threads=1, device="cpu") as cluster,
        distributed.Client(cluster) as client,
    ):
        client.gather(client.map(int, range(20), pure=False))  # warm up
        t0 = time.perf_counter()
        futures = [client.submit(int, i, pure=False) for i in range(n_tasks)]
        for f in distributed.as_completed(futures):
            f.result()
        return (time.perf_counter() - t0) / n_tasks * 1e3


def _forward_s(threads: int) -> float:
    """Seconds of 5 ResNet18 forward passes on 4 × 384² (the worker-environment check)."""
    import timm
    import torch

    torch.set_num_threads(threads)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(4, 3, 384, 384)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(5):
            model(x)
    return time.perf_counter() - t0


def _forward_in_workers(threads: int) -> dict[str, float]:
    """:func:`_forward_s` here, in a worker of dask's default environment and in a worker of
    the cohort's (:func:`~napari_histoexpress.inference.cohort.worker_environment`)."""
    import dask
    import distributed

    from napari_histoexpress.inference.cohort import local_cluster

    out = {"this process": _forward_s(threads)}
    default_env = dask.config.get("distributed.nanny.pre-spawn-environ")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as c,
        distributed.Client(c) as client,
    ):
        out[f"worker, dask's default environment {default_env}"] = min(
            client.submit(_forward_s, threads, pure=False).result() for _ in range(2)
        )
    with local_cluster(1, threads=threads, device="cpu") as c, distributed.Client(c) as client:
        out["worker, the cohort's environment"] = min(
            client.submit(_forward_s, threads, pure=False).result() for _ in range(2)
        )
    return out


def _tile_costs(run: Path, slide: Path) -> tuple[float, float, int]:
    """(decode s per tile, forward s per tile, tiles) of one slide, in this process."""
    import torch

    from napari_histoexpress.inference.predict_run import load_run
    from napari_histoexpress.inference.predict_slide import _read_window, plan_prediction
    from napari_histoexpress.io.slides import open_slide

    loaded = load_run(run, device="cpu")
    s = open_slide(slide)
    plan = plan_prediction(
        loaded.model,
        s,
        model_mpp=loaded.info.model_mpp,
        tile_px=TILE_PX,
        halo_px=None,
        genes=None,
        stain=None,
    )
    tiles = plan.tiles[: min(16, len(plan.tiles))]
    t0 = time.perf_counter()
    windows = [_read_window(s, plan.factor, plan.working_mpp, t) for t in tiles]
    decode = (time.perf_counter() - t0) / len(tiles)
    x = torch.from_numpy(np.stack(windows)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        loaded.model.features(x[:2])  # warm up
        t0 = time.perf_counter()
        for i in range(0, len(x), 4):
            loaded.model.features(x[i : i + 4])
        forward = (time.perf_counter() - t0) / len(x)
    s.close()
    return decode, forward, len(plan.tiles)


def main() -> None:
    import torch

    from napari_histoexpress.inference.predict_run import load_run, predict_loaded

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=8, help="slides of the cohort")
    parser.add_argument("--size-um", type=float, default=12000.0, help="slide side in µm")
    parser.add_argument(
        "--gpu-forward-ms",
        type=float,
        default=5.0,
        help="ASSUMED forward time per tile on one GPU, for the estimate",
    )
    parser.add_argument("--cohort-slides", type=int, default=1000)
    parser.add_argument(
        "--tiles-per-slide",
        type=int,
        default=None,
        help="for the estimate (default: a 15 × 15 mm tissue at the run's µm/px)",
    )
    parser.add_argument("--work", type=Path, default=None, help="folder for slides and maps")
    args = parser.parse_args()
    run = (
        Path(__file__).resolve().parents[1]
        / "src"
        / "napari_histoexpress"
        / "sample_data"
        / "demo_run"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = torch.get_num_threads()
    slides = _write_slides(work, args.slides, args.size_um, "s")
    small = _write_slides(work, 2, args.size_um / 2, "half")

    loaded = load_run(run, device="cpu")
    t0 = time.perf_counter()
    tiles = 0
    for i, p in enumerate(slides):
        rep = predict_loaded(loaded, p, work / "ref" / f"{i}.zarr", tile_px=TILE_PX, resume=False)
        tiles += rep.n_computed
    loop_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, p in enumerate(slides):  # what a user without cohorts runs: one command per slide
        subprocess.run(
            [
                "histoexpress",
                "predict",
                "--run",
                str(run),
                "--slide",
                str(p),
                "--out",
                str(work / "cli" / f"{i}.zarr"),
                "--device",
                "cpu",
                "--restart",
            ],
            check=True,
            capture_output=True,
        )
    ref_wall = time.perf_counter() - t0
    rows = [
        ("`histoexpress predict` per slide (reference)", ref_wall, 1.0, ""),
        ("one process, run loaded once", loop_wall, ref_wall / loop_wall, ""),
    ]
    results = {}
    for workers in (1, 2):
        wall, result, rss = _cohort(run, slides, work / f"c{workers}", workers, cores // workers)
        results[workers] = (wall, result, rss)
        rows.append(
            (
                f"cohort, {workers} worker(s)",
                wall,
                ref_wall / wall,
                f"{loop_wall / wall:.2f} of the one-process loop; peak RSS per worker "
                f"{', '.join(f'{r:.0f}' for r in rss)} MB",
            )
        )
    task_wall = sum(float(r["wall_s"]) for r in results[1][1].rows)
    per_slide_overhead = (results[1][0] - task_wall) / len(slides)
    overhead = _overhead_ms(2)
    _, _, rss_small = _cohort(run, small, work / "rss-small", 2, 1)
    rss_big = results[2][2]
    decode, forward, _ = _tile_costs(run, slides[0])
    forwards = _forward_in_workers(cores)

    def row(*cells: object) -> None:
        print("| " + " | ".join(str(c) for c in cells) + " |")

    print(
        f"# bench_cohort: {len(slides)} slides of {args.size_um:g} µm ({tiles} tiles of "
        f"{TILE_PX} px), {cores} CPU threads, demo run (PixNet ResNet18, 4 µm/px)"
    )
    row("run", "wall s", "slides/hour", "ratio to `histoexpress predict` per slide", "note")
    row("---", "---", "---", "---", "---")
    for name, wall, ratio, note in rows:
        row(name, f"{wall:.1f}", f"{len(slides) / wall * 3600:.0f}", f"{ratio:.2f}", note)
    row(
        "scheduler overhead per task (200 empty tasks, 2 workers)", "", "", "", f"{overhead:.2f} ms"
    )
    row(
        "cohort overhead per slide, 1 worker: (wall − Σ task wall) / slides", "", "", "",
        f"{per_slide_overhead:.2f} s (cluster start-up and model load included)",
    )  # fmt: skip
    low, high = max(rss_small), max(rss_big)
    row(
        f"peak RSS per worker, 2 workers: {args.size_um / 2:g} vs {args.size_um:g} µm slides "
        "(4× pixels)", "", "", f"{high / low:.2f} (flat ≈ 1)", f"{low:.0f} → {high:.0f} MB",
    )  # fmt: skip
    row(
        f"per tile ({TILE_PX} px + halo, 1 process): decode vs forward", "", "", "",
        f"decode {decode * 1e3:.1f} ms, forward {forward * 1e3:.1f} ms on the CPU",
    )  # fmt: skip
    base = forwards["this process"]
    for where, seconds in forwards.items():
        row(
            f"ResNet18 forward, 5 × 4 × 384² in {where}",
            f"{seconds:.2f}",
            "",
            f"{base / seconds:.2f}",
            "ratio: this process / it",
        )
    mpp = loaded.info.model_mpp
    tiles_per_slide = args.tiles_per_slide or int(np.ceil(15000 / mpp / TILE_PX) ** 2)
    for n_gpus in (1, 4, 8):
        per_tile = max(decode / 8, args.gpu_forward_ms / 1e3)  # 8 decode processes per GPU
        hours = args.cohort_slides * tiles_per_slide * per_tile / n_gpus / 3600
        row(
            f"ESTIMATE (not measured): {args.cohort_slides} slides × {tiles_per_slide} tiles "
            f"on {n_gpus} GPU(s), 8 decode workers each, forward "
            f"{args.gpu_forward_ms:g} ms/tile ASSUMED", f"{hours * 3600:.0f}", "", "",
            f"{hours:.2f} h",
        )  # fmt: skip
    print(f"# work folder: {work}")


if __name__ == "__main__":
    main()
