"""Cohorts on dask.distributed: one task per slide, manifest, resume, failed slides, a killed
worker, the cohort AnnData and report, the CLI, and napari finding a cohort's maps.

The cluster tests start real ``LocalCluster``s of worker *processes* (what users run), on
small synthetic slides and a random-init PixNet run (fast to load in every worker).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from dense_toys import save_tiny_pixnet_run
from napari_histoexpress.inference.cohort import (
    CohortSettings,
    SlideTask,
    local_cluster,
    predict_cohort,
    predict_cohort_slide,
)
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_run import predict_with_run
from napari_histoexpress.io.cohort_files import (
    MANIFEST_NAME,
    CohortSlide,
    file_checksum,
    read_manifest,
    read_slide_list,
    write_manifest,
)
from napari_histoexpress.models.checkpoint import save_checkpoint

distributed = pytest.importorskip("distributed")

GENES = ["ERBB2", "KRT19", "PTPRC"]
MODEL_MPP = 4.0
TILE_PX = 64


def _write_slide(path: Path, seed: int, size_um: float, mpp: float = 2.0) -> Path:
    from napari_histoexpress.io.synthetic import generate_synthetic_tissue, write_ome_tiff

    tissue = generate_synthetic_tissue(seed, size_um=size_um, mpp=mpp)
    write_ome_tiff(path, tissue.image, tissue.mpp)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pixnet_run(tmp_path_factory.mktemp("runs") / "tiny_run", GENES, MODEL_MPP)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tissue slides, a truncated one, a glass-only one, and a list naming a missing
    file too (paths relative to the list)."""
    from napari_histoexpress.io.synthetic import write_ome_tiff

    folder = tmp_path_factory.mktemp("cohort_slides")
    for seed in (1, 2, 3):
        _write_slide(folder / f"S{seed}.ome.tif", seed, 1200)
    data = (folder / "S1.ome.tif").read_bytes()
    (folder / "broken.ome.tif").write_bytes(data[: len(data) // 2])
    write_ome_tiff(folder / "glass.ome.tif", np.full((600, 600, 3), 245, np.uint8), 2.0)
    (folder / "list.csv").write_text(
        "slide,patient,grade\nS1.ome.tif,P1,2\nS2.ome.tif,P2,3\nS3.ome.tif,P1,1\n"
        "broken.ome.tif,P3,2\nglass.ome.tif,P4,1\nmissing.tif,P5,2\n"
    )
    return folder


@pytest.fixture(scope="module")
def cluster() -> Any:
    """The local cluster `cohort predict --workers 2 --threads-per-worker 1` starts."""
    with local_cluster(2, threads=1, device="cpu") as c:
        yield c


@pytest.fixture(scope="module")
def predicted(run_dir: Path, slides: Path, cluster: Any, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cohort") / "maps"
    result = _cohort(run_dir, read_slide_list(slides / "list.csv"), out, cluster)
    return out, result


def _reference(run_dir: Path, slide: Path, out: Path, **kwargs: Any) -> Path:
    """The single-process prediction, with the workers' one torch thread (another thread
    count sums in another order: float16 maps would differ in the last bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict_with_run(run_dir, slide, out, tile_px=TILE_PX, device="cpu", **kwargs)
    finally:
        torch.set_num_threads(threads)
    return out


def _cohort(run_dir: Path, slides: Any, out: Path, cluster: Any, **kwargs: Any) -> Any:
    """predict_cohort on the test cluster, CPU, 64 px tiles, the workers' one torch thread."""
    options: dict[str, Any] = {"tile_px": TILE_PX, "threads_per_worker": 1, **kwargs}
    return predict_cohort(
        run_dir,
        slides,
        out,
        scheduler=cluster.scheduler_address,
        device="cpu",
        progress=False,
        **options,
    )


def _features(path: Path) -> np.ndarray:
    return np.asarray(DenseMapStore.open(path).features_level(0))


# ------------------------------------------------------------------------------ cluster


def test_cohort_predicts_every_slide_and_records_failures(
    predicted: tuple[Path, Any], run_dir: Path, slides: Path, cluster: Any, tmp_path: Path
) -> None:
    out, result = predicted
    rows = {r["name"]: r for r in read_manifest(out / MANIFEST_NAME)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "S1": "complete",
        "S2": "complete",
        "S3": "complete",
        "broken": "failed",
        "glass": "failed",
        "missing": "failed",
    }
    assert (
        "truncated" in rows["broken"]["error"]
        and str(slides / "broken.ome.tif") in rows["broken"]["error"]
    )
    assert "no tissue detected" in rows["glass"]["error"]
    assert "slide file not found" in rows["missing"]["error"]
    assert result.n_complete == 3 and result.n_failed == 3
    s1 = rows["S1"]
    assert s1["patient"] == "P1" and s1["grade"] == "2"  # metadata carried
    assert s1["checksum"] == file_checksum(slides / "S1.ome.tif")
    assert int(s1["tiles"]) > 1 and float(s1["tiles_per_s"]) > 0 and float(s1["wall_s"]) > 0
    # each map equals the single-process prediction
    ref = _reference(run_dir, slides / "S2.ome.tif", tmp_path / "ref.zarr")
    np.testing.assert_array_equal(_features(out / "S2.zarr"), _features(ref))
    # the run is loaded once per worker process, not once per slide
    from napari_histoexpress.inference import cohort

    with distributed.Client(cluster.scheduler_address) as client:
        loads = client.run(lambda: cohort.RUN_LOADS["count"])
    assert sorted(loads.values()) in ([1, 1], [0, 1])
    # a second run skips the finished slides and tries the failed ones again
    again = _cohort(run_dir, read_slide_list(slides / "list.csv"), out, cluster)
    assert again.n_skipped == 3 and again.n_submitted == 3 and again.n_failed == 3


def test_a_partial_slide_is_resumed_from_its_finished_tiles(
    predicted: tuple[Path, Any], run_dir: Path, slides: Path, cluster: Any, tmp_path: Path
) -> None:
    out = tmp_path / "maps"
    shutil.copytree(predicted[0], out)
    rows = read_manifest(out / MANIFEST_NAME)
    # S1's map becomes partial (half its tiles forgotten), as after a crash
    s1 = DenseMapStore.open(out / "S1.zarr", mode="r+")
    coverage = s1.coverage
    done = np.flatnonzero(coverage.ravel() == 1)
    flat = coverage.ravel()
    keep = len(done) // 8 * 4  # a crash between two batches of 4 tiles (the default)
    flat[done[keep:]] = 0  # pending again
    s1._coverage[...] = flat.reshape(coverage.shape)
    s1._done[...] = flat.reshape(coverage.shape) != 0
    s1.set_status("partial")
    for r in rows:
        if r["name"] == "S1":
            r["status"] = "pending"
    write_manifest(out / MANIFEST_NAME, rows)
    two = [CohortSlide(slides / "S1.ome.tif"), CohortSlide(slides / "S2.ome.tif")]
    result = _cohort(run_dir, two, out, cluster)
    assert result.n_skipped == 1 and result.n_complete == 1  # S2 skipped, S1 resumed
    row = {r["name"]: r for r in result.rows}["S1"]
    assert int(row["tiles_computed"]) == len(done) - keep
    np.testing.assert_array_equal(_features(out / "S1.zarr"), _features(predicted[0] / "S1.zarr"))
    assert {r["name"] for r in result.rows} >= {"S3", "broken"}  # other rows kept


_WORKER_ENV_KEYS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MALLOC_TRIM_THRESHOLD_",
)


def test_a_killed_worker_has_its_slide_retried_with_identical_maps(
    run_dir: Path, tmp_path: Path
) -> None:
    """Kill the worker process predicting a slide mid-slide: dask reschedules the task on
    another worker, which resumes the partial store; the maps equal uninterrupted ones."""
    big = [_write_slide(tmp_path / "B0.ome.tif", 10, 2400)]  # ~100 tiles of 64 px
    out = tmp_path / "maps"
    with (
        local_cluster(2, threads=1, device="cpu") as cluster,
        distributed.Client(cluster.scheduler_address) as client,
    ):
        # the workers' environment (worker_environment): OpenMP/BLAS on the worker's
        # threads, no MALLOC_TRIM_THRESHOLD_ (it slowed torch's forward pass 1.5×)
        envs = client.run(lambda: {k: os.environ.get(k) for k in _WORKER_ENV_KEYS})
        assert len(envs) == 2
        for env in envs.values():
            assert env == {
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MALLOC_TRIM_THRESHOLD_": None,
            }
        holder: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: holder.setdefault(
                "result",
                predict_cohort(
                    run_dir,
                    [CohortSlide(p) for p in big],
                    out,
                    scheduler=cluster.scheduler_address,
                    device="cpu",
                    tile_px=TILE_PX,
                    batch_size=1,
                    threads_per_worker=1,
                    progress=False,
                ),
            )
        )
        thread.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            for name in ("B0",):
                try:
                    done = int(DenseMapStore.open(out / f"{name}.zarr").done_mask.sum())
                except Exception:
                    continue
                if done >= 3:
                    pids = client.run(os.getpid)
                    busy = [
                        w
                        for w, keys in client.processing().items()
                        if any(name in str(k) for k in keys)
                    ]
                    if busy:
                        os.kill(pids[busy[0]], signal.SIGKILL)
                        killed = (name, done)
                        break
            time.sleep(0.02)
        thread.join(timeout=300)
    assert killed is not None, "no slide was caught mid-prediction"
    result = holder["result"]
    assert result.n_complete == 1, result.rows
    name = killed[0]
    store = DenseMapStore.open(out / f"{name}.zarr")
    assert store.status == "complete"
    row = {r["name"]: r for r in result.rows}[name]
    assert int(row["tiles_computed"]) < int(row["tiles"])  # the retry resumed, not restarted
    ref = _reference(run_dir, tmp_path / f"{name}.ome.tif", tmp_path / "ref.zarr", batch_size=1)
    np.testing.assert_array_equal(_features(out / f"{name}.zarr"), _features(ref))


# ------------------------------------------------------------------------------ every model


def _own_models() -> list[str]:
    from napari_histoexpress.models.registry import available_models, get_model_class

    return [
        m
        for m in available_models()
        if get_model_class(m).__module__.startswith("napari_histoexpress.")
    ]


@pytest.mark.parametrize("model_name", _own_models())
def test_a_cohort_slide_task_works_for_every_registered_model(
    model_name: str, slides: Path, tmp_path: Path
) -> None:
    """The worker's task, in this process, with each registered model's contract instance."""
    from napari_histoexpress.models.registry import get_model_class

    torch.manual_seed(0)
    model = get_model_class(model_name).contract_instance()
    genes = [f"G{i}" for i in range(model.n_genes)]
    model.set_genes(genes, model.input_spec().mpp or 4.0)
    save_checkpoint(tmp_path / "run", model, {"contract": True})
    task = SlideTask("S3", str(slides / "S3.ome.tif"), str(tmp_path / "S3.zarr"))
    row = predict_cohort_slide(
        task, CohortSettings(str(tmp_path / "run"), device="cpu", tile_px=TILE_PX)
    )
    assert row["status"] == "complete", row["error"]
    store = DenseMapStore.open(tmp_path / "S3.zarr")
    assert store.status == "complete" and store.genes == genes
    assert np.isfinite(store.gene_means()).all()


# ------------------------------------------------------------------------------ summary


def test_summarize_one_observation_per_complete_slide(
    predicted: tuple[Path, Any], slides: Path, tmp_path: Path
) -> None:
    from napari_histoexpress.inference.cohort_summary import _tissue_pixels, summarize_cohort
    from napari_histoexpress.inference.spots import predict_circles

    out, _ = predicted
    circles = pd.DataFrame(
        {
            "name": ["centre", "corner"],
            "x_um": [600.0, 80.0],
            "y_um": [600.0, 80.0],
            "diameter_um": [300.0, 55.0],
        }
    )
    adata = summarize_cohort(out, circles=circles)
    assert list(adata.obs_names) == ["S1", "S2", "S3"] and list(adata.var_names) == GENES
    assert list(adata.obs["patient"]) == ["P1", "P2", "P1"]
    not_done = adata.uns["cohort"]["not_summarised"]
    assert sorted(not_done["name"]) == ["broken", "glass", "missing"]
    assert all(s == "failed" for s in not_done["status"])
    for i, name in enumerate(adata.obs_names):
        store = DenseMapStore.open(out / f"{name}.zarr")
        # the tissue pixels of level 0 (small enough to be the chosen level): finite
        # predictions whose centre lies on the store's tissue mask
        assert adata.obs["quantile_level"].iloc[i] == 0
        on_tissue = _tissue_pixels(store, 0)
        assert on_tissue is not None
        maps = np.asarray(store.gene_maps(GENES, 0))
        pixels = maps[np.isfinite(maps).all(axis=2) & on_tissue]
        np.testing.assert_allclose(adata.X[i], pixels.mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(
            adata.layers["q50"][i], np.quantile(pixels, 0.5, axis=0), rtol=1e-5
        )
        # the resampled mask covers what the mask itself covers (within its coarse pixels)
        tissue, summarised = adata.obs.iloc[i][["tissue_area_mm2", "summarised_area_mm2"]]
        assert 0.85 < summarised / tissue < 1.1
        assert (adata.layers["q10"][i] <= adata.layers["q90"][i]).all()
        regions = predict_circles(store, circles)
        np.testing.assert_allclose(
            adata.layers["region:centre"][i], np.asarray(regions.X)[0], rtol=1e-6
        )
        # tissue area: the store's tissue mask in mm², at most the slide's 1.2 × 1.2 mm
        assert 0.3 < adata.obs["tissue_area_mm2"].iloc[i] <= 1.2 * 1.2 + 1e-6
    assert adata.obs["model"].iloc[0] == "pixnet"
    path = tmp_path / "cohort.h5ad"
    adata.write_h5ad(path)
    import anndata as ad

    back = ad.read_h5ad(path)
    assert list(back.uns["cohort"]["not_summarised"]["name"]) == list(not_done["name"])


def test_report_is_self_contained_and_renders_in_chromium(
    predicted: tuple[Path, Any], tmp_path: Path
) -> None:
    from napari_histoexpress.inference.cohort_summary import summarize_cohort, write_cohort_report

    out, _ = predicted
    adata = summarize_cohort(out)
    html_path = write_cohort_report(
        out, adata, genes=["ERBB2", "PTPRC"], out=tmp_path / "report.html"
    )
    text = html_path.read_text()
    for name in ("S1", "S2", "S3", "broken", "glass", "missing", "truncated", "no tissue"):
        assert name in text
    assert "http" not in text.replace("http-equiv", "") and "<script" not in text
    pngs = sorted((tmp_path / "report_files").glob("*.png"))
    assert [p.stem for p in pngs] == ["S1", "S2", "S3"]
    with pytest.raises(ValueError, match="NOPE"):
        write_cohort_report(out, adata, genes=["NOPE"], out=tmp_path / "r2.html")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium to render the report (apt install chromium)")
    import subprocess

    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (1600, 1200)
    assert (img.std(axis=2) > 30).mean() > 0.02  # the coloured heatmaps are drawn


# ------------------------------------------------------------------------------ CLI, napari


def test_cli_cohort_predict_and_summarize(
    run_dir: Path, slides: Path, cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_histoexpress.cli import main

    out = tmp_path / "maps"
    args = [
        "cohort",
        "predict",
        "--run",
        str(run_dir),
        "--slides",
        str(slides / "S*.ome.tif"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--tile-px",
        str(TILE_PX),
        "--scheduler",
        cluster.scheduler_address,
    ]
    assert main(args) == 0
    assert "3 complete, 0 failed" in capsys.readouterr().out
    listing = ["--slides-file", str(slides / "list.csv")]
    assert main([*args[:4], *listing, *args[6:]]) == 1  # the failed slides: exit status 1
    err = capsys.readouterr().err
    assert "failed: broken" in err and "truncated" in err
    h5ad = tmp_path / "cohort.h5ad"
    assert main(["cohort", "summarize", "--maps", str(out), "--out", str(h5ad)]) == 0
    printed = capsys.readouterr().out
    assert "3 slides x 3 genes" in printed and "broken" in printed
    assert (out / "report.html").is_file()
    assert main(["cohort", "summarize", "--maps", str(tmp_path), "--out", str(h5ad)]) == 2
    assert "no manifest.csv" in capsys.readouterr().err
    assert (
        main(
            [
                "cohort",
                "predict",
                "--run",
                str(run_dir),
                "--slides",
                str(tmp_path / "nope*.svs"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "no slide file matches" in capsys.readouterr().err


def test_napari_finds_a_cohort_map_of_a_slide(predicted: tuple[Path, Any], slides: Path) -> None:
    from napari_histoexpress.project import complete_map, find_maps

    out, _ = predicted
    assert out / "S2.zarr" in find_maps(slides / "S2.ome.tif")  # (other tests' cohorts too)
    assert complete_map(slides / "S3.ome.tif") is not None
    assert all(p.name == "S3.zarr" for p in find_maps(slides / "S3.ome.tif"))
    assert find_maps(slides / "broken.ome.tif") == []
