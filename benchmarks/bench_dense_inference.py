"""Whole-slide dense inference: throughput vs the backbone alone, and peak memory vs slide size.

Run: ``python benchmarks/bench_dense_inference.py`` (under 3 minutes on 2 CPU cores;
``--sizes 2048 4096`` for bigger slides, ``--model standin`` for the stand-in model).

What it measures, from one run:

* **rate**: :func:`predict_slide` tiles/s and core Mpx/s (working-resolution pixels of the
  slide produced per second) on a synthetic tiled TIFF, against (a) the dense model's forward
  pass alone and (b) the bare backbone's forward pass alone, both on in-memory tensors of the
  same window size (tile + 2 halos) and batch size. ``dense / model-only`` is the overhead of
  reading, normalising and writing (1.0 = none); ``model-only / backbone`` the decoder's cost.
* **precision**: the model's forward pass under bf16 autocast (``--precision bf16``) against
  float32, on the same windows: ``precision='auto'`` autocasts on CUDA only; this row shows
  what bf16 would give on this machine's CPU.
* **memory**: peak RSS of a fresh process predicting a slide of side N and one of side 2N
  (4x the pixels and tiles). Streaming means the ratio stays near 1.0.

The dense model is PixNet when ``napari_histoexpress.models.pixnet`` provides one that
builds offline; otherwise a stand-in: a timm ResNet18 (``features_only``, random weights) whose
stride-4 feature map is fused with its upsampled stride-32 map (so the whole backbone runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import nn

from napari_histoexpress.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from napari_histoexpress.models.base import DenseModel, InputSpec

TILE_PX = 256
HALO_PX = 32
BATCH = 4
MPP = 0.5


class ResNetDenseStandIn(nn.Module, DenseModel):
    """timm resnet18 features_only -> stride-4 feature map of 64 channels (unregistered)."""

    def __init__(self, n_genes: int = 250) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "resnet18", pretrained=False, features_only=True, out_indices=(1, 4)
        )
        c4, c32 = self.backbone.feature_info.channels()
        self.lateral = nn.Conv2d(c4, 64, 1)
        self.top = nn.Conv2d(c32, 64, 1)
        self.head = nn.Linear(64, n_genes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f4, f32 = self.backbone(x)
        up = nn.functional.interpolate(self.top(f32), size=f4.shape[-2:], mode="nearest")
        return self.lateral(f4) + up

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ResNetDenseStandIn:
        return cls(**config)

    def config_dict(self) -> dict[str, Any]:
        return {"n_genes": self.head.out_features}

    @property
    def feature_stride(self) -> int:
        return 4

    @property
    def feature_dim(self) -> int:
        return 64

    def input_spec(self) -> InputSpec:
        """ImageNet statistics applied by the caller; windows on resnet18's 32 px grid."""
        return InputSpec(
            mpp=self.working_mpp, mean=IMAGENET_MEAN, std=IMAGENET_STD, stride=4,
            input_multiple=32,
        )  # fmt: skip

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.head.weight.detach().double().numpy().T.copy()
        return w, self.head.bias.detach().double().numpy()


def build_model(kind: str = "auto") -> tuple[nn.Module, nn.Module, str]:
    """(dense model, its backbone, description); ``kind``: auto, pixnet or standin."""
    if kind in ("auto", "pixnet"):
        try:
            from napari_histoexpress.models.pixnet import PixNet, PixNetConfig

            model = PixNet(PixNetConfig())
            return model, model.encoder, "PixNet, default config (resnet18, random init)"
        except Exception as exc:  # not available: fall back
            if kind == "pixnet":
                raise
            print(f"# PixNet not used ({type(exc).__name__}: {exc}); ResNet18 stand-in")
    model = ResNetDenseStandIn()
    return model, model.backbone, "ResNet18 features_only stand-in (random init)"


def write_slide(path: Path, side: int) -> None:
    """A tissue-like tiled RGB TIFF written tile by tile (never the whole image in RAM)."""
    rng = np.random.default_rng(0)
    base = np.array([200, 120, 170], np.float32)
    tile = np.clip(base + rng.normal(0, 30, (256, 256, 3)), 0, 255).astype(np.uint8)
    n = (-(-side // 256)) ** 2
    tifffile.imwrite(path, (tile for _ in range(n)), shape=(side, side, 3), dtype=np.uint8,
                     tile=(256, 256), photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP),
                     resolutionunit="CENTIMETER")  # fmt: skip


def child(slide: str, out: str, kind: str) -> None:
    """Predict one slide in this (fresh) process and print a JSON line."""
    from napari_histoexpress.inference.predict_slide import predict_slide

    torch.manual_seed(0)
    model, _, _ = build_model(kind)
    rep = predict_slide(
        model, slide, out, model_mpp=MPP, tile_px=TILE_PX, halo_px=HALO_PX, device="auto",
        batch_size=BATCH, resume=False,
    )  # fmt: skip
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"tiles": rep.n_computed, "tiles_per_s": rep.tiles_per_s,
                      "seconds": rep.seconds, "rss_mb": rss_mb}))  # fmt: skip


def forward_rate(fn: nn.Module | object, n_tiles: int, precision: str = "fp32") -> float:
    """Tiles/s of ``fn`` on random windows (tile + 2 halos), after one warm-up batch."""
    from napari_histoexpress.devices import autocast

    side = TILE_PX + 2 * HALO_PX
    x = torch.randn(BATCH, 3, side, side)
    with torch.inference_mode(), autocast("cpu", precision):
        fn(x)  # type: ignore[operator]
        t = time.perf_counter()
        done = 0
        while done < n_tiles:
            fn(x)  # type: ignore[operator]
            done += BATCH
    return done / (time.perf_counter() - t)


def run_child(slide: Path, out: Path, kind: str) -> dict[str, float]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, __file__, "--child", str(slide), str(out), kind],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(768, 1536))
    parser.add_argument("--model", choices=("auto", "pixnet", "standin"), default="auto")
    parser.add_argument(
        "--child", nargs=3, metavar=("SLIDE", "OUT", "KIND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, backbone, desc = build_model(args.model)
    model.eval()
    small, big = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        results = {}
        for side in (small, big):
            write_slide(tmpd / f"s{side}.tif", side)
            results[side] = run_child(tmpd / f"s{side}.tif", tmpd / f"m{side}.zarr", args.model)
    n_ref = max(2 * BATCH, int(results[small]["tiles"]))
    model_rate = forward_rate(model.features, n_ref)
    backbone_rate = forward_rate(backbone, n_ref)
    bf16_rate = forward_rate(model.features, n_ref, precision="bf16")

    mpx = TILE_PX * TILE_PX / 1e6
    dense = results[big]["tiles_per_s"]
    print(f"# dense model: {desc}; device: cpu, torch threads {torch.get_num_threads()}")
    print(f"# tile {TILE_PX} px + halo {HALO_PX} px, batch {BATCH}, slides {small}^2 and {big}^2")
    print(f"{'measure':<46}{'value':>12}{'ratio':>10}")
    rows = [
        (f"dense predict_slide ({big}^2), tiles/s", dense, 1.0),
        ("  core Mpx/s", dense * mpx, None),
        ("model forward only, tiles/s", model_rate, dense / model_rate),
        ("backbone forward only, tiles/s", backbone_rate, dense / backbone_rate),
        ("model forward only, bf16 autocast, tiles/s", bf16_rate, bf16_rate / model_rate),
        (f"peak RSS {small}^2 slide, MB", results[small]["rss_mb"], 1.0),
        (f"peak RSS {big}^2 slide (4x pixels), MB", results[big]["rss_mb"],
         results[big]["rss_mb"] / results[small]["rss_mb"]),
    ]  # fmt: skip
    for name, value, ratio in rows:
        r = "" if ratio is None else f"{ratio:.2f}"
        print(f"{name:<46}{value:>12.2f}{r:>10}")
    print("# ratios: dense/model-only and dense/backbone rates (1.0 = no overhead);")
    print("#         bf16/float32 forward rates (> 1: autocast faster on this CPU)")
    print("#         RSS big/small (1.0 = flat, 4.0 = proportional to the slide)")
    print(f"# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
