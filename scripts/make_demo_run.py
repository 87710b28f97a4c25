"""Train the bundled demo run ``sample_data/demo_run/`` (a small PixNet on the sample's spots).

Usage::

    python scripts/make_demo_run.py                 # rewrites sample_data/demo_run/
    python scripts/make_demo_run.py --out /tmp/run --epochs 20

What it does (deterministic: fixed seeds, CPU, one thread pool; a few minutes on 2 cores):

1. Trains PixNet on the 207 measured spots of the synthetic sample with exactly the
   training of ``histoexpress demo``, :data:`napari_histoexpress.demo.DEMO_TRAINING`
   (4 µm/px working resolution, 384 µm crops, 40 epochs, cosine lr) and its **small**
   model: the ResNet18 stem + layer1–2 only (``out_indices=(1, 2)``; timm's
   ``features_only`` drops layer3–4, ~0.7 M parameters) and a 32-channel decoder, so the
   weights fit a < 2 MiB file. (The shipped run predates the cosine schedule: constant lr,
   same model; r = 0.86.)
2. Stores the weights as float16 (``load_checkpoint`` casts them back to the model's
   float32 parameters) next to ``config.json``; no ``resume/`` state is shipped.
3. Predicts the sample slide with the stored run and prints the Pearson r of the marker
   gene's dense map against the synthetic ground truth
   (:func:`napari_histoexpress.demo.heatmap_vs_truth_png`).

Each written file must stay under 2 MiB (the script fails otherwise).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_histoexpress.demo import DEMO_TRAINING  # noqa: E402  (after the path tweak)

MAX_BYTES = 2 * 1024 * 1024
#: Model of the bundled run: the demo's own (one configuration, see DEMO_TRAINING).
DEMO_RUN_MODEL: dict[str, Any] = dict(DEMO_TRAINING["model_config"])
#: Training length of the bundled run: the demo's own.
DEMO_RUN_EPOCHS = int(DEMO_TRAINING["epochs"])
MARKER_GENE = "ERBB2"


def train_demo_run(out: Path, *, epochs: int = DEMO_RUN_EPOCHS, seed: int = 0) -> Path:
    """Train into a temporary folder and write the float16 checkpoint to ``out``."""
    import torch

    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.train import TrainConfig, train

    torch.manual_seed(seed)
    cfg = TrainConfig(
        **{
            **DEMO_TRAINING,
            "epochs": epochs,
            "device": "cpu",
            "seed": seed,
            "model_config": dict(DEMO_RUN_MODEL),
        }
    )
    section = load_section(sample_paths()["spots"])
    with tempfile.TemporaryDirectory(prefix="demo_run-") as tmp:
        run = train([section], Path(tmp) / "run", cfg, progress=False)
        model, meta = load_checkpoint(run)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"PixNet {DEMO_RUN_MODEL}: {n_params / 1e6:.2f} M parameters, {len(meta['genes'])} genes")
    model.half()  # float16 weights; the loader casts them back into float32 parameters
    extra = {**meta["extra"], "bundled_demo_run": True, "weights_dtype": "float16"}
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, model, meta["config"], meta["genes"], extra=extra)
    for path in staging.iterdir():
        path.chmod(0o644)  # written through mkstemp (0600); shipped files are world-readable
        size = path.stat().st_size
        if size >= MAX_BYTES:
            shutil.rmtree(staging)
            raise SystemExit(f"{path.name} is {size / 2**20:.2f} MiB, over the 2 MiB limit")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def measure(run: Path, gene: str = MARKER_GENE) -> float:
    """Predict the sample slide with ``run``; Pearson r of ``gene``'s map vs the truth."""
    from napari_histoexpress.demo import heatmap_vs_truth_png
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.predict_run import predict_with_run
    from napari_histoexpress.io.synthetic import sample_paths

    with tempfile.TemporaryDirectory(prefix="demo_map-") as tmp:
        store_path = Path(tmp) / "sample.zarr"
        predict_with_run(run, sample_paths()["image"], store_path, device="cpu")
        store = DenseMapStore.open(store_path)
        return heatmap_vs_truth_png(
            store, gene, sample_paths()["truth"], Path(tmp) / f"{gene}_heatmap.png"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "sample_data" / "demo_run")
    parser.add_argument("--epochs", type=int, default=DEMO_RUN_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    run = train_demo_run(args.out, epochs=args.epochs, seed=args.seed)
    t_train = time.perf_counter() - t0
    for path in sorted(run.iterdir()):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    r = measure(run)
    print(
        f"{MARKER_GENE}: dense map vs ground truth, Pearson r = {r:.3f} "
        f"(trained in {t_train:.0f} s, {time.perf_counter() - t0:.0f} s in all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
