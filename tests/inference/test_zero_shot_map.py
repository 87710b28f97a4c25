"""Dense zero-shot (``inference/zero_shot_map.py``, ``histoexpress zero-shot``): a gene the
model never trained on joins a finished ALIGN-ST map from its description; the features
and the other genes stay as they were; bad pairs of maps and runs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dense_toys import ALIGN_ST_SEEN, align_st_sample_run

SEEN = ALIGN_ST_SEEN


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A tiny ALIGN-ST run on the sample and its whole-slide map (two passes)."""
    root = tmp_path_factory.mktemp("zero_shot_map")
    return root, align_st_sample_run(root)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_described_gene_joins_the_map_and_nothing_else_moves(predicted, tmp_path) -> None:
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.zero_shot_map import add_zero_shot_genes

    root, _ = predicted
    path = _copy(root / "map.zarr", tmp_path / "map.zarr")
    store = DenseMapStore.open(path)
    assert set(store.model_state()) == {"prompts", "asig_z"}
    feats_before = np.asarray(store.features_level(0).compute())
    W_before, b_before = store.head
    text = "small leucine-rich proteoglycan of the extracellular matrix, binds collagen"
    result = add_zero_shot_genes(path, root / "run", ["DCN"], descriptions={"DCN": text})
    assert result.genes == ["DCN"] and "minilm" in result.encoder
    store = DenseMapStore.open(path)
    assert store.genes == [*SEEN, "DCN"]
    source = store.gene_sources[-1]
    assert (source.source, source.description) == ("zero-shot", text)
    W, b = store.head
    np.testing.assert_array_equal(W[:, : len(SEEN)], W_before)  # the other genes unchanged
    np.testing.assert_array_equal(b[: len(SEEN)], b_before)
    np.testing.assert_array_equal(np.asarray(store.features_level(0).compute()), feats_before)
    heat = np.asarray(store.gene_map("DCN").compute())
    assert np.isfinite(heat).any() and np.nanstd(heat) > 0
    # the table's description gives another column than the typed one
    add_zero_shot_genes(path, root / "run", ["DCN"], replace=True)
    assert not np.allclose(DenseMapStore.open(path).head[0][:, -1], W[:, -1])


def test_refusals_name_the_problem(predicted, tmp_path) -> None:
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.zero_shot_map import ZeroShotError, add_zero_shot_genes

    root, _ = predicted
    path = _copy(root / "map.zarr", tmp_path / "map.zarr")
    with pytest.raises(ZeroShotError, match="trained on"):
        add_zero_shot_genes(path, root / "run", ["COL1A1"])
    add_zero_shot_genes(path, root / "run", ["LUM"])
    with pytest.raises(ZeroShotError, match="already has"):
        add_zero_shot_genes(path, root / "run", ["LUM"])
    DenseMapStore.open(path, mode="r+").set_model_state({})
    with pytest.raises(ZeroShotError, match="predict the slide again"):
        add_zero_shot_genes(path, root / "run", ["DCN"])
    other = _copy(root / "run", tmp_path / "other_run")
    meta = json.loads((other / "config.json").read_text())
    meta["genes"] = list(reversed(meta["genes"]))
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ZeroShotError, match="another run"):
        add_zero_shot_genes(root / "map.zarr", other, ["DCN"])


def test_a_model_that_is_not_zero_shot_is_refused(tmp_path) -> None:
    from napari_histoexpress.inference.zero_shot_map import ZeroShotError, zero_shot_model
    from napari_histoexpress.io.synthetic import shipped_sample_folder

    demo = shipped_sample_folder() / "demo_run"
    with pytest.raises(ZeroShotError, match="only the genes it was trained on"):
        zero_shot_model(demo)


def test_cli_zero_shot(predicted, tmp_path, capsys) -> None:
    from napari_histoexpress.cli import main
    from napari_histoexpress.inference.map_store import DenseMapStore

    root, _ = predicted
    path = _copy(root / "map.zarr", tmp_path / "map.zarr")
    args = ["zero-shot", "--map", str(path), "--run", str(root / "run")]
    text = "keratin of simple epithelia"
    assert main([*args, "--gene", "KRT19", "--description", text]) == 0
    assert "added KRT19" in capsys.readouterr().out
    assert DenseMapStore.open(path).gene_sources[-1].description == text
    assert main([*args, "--gene", "KRT7", "LUM"]) == 0
    assert DenseMapStore.open(path).genes[-2:] == ["KRT7", "LUM"]
    assert main([*args, "--gene", "DCN", "VIM", "--description", "x"]) != 0
    assert "one --gene" in capsys.readouterr().err
    assert main([*args, "--gene", "COL1A1"]) != 0
    assert "trained on" in capsys.readouterr().err


def test_pixnet_text_head_map_gains_a_gene(tmp_path) -> None:
    """A dense map of PixNet's text head gains a zero-shot gene the same way (its columns
    do not depend on the slide: no state needed)."""
    from napari_histoexpress.inference.map_store import DenseMapStore
    from napari_histoexpress.inference.predict_run import predict_with_run
    from napari_histoexpress.inference.zero_shot_map import add_zero_shot_genes
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.config import TrainConfig
    from napari_histoexpress.training.sections import load_section
    from napari_histoexpress.training.train import train

    tiny = {"backbone": "resnet18", "out_indices": [1, 2], "decoder_dim": 16, "head": "text"}
    cfg = TrainConfig(
        model="pixnet", epochs=1, crops_per_epoch=4, batch_size=4, mpp=4.0, crop_um=256.0,
        device="cpu", model_config=tiny,
    )  # fmt: skip
    section = load_section(sample_paths()["spots"])
    train([section], tmp_path / "run", cfg, genes=SEEN, progress=False, log=lambda _: None)
    path = tmp_path / "map.zarr"
    predict_with_run(tmp_path / "run", sample_paths()["image"], path, device="cpu", tile_px=256)
    W_before, _ = DenseMapStore.open(path).head
    add_zero_shot_genes(path, tmp_path / "run", ["DCN"])
    store = DenseMapStore.open(path)
    assert store.genes[-1] == "DCN" and store.gene_sources[-1].source == "zero-shot"
    np.testing.assert_array_equal(store.head[0][:, : len(SEEN)], W_before)
    assert np.isfinite(np.asarray(store.gene_map("DCN").compute())).any()
