"""napari sample-data contribution: the synthetic H&E tissue with Visium-like spots."""

from __future__ import annotations

import numpy as np

from ._layers import LayerDataTuple, slide_layer_data, spots_layer_data, world_kwargs


def synthetic_tissue() -> list[LayerDataTuple]:
    """Slide (pyramidal OME-TIFF), ground-truth compartments (labels) and measured spots."""
    import anndata as ad

    from .io.slides import open_slide
    from .io.synthetic import read_synthetic_truth, sample_paths

    paths = sample_paths()
    slide = open_slide(paths["image"])
    adata = ad.read_h5ad(paths["spots"])
    truth_file = read_synthetic_truth(paths["truth"])
    labels = truth_file["compartments"]
    names = truth_file["compartment_names"]
    truth: LayerDataTuple = (
        labels,
        {
            "name": "ground truth compartments",
            **world_kwargs(slide.mpp),
            "opacity": 0.35,
            "visible": False,
            "features": {"index": np.arange(len(names)), "compartment": names},
            "metadata": {"histoexpress": "truth", "compartments": names},
        },
        "labels",
    )
    return [
        slide_layer_data(slide, name="synthetic H&E"),
        truth,
        spots_layer_data(adata, name="synthetic spots", color_by="ERBB2"),
    ]
