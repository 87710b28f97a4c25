"""The run bundled in sample_data/demo_run: small, loads, and predicts the sample's truth."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Pearson r of ERBB2's dense map vs the synthetic ground truth (over tissue) must exceed
#: this. Measured for the shipped run (scripts/make_demo_run.py, 40 epochs): 0.86 (KRT19
#: 0.88, COL1A1 0.88, PTPRC 0.73); the same architecture with random weights scores -0.10
#: and -0.09 (seeds 0, 1). 0.6 leaves room for float differences between machines and
#: torch versions while failing on a broken or badly retrained run.
MIN_R = 0.6


def test_bundled_run_is_small_and_float16() -> None:
    from safetensors import safe_open

    from napari_histoexpress.demo import bundled_demo_run
    from napari_histoexpress.models.checkpoint import load_checkpoint

    run = bundled_demo_run()
    assert run.name == "demo_run" and run.parent.name == "sample_data"
    for path in run.iterdir():
        assert path.stat().st_size < 2 * 1024 * 1024, path
    with safe_open(str(run / "weights.safetensors"), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    model, meta = load_checkpoint(run)
    assert meta["model_config"]["out_indices"] == [1, 2]
    assert meta["extra"]["microns_per_pixel"] > 0 and "ERBB2" in meta["genes"]
    params = list(model.parameters())
    assert {str(p.dtype) for p in params} == {"torch.float32"}  # cast back on load
    assert sum(p.numel() for p in params) < 1_000_000  # ResNet18 truncated after layer2


def test_bundled_run_predicts_the_sample(tmp_path: Path) -> None:
    from napari_histoexpress.demo import bundled_demo_run, heatmap_vs_truth_png
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.predict_run import predict_with_run
    from napari_histoexpress.io.synthetic import sample_paths

    paths = sample_paths()
    report = predict_with_run(bundled_demo_run(), paths["image"], tmp_path / "s.zarr", device="cpu")
    assert report.status == "complete"
    store = DenseMapStore.open(tmp_path / "s.zarr")
    r = heatmap_vs_truth_png(store, "ERBB2", paths["truth"], tmp_path / "erbb2.png")
    assert r > MIN_R, f"ERBB2 dense map vs truth: Pearson r = {r:.3f}"
    assert (tmp_path / "erbb2.png").stat().st_size > 0


def test_missing_bundled_run_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import napari_histoexpress.demo as demo
    from napari_histoexpress.errors import InputFileError

    monkeypatch.setattr(demo, "DEMO_RUN_FOLDER", "no_such_run")
    with pytest.raises(InputFileError, match=r"make_demo_run\.py"):
        demo.bundled_demo_run()
