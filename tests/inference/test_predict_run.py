"""predict_with_run: a run folder + a slide -> a dense-map store (what the CLI and widget call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dense_toys import save_tiny_pixnet_run
from napari_histoexpress.errors import HistoExpressError, InputFileError
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.inference.predict_run import (
    check_run,
    load_run,
    predict_loaded,
    predict_with_run,
)
from napari_histoexpress.inference.predict_slide import predict_slide
from napari_histoexpress.models.base import InputSpec, SpotInputs, SpotModel
from napari_histoexpress.models.checkpoint import load_checkpoint, save_checkpoint
from napari_histoexpress.models.registry import register_model

GENES = ["ERBB2", "KRT19", "PTPRC"]
MODEL_MPP = 4.0


@pytest.fixture(scope="module")
def sample_slide() -> Path:
    from napari_histoexpress.io.synthetic import sample_paths

    return Path(sample_paths()["image"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pixnet_run(tmp_path_factory.mktemp("runs") / "tiny_run", GENES, MODEL_MPP)


def test_same_map_as_predict_slide_with_provenance(
    run_dir: Path, sample_slide: Path, tmp_path: Path
) -> None:
    report = predict_with_run(run_dir, sample_slide, tmp_path / "a.zarr", tile_px=128, device="cpu")
    assert report.status == "complete" and report.n_computed > 0
    model, _ = load_checkpoint(run_dir)
    predict_slide(
        model, sample_slide, tmp_path / "b.zarr", model_mpp=MODEL_MPP, tile_px=128,
        device="cpu", genes=GENES,
    )  # fmt: skip
    a = DenseMapStore.open(tmp_path / "a.zarr")
    b = DenseMapStore.open(tmp_path / "b.zarr")
    assert a.genes == GENES
    assert a.map_mpp == pytest.approx(MODEL_MPP * model.feature_stride)
    np.testing.assert_array_equal(np.asarray(a.features_level(0)), np.asarray(b.features_level(0)))
    prov = a.attrs["provenance"]
    assert prov["run_dir"] == str(run_dir.resolve())
    assert prov["model"] == "pixnet"


def test_a_run_loaded_once_predicts_many_slides(
    run_dir: Path, sample_slide: Path, tmp_path: Path
) -> None:
    """load_run + predict_loaded (a cohort worker's path): the same maps as
    predict_with_run, with the model loaded once for every slide."""
    loaded = load_run(run_dir, device="cpu")
    assert loaded.info.genes == GENES and loaded.model.gene_names == GENES
    for name in ("x.zarr", "y.zarr"):
        report = predict_loaded(loaded, sample_slide, tmp_path / name, tile_px=128)
        assert report.status == "complete"
    predict_with_run(run_dir, sample_slide, tmp_path / "ref.zarr", tile_px=128, device="cpu")
    ref = np.asarray(DenseMapStore.open(tmp_path / "ref.zarr").features_level(0))
    for name in ("x.zarr", "y.zarr"):
        store = DenseMapStore.open(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(store.features_level(0)), ref)
        assert store.attrs["provenance"]["run_dir"] == str(run_dir.resolve())
    if not torch.cuda.is_available():  # refused before anything is loaded
        with pytest.raises(HistoExpressError, match="cuda"):
            load_run(run_dir, device="cuda")


def test_cancel_then_resume_keeps_finished_tiles(
    run_dir: Path, sample_slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.zarr"
    seen: list[tuple[int, int]] = []

    def stop() -> bool:  # stop once the first batch is written
        return any(done > seen[0][0] for done, _ in seen)

    first = predict_with_run(
        run_dir, sample_slide, out, tile_px=64, device="cpu",
        progress=lambda d, t: seen.append((d, t)), should_stop=stop,
    )  # fmt: skip
    assert first.status == "partial"
    assert 0 < first.n_computed < first.n_tiles - first.n_skipped_background
    done_before = DenseMapStore.open(out).done_mask.copy()
    second = predict_with_run(run_dir, sample_slide, out, tile_px=64, device="cpu")
    assert second.status == "complete"
    assert second.n_already_done == int(done_before.sum())
    assert second.n_computed == first.n_tiles - int(done_before.sum())


def test_errors_name_the_run(run_dir: Path, sample_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not a checkpoint folder"):
        predict_with_run(tmp_path, sample_slide, tmp_path / "x.zarr")
    with pytest.raises(InputFileError, match="run folder not found"):
        check_run(tmp_path / "missing")

    no_mpp = tmp_path / "no_mpp"
    no_mpp.mkdir()
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["working_mpp"] == meta["extra"]["microns_per_pixel"] == MODEL_MPP
    meta["extra"] = {}
    meta.pop("working_mpp")  # a run that records neither
    (no_mpp / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=r"config\.json.*microns_per_pixel"):
        predict_with_run(no_mpp, sample_slide, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_unavailable_device_is_refused(
    run_dir: Path, sample_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HistoExpressError, match="CUDA is not available"):
        predict_with_run(run_dir, sample_slide, tmp_path / "x.zarr", device="cuda")


@register_model("test-spot-only")
class _SpotOnly(torch.nn.Module, SpotModel):
    """A registered spot model without a dense map (like the ridge baseline).

    Complete enough for the model contract (tests/models/test_contract.py), which covers it
    when it is registered in the same session."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 2)
        self.head = torch.nn.Linear(2, 2)

    @classmethod
    def from_config(cls, config: dict) -> _SpotOnly:
        return cls()

    def config_dict(self) -> dict:
        return {}

    @classmethod
    def contract_config(cls) -> dict:
        return {}

    @property
    def feature_dim(self) -> int:
        return 2

    def input_spec(self) -> InputSpec:
        return InputSpec(
            mpp=self.working_mpp, mean=(0.5,) * 3, std=(0.25,) * 3, normalizes_input=True,
            patch_px=8,
        )  # fmt: skip

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.head.weight.detach().double().numpy().T.copy()
        return w, self.head.bias.detach().double().numpy().copy()

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        assert spots.images is not None
        return self.encoder(((spots.images - 0.5) / 0.25).mean(dim=(2, 3)))


def test_spot_model_run_predicts_on_a_lattice(sample_slide: Path, tmp_path: Path) -> None:
    """A spot model (no dense map) is dispatched by its kind to the lattice predictor."""
    run = tmp_path / "spot_run"
    save_checkpoint(run, _SpotOnly(), {}, ["A", "B"], extra={"microns_per_pixel": 2.0})
    report = predict_with_run(run, sample_slide, tmp_path / "x.zarr", device="cpu", pitch_um=32)
    assert report.status == "complete"
    store = DenseMapStore.open(tmp_path / "x.zarr")
    assert store.genes == ["A", "B"] and store.map_mpp == pytest.approx(32.0)
    assert store.provenance["model"] == "test-spot-only"
    assert store.provenance["model_kind"] == "spot"
    # the default pitch: half the 8 px patch at 2 µm/px
    predict_with_run(run, sample_slide, tmp_path / "y.zarr", device="cpu", should_stop=lambda: True)
    assert DenseMapStore.open(tmp_path / "y.zarr").map_mpp == pytest.approx(8.0)


def test_slide_without_mpp(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "plain.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(png)
    with pytest.raises(InputFileError, match=r"plain\.png.*µm/px is unknown"):
        predict_with_run(run_dir, png, tmp_path / "x.zarr", device="cpu")
    report = predict_with_run(run_dir, png, tmp_path / "y.zarr", slide_mpp=0.5, device="cpu")
    assert report.status == "complete"


def test_cli_predict_precision_option(run_dir: Path, sample_slide: Path, tmp_path: Path) -> None:
    """`histoexpress predict --precision bf16` reaches the autocast (recorded in the store)."""
    from napari_histoexpress.cli import main

    out = tmp_path / "m.zarr"
    args = ["predict", "--run", str(run_dir), "--slide", str(sample_slide), "--out", str(out),
            "--tile-px", "256", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--precision", "bf16"]) == 0
    prov = DenseMapStore.open(out).attrs["provenance"]
    assert prov["autocast"] == "torch.bfloat16" and prov["device"] == "cpu"
    assert main([*args, "--restart"]) == 0  # auto on CPU = float32
    assert DenseMapStore.open(out).attrs["provenance"]["autocast"] == "float32"
    with pytest.raises(SystemExit):
        main([*args, "--precision", "half"])


def test_run_info_and_loaded_model_agree_on_the_working_mpp(run_dir: Path, tmp_path: Path) -> None:
    """One accessor: the top-level working_mpp, else extra.microns_per_pixel (older runs)."""
    model, _ = load_checkpoint(run_dir)
    assert check_run(run_dir).model_mpp == model.working_mpp == MODEL_MPP
    assert check_run(run_dir).kind == "dense"
    old = tmp_path / "old_run"
    old.mkdir()
    meta = json.loads((run_dir / "config.json").read_text())
    for key in ("working_mpp", "input", "kind"):
        meta.pop(key)
    (old / "config.json").write_text(json.dumps(meta))
    (old / "weights.safetensors").write_bytes((run_dir / "weights.safetensors").read_bytes())
    model, _ = load_checkpoint(old)
    assert check_run(old).model_mpp == model.working_mpp == MODEL_MPP
