"""The Zero-shot widget on a real viewer: a gene typed as a description joins an ALIGN-ST map
as a heatmap, is listed (marked zero-shot) in the Genes widget, shows its PCC against the
measured spots, and is exported with ``var['zero_shot']``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

# see test_genes_widget.py: torch's LLVM before any viewer
import timm  # noqa: F401

from dense_toys import ALIGN_ST_SEEN, align_st_sample_run
from napari_histoexpress.inference.map_store import DenseMapStore
from napari_histoexpress.widgets import _common
from napari_histoexpress.widgets._genes import GENE_ROLE, GenesWidget
from napari_histoexpress.widgets._zero_shot import SYMBOL_ROLE, ZeroShotWidget

PLUGIN = "napari-histoexpress"
SEEN = ALIGN_ST_SEEN
TEXT = "small leucine-rich proteoglycan of the stromal extracellular matrix that binds collagen"


@pytest.fixture(scope="module")
def align_st(tmp_path_factory):
    """A tiny ALIGN-ST run on the sample and its whole-slide map."""
    root = tmp_path_factory.mktemp("zero_shot_widget")
    align_st_sample_run(root)
    return root


def test_type_a_description_see_its_heatmap_and_export_it(
    make_napari_viewer, qtbot, align_st: Path, tmp_path: Path
) -> None:
    from napari_histoexpress.inference.spot_export import export_spots
    from napari_histoexpress.io.synthetic import sample_paths

    store_path = tmp_path / "map.zarr"
    shutil.copytree(align_st / "map.zarr", store_path)
    viewer = make_napari_viewer()
    widget = ZeroShotWidget(viewer)
    genes_widget = GenesWidget(viewer)
    assert "No slide with a predicted map" in widget.status.text()
    layers = viewer.open(str(sample_paths()["spots"]), plugin=PLUGIN)
    slide = next(lyr for lyr in layers if lyr.metadata.get("histoexpress") == "slide")
    _common.set_slide_map(slide, store_path)
    assert widget.store is not None and widget.run_edit.text() == str(align_st / "run")

    # the gene bank finds genes by words of their descriptions
    listed = widget.search_bank("proteoglycan")
    assert "DCN" in listed and widget.bank_list.count() == len(listed)
    item = next(
        widget.bank_list.item(i)
        for i in range(widget.bank_list.count())
        if widget.bank_list.item(i).data(SYMBOL_ROLE) == "DCN"
    )
    widget._on_bank_item(item)
    assert widget.symbol_edit.text() == "DCN" and widget.description_edit.toPlainText()

    # the user types their own description instead
    widget.description_edit.setPlainText(TEXT)
    widget.add_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert widget.last_gene == "DCN", widget.status.text()
    heat = widget.last_layer
    assert heat is not None and heat.metadata.get("gene") == "DCN" and heat in viewer.layers
    assert np.isfinite(np.asarray(heat.data[-1])).any()
    # measured spots of the slide: the zero-shot gene's PCC like any gene
    match = re.search(r"PCC DCN measured vs zero-shot .*: (-?\d+\.\d+)", widget.pcc_label.text())
    assert match, widget.pcc_label.text()
    assert float(match.group(1)) == pytest.approx(widget.last_pcc, abs=5e-4)
    # the Genes widget lists it, marked zero-shot, with the description in the tooltip
    labels = {
        genes_widget.gene_list.item(i).data(GENE_ROLE): genes_widget.gene_list.item(i)
        for i in range(genes_widget.gene_list.count())
    }
    assert "zero-shot" in labels["DCN"].text() and TEXT in labels["DCN"].toolTip()
    assert "zero-shot" not in labels["COL1A1"].text()
    store = DenseMapStore.open(store_path)
    assert store.gene_sources[-1].description == TEXT

    # exported like every gene, marked in var
    spots = [(300.0, 300.0, 100.0), (800.0, 700.0, 100.0)]
    import pandas as pd

    table = pd.DataFrame(spots, columns=["x_um", "y_um", "diameter_um"])
    table["id"] = ["a", "b"]
    out = tmp_path / "spots.h5ad"
    export_spots(store, table, out)
    import anndata as ad

    adata = ad.read_h5ad(out)
    assert "DCN" in adata.var_names
    assert bool(adata.var.loc["DCN", "zero_shot"]) and not bool(
        adata.var.loc["COL1A1", "zero_shot"]
    )
    assert adata.var.loc["DCN", "gene_description"] == TEXT

    # a description without a symbol gets a name of its own
    widget.symbol_edit.setText("")
    widget.description_edit.setPlainText("keratin intermediate filament of simple epithelia")
    widget.add_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert (
        widget.last_gene == "zero-shot-1" and "zero-shot-1" in DenseMapStore.open(store_path).genes
    )


def test_a_gene_the_model_knows_is_refused_with_a_message(
    make_napari_viewer, qtbot, align_st: Path, tmp_path: Path, monkeypatch
) -> None:
    from napari_histoexpress.io.synthetic import sample_paths

    errors: list[str] = []
    monkeypatch.setattr(_common, "notify_error", lambda msg: errors.append(str(msg)))
    store_path = tmp_path / "map.zarr"
    shutil.copytree(align_st / "map.zarr", store_path)
    viewer = make_napari_viewer()
    widget = ZeroShotWidget(viewer)
    (slide,) = [
        lyr
        for lyr in viewer.open(str(sample_paths()["image"]), plugin=PLUGIN)
        if _common.is_slide_layer(lyr)
    ]
    _common.set_slide_map(slide, store_path)
    widget.symbol_edit.setText("COL1A1")
    widget.add_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert errors and "trained on" in errors[-1]
    assert DenseMapStore.open(store_path).genes == SEEN
    widget.symbol_edit.setText("")
    widget.description_edit.setPlainText("")
    widget.add_button.click()
    assert "Type a gene symbol or a description" in errors[-1]
