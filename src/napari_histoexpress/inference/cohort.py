"""Predict a cohort of slides on a dask.distributed cluster (Qt-free; ``histoexpress cohort
predict``).

One task per slide, each predicting the slide into its own map store
``<cohort folder>/<name>.zarr`` (names: :func:`~..io.cohort_files.assign_names`) with
:func:`~.predict_run.predict_loaded`, for any registered model (dense models through the
tiled predictor, spot models through the patch lattice).

Cluster
    A :class:`distributed.LocalCluster` of ``workers`` processes by default, or any running
    scheduler (``scheduler="tcp://host:8786"``: a SLURM/PBS cluster started with
    dask-jobqueue, a Kubernetes one with dask-kubernetes; nothing here knows which). On a
    machine with CUDA GPUs and ``dask-cuda`` installed, ``LocalCUDACluster`` starts one
    worker per GPU (each sees one device); without dask-cuda, worker ``i`` of the local
    cluster uses ``cuda:i mod n_gpus``.

    Each worker runs **one slide at a time** (``nthreads=1``: a slide's tiles already fill
    the worker's cores), and ``threads_per_worker`` is the number of torch threads per
    worker (default: the machine's cores divided among the workers, so two workers on two
    cores do not oversubscribe them). Workers of an external scheduler should be started
    with ``--nthreads 1`` for the same reason.

Model cache
    The run is loaded **once per worker process** (:func:`worker_run`: a module-level cache
    keyed by run folder and device, behind a lock), not once per task; :data:`RUN_LOADS`
    counts the loads of this process (the tests read it on every worker).

Manifest, resume, failures
    Only the driver writes ``manifest.csv`` (:func:`~..io.cohort_files.write_manifest`,
    atomic), after each finished slide. A re-run skips slides whose row is ``complete``,
    whose map store says ``complete`` and whose file checksum is unchanged; every other
    slide is resumed from its finished tiles (``predict_loaded(resume=True)``: the map of a
    resumed slide equals an uninterrupted one). A slide that raises (missing, truncated or
    unreadable file, no µm/px, no tissue) becomes a ``failed`` row with its error and the
    others go on: the task catches the error and returns it, so dask's retries are kept for
    what only a cluster can mend, a worker process that dies mid-slide: the scheduler
    reschedules its task on another worker (up to ``distributed.scheduler.allowed-failures``
    deaths, 3 by default, then the slide is failed with dask's ``KilledWorker``), and the
    new attempt resumes the partial store. Interrupting the driver (Ctrl-C) cancels the
    tasks and leaves the unfinished rows ``pending``; re-running resumes them.

    A slide with no tissue at all (every tile background) is ``failed`` ("no tissue
    detected"): an empty map is no prediction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import HistoExpressError, InputFileError
from ..io.cohort_files import (
    MANIFEST_NAME,
    CohortSlide,
    assign_names,
    checksum_if_changed,
    read_manifest,
    slide_name,
    write_manifest,
)
from .predict_run import LoadedRun, check_run, load_run, predict_loaded

__all__ = [
    "RUN_LOADS",
    "CohortResult",
    "CohortSettings",
    "SlideTask",
    "cohort_client",
    "default_torch_threads",
    "local_cluster",
    "predict_cohort",
    "predict_cohort_slide",
    "worker_environment",
    "worker_run",
]

log = logging.getLogger(__name__)

#: Loads of a run by :func:`worker_run` in this process (one per worker process and run).
RUN_LOADS = {"count": 0}
_RUNS: dict[tuple[str, str], LoadedRun] = {}
_RUNS_LOCK = threading.Lock()


@dataclass(frozen=True)
class CohortSettings:
    """What every slide task of a cohort shares (sent to the workers)."""

    run_dir: str
    device: str = "auto"
    tile_px: int = 512
    batch_size: int = 4
    precision: str = "auto"
    pitch_um: float | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class SlideTask:
    """One slide to predict: where it is and where its map goes."""

    name: str
    slide: str
    map_path: str
    mpp: float | None = None
    resume: bool = True
    #: the slide's previous manifest row (its size/mtime/checksum), if any
    recorded: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortResult:
    """What :func:`predict_cohort` did: the manifest's rows and counts of this call."""

    manifest: Path
    rows: list[dict[str, Any]]
    n_submitted: int
    n_skipped: int
    n_complete: int
    n_failed: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.n_submitted} slides predicted in {self.seconds:.1f} s: "
            f"{self.n_complete} complete, {self.n_failed} failed; {self.n_skipped} already "
            f"complete (skipped); manifest: {self.manifest}"
        )


# ------------------------------------------------------------------------------ worker side


def worker_run(run_dir: str, device: str) -> LoadedRun:
    """The run loaded in this process (once per run folder and device)."""
    key = (str(Path(run_dir).resolve()), device)
    with _RUNS_LOCK:
        loaded = _RUNS.get(key)
        if loaded is None:
            loaded = load_run(run_dir, device=device)
            _RUNS[key] = loaded
            RUN_LOADS["count"] += 1
        return loaded


def _worker_device(device: str) -> str:
    """``device`` for this worker: on a CUDA machine, one GPU per worker (module docstring)."""
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    n_gpus = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return "cuda"
    index = name if isinstance(name, int) else int(name) if str(name).isdigit() else None
    if n_gpus <= 1 or index is None:
        return "cuda"  # dask-cuda (each worker sees one device) or an unnamed worker
    return f"cuda:{index % n_gpus}"


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def predict_cohort_slide(task: SlideTask, settings: CohortSettings) -> dict[str, Any]:
    """Predict one slide (a worker's task): its manifest row, ``failed`` with the error
    when anything goes wrong with this slide."""
    import dask

    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "name": task.name,
        "slide": task.slide,
        "map": Path(task.map_path).name,
        "mpp": "" if task.mpp is None else task.mpp,
        "worker": _worker_address(),
        **task.metadata,
    }
    try:
        if not Path(task.slide).is_file():
            raise InputFileError(task.slide, "slide file not found")
        checksum, size, mtime_ns = checksum_if_changed(task.slide, task.recorded)
        row.update(checksum=checksum, size=size, mtime_ns=mtime_ns)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(int(settings.torch_threads))
        loaded = worker_run(settings.run_dir, _worker_device(settings.device))
        with dask.config.set(scheduler="threads"):
            report = predict_loaded(
                loaded,
                task.slide,
                task.map_path,
                slide_mpp=task.mpp,
                tile_px=settings.tile_px,
                batch_size=settings.batch_size,
                precision=settings.precision,
                resume=task.resume,
                pitch_um=settings.pitch_um,
            )
        row.update(
            tiles=report.n_tiles,
            tiles_computed=report.n_computed,
            tiles_per_s=round(report.tiles_per_s, 3),
        )
        if report.n_tiles and report.n_skipped_background == report.n_tiles:
            raise InputFileError(
                task.slide, f"no tissue detected (all {report.n_tiles} tiles are background)"
            )
        row.update(status="complete" if report.status == "complete" else "pending", error="")
    except HistoExpressError as exc:  # a problem of this slide; the cohort goes on
        log.info("cohort slide %s failed: %s", task.slide, exc)
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # anything else, with its traceback in the worker's log
        log.warning("cohort slide %s failed", task.slide, exc_info=True)
        message = f"{type(exc).__name__}: {exc}"
        row.update(status="failed", error=message)
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row


# ------------------------------------------------------------------------------ driver side


def default_torch_threads(workers: int) -> int:
    """The machine's cores divided among ``workers`` (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def worker_environment(threads: int) -> dict[str, Any]:
    """Environment of the local cluster's worker processes (set before they start).

    dask's default (``distributed.nanny.pre-spawn-environ``) pins ``OMP_NUM_THREADS`` and
    the BLAS thread counts to 1, right for many one-thread tasks per worker; a cohort worker
    runs one slide at a time on ``threads`` cores, so OpenMP and BLAS get ``threads`` (the
    numpy work of a slide: the head, pyramid pooling). dask's ``MALLOC_TRIM_THRESHOLD_``
    (65,536) is dropped: with it glibc hands freed memory back to the OS at once, and a
    torch forward pass, which allocates and frees large activations per layer, ran
    ~1.5× slower in a worker than in the driver (measured with ResNet18 on CPU;
    ``benchmarks/bench_cohort.py`` times the forward pass here, in a worker with dask's
    environment and in one with this). Memory stays flat across slides without it
    (benchmark: peak RSS per worker vs slide size).
    """
    import dask

    n = max(1, int(threads))
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n})
    return env


def local_cluster(workers: int = 1, *, threads: int | None = None, device: str = "auto") -> Any:
    """The cohort's local cluster (module docstring): dask-cuda's ``LocalCUDACluster`` on a
    CUDA machine where it is installed, else a ``LocalCluster`` of ``workers`` processes;
    one task at a time per worker; workers started with :func:`worker_environment` of
    ``threads`` (default :func:`default_torch_threads`). Close it when done."""
    import dask

    try:
        from distributed import LocalCluster
    except ImportError as exc:  # a core dependency; only a broken install lacks it
        raise HistoExpressError(f"dask.distributed is not installed ({exc})") from exc
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    env = worker_environment(threads or default_torch_threads(workers))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        if device in ("auto", "cuda") and _cuda_count() > 0:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                pass
            else:
                return LocalCUDACluster(threads_per_worker=1, dashboard_address=":0")
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )


@contextmanager
def cohort_client(
    scheduler: str | None = None,
    *,
    workers: int = 1,
    device: str = "auto",
    threads: int | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``scheduler``, or to a new
    :func:`local_cluster` that is closed on exit."""
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise HistoExpressError(
                f"cannot connect to the dask scheduler {scheduler}: {exc}"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(workers, threads=threads, device=device)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        # a worker busy in torch may outlive the nanny's 4 s of patience and be killed:
        # expected at shutdown, not worth a warning
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        nanny.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            nanny.setLevel(level)


def _cuda_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _row_key(path: str | os.PathLike[str]) -> str:
    return str(Path(path).resolve())


def _is_complete(row: dict[str, Any], folder: Path) -> bool:
    """A manifest row whose map is complete and whose slide file is unchanged."""
    from .map_store import DenseMapStore

    if row.get("status") != "complete" or not row.get("map"):
        return False
    try:
        if DenseMapStore.open(folder / str(row["map"]), mode="r").status != "complete":
            return False
    except Exception:  # a missing or broken store is predicted again
        return False
    slide = str(row["slide"])
    if not Path(slide).is_file():
        return True  # the slide moved away; its finished map still stands
    checksum, _, _ = checksum_if_changed(slide, row)
    return checksum == row.get("checksum")


def plan_cohort(
    slides: Sequence[CohortSlide], out_dir: Path, *, restart: bool = False
) -> tuple[list[dict[str, Any]], list[SlideTask], int]:
    """Merge ``slides`` into the folder's manifest: ``(rows, tasks, n_skipped)``.

    Rows of the manifest for slides not in ``slides`` are kept (a cohort may grow over
    several calls); slides already recorded keep their names."""
    manifest = out_dir / MANIFEST_NAME
    old = read_manifest(manifest) if manifest.exists() else []
    rows = list(old)
    index = {_row_key(str(r["slide"])): i for i, r in enumerate(rows)}
    taken = {str(r["name"]) for r in old}
    new = [s for s in slides if _row_key(s.path) not in index]
    fresh = dict(zip((id(s) for s in new), assign_names(new), strict=True))
    for s in new:  # a new name must not clash with a recorded one
        name = fresh[id(s)]
        k = 2
        while name in taken:
            name, k = f"{fresh[id(s)]}-{k}", k + 1
        fresh[id(s)] = name
        taken.add(name)
    tasks: list[SlideTask] = []
    n_skipped = 0
    for s in slides:
        key = _row_key(s.path)
        prev = old[index[key]] if index.get(key, len(old)) < len(old) else None
        name = str(prev["name"]) if prev else fresh[id(s)]
        if prev is not None and not restart and _is_complete(prev, out_dir):
            n_skipped += 1
            continue
        mpp = s.mpp
        if mpp is None and prev is not None and str(prev.get("mpp") or "").strip():
            mpp = float(str(prev["mpp"]))
        row: dict[str, Any] = {
            **(prev or {}),
            "name": name,
            "slide": str(s.path),
            "status": "pending",
            "map": f"{name}.zarr",
            "mpp": "" if mpp is None else mpp,
            "error": "",
            **s.metadata,
        }
        if key in index:
            rows[index[key]] = row
        else:
            index[key] = len(rows)
            rows.append(row)
        tasks.append(
            SlideTask(
                name=name,
                slide=str(s.path),
                map_path=str(out_dir / f"{name}.zarr"),
                mpp=mpp,
                resume=not restart,
                recorded=prev,
                metadata=dict(s.metadata),
            )
        )
    return rows, tasks, n_skipped


def predict_cohort(
    run_dir: str | os.PathLike[str],
    slides: Sequence[CohortSlide],
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 1,
    threads_per_worker: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    tile_px: int = 512,
    batch_size: int = 4,
    precision: str = "auto",
    pitch_um: float | None = None,
    restart: bool = False,
    progress: bool = True,
) -> CohortResult:
    """Predict every slide of ``slides`` into ``out_dir`` (module docstring).

    Args:
        run_dir: a trained run folder (any registered model); checked before any cluster
            starts.
        slides: :func:`~..io.cohort_files.read_slide_list` or
            :func:`~..io.cohort_files.slides_from_globs`.
        out_dir: the cohort folder (made if needed): ``manifest.csv`` and one
            ``<name>.zarr`` per slide.
        workers: worker processes of the local cluster (ignored with ``scheduler``).
        threads_per_worker: torch threads per worker (default
            :func:`default_torch_threads`).
        scheduler: address of a running dask scheduler (instead of a local cluster).
        device, tile_px, batch_size, precision, pitch_um: as
            :func:`~.predict_run.predict_with_run`.
        restart: predict every slide again from scratch (finished maps are replaced).
        progress: a tqdm bar of finished slides.

    Raises:
        InputFileError: the run folder is not usable, the cohort folder is a file.
        HistoExpressError: dask.distributed is missing or the scheduler unreachable.
    """
    from distributed import as_completed

    t0 = time.perf_counter()
    check_run(run_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError(out, "the cohort output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    rows, tasks, n_skipped = plan_cohort(slides, out, restart=restart)
    write_manifest(manifest, rows)
    _register(out)
    threads = threads_per_worker or default_torch_threads(1 if scheduler else workers)
    settings = CohortSettings(
        run_dir=str(Path(run_dir).resolve()),
        device=device,
        tile_px=tile_px,
        batch_size=batch_size,
        precision=precision,
        pitch_um=pitch_um,
        torch_threads=threads,
    )
    index = {str(r["name"]): i for i, r in enumerate(rows)}
    n_complete = n_failed = 0
    if tasks:
        bar = _bar(len(tasks), progress)
        with cohort_client(scheduler, workers=workers, device=device, threads=threads) as client:
            token = uuid.uuid4().hex[:8]
            futures = {
                client.submit(
                    predict_cohort_slide,
                    task,
                    settings,
                    key=f"cohort-{task.name}-{token}",
                    pure=False,
                ): task
                for task in tasks
            }
            try:
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        row = future.result()
                    except Exception as exc:  # KilledWorker after too many deaths, …
                        row = {
                            **rows[index[task.name]],
                            "status": "failed",
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    rows[index[task.name]] = {**rows[index[task.name]], **row}
                    n_complete += row["status"] == "complete"
                    n_failed += row["status"] == "failed"
                    write_manifest(manifest, rows)
                    if bar is not None:
                        bar.set_postfix_str(f"{slide_name(task.slide)} {row['status']}")
                        bar.update(1)
            except BaseException:
                client.cancel(list(futures))
                write_manifest(manifest, rows)
                raise
            finally:
                if bar is not None:
                    bar.close()
    return CohortResult(
        manifest=manifest,
        rows=rows,
        n_submitted=len(tasks),
        n_skipped=n_skipped,
        n_complete=n_complete,
        n_failed=n_failed,
        seconds=time.perf_counter() - t0,
    )


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="slide", desc="cohort")


def _register(folder: Path) -> None:
    """Tell the project-folder logic about this cohort (napari finds its maps)."""
    from ..io.cohort_files import register_cohort

    try:
        register_cohort(folder)
    except OSError as exc:  # a read-only cache must not stop the prediction
        log.warning("could not register the cohort folder %s: %s", folder, exc)


def with_mpp(slide: CohortSlide, mpp: float | None) -> CohortSlide:
    """``slide`` with ``mpp`` where it has none (the CLI's ``--mpp`` for every slide)."""
    return slide if slide.mpp is not None or mpp is None else replace(slide, mpp=mpp)
