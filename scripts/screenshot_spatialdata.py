"""Take the README's SpatialData screenshot (``docs/images/spatialdata_napari.png``).

    xvfb-run -a python scripts/screenshot_spatialdata.py --map C2.zarr --spots C2.h5ad

Exports a predicted map (``histoexpress predict`` / ``cohort predict``) with the measured
spots of an imported section (``.h5ad``: their centres and diameter) and the ERBB2 map to a
SpatialData store in a temporary folder, then opens it in napari-spatialdata
(``Interactive``): the H&E, the ERBB2 gene map and the spots as circles in the ``global``
coordinate system. Nothing is written to the repository but the PNG.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from screenshots import REPO, _grab_window, _wait_until


def spots_of(h5ad: Path) -> pd.DataFrame:
    import anndata as ad

    from napari_histoexpress.io import spatial

    adata = ad.read_h5ad(h5ad)
    mpp = spatial.microns_per_pixel(adata)
    if mpp is None:
        raise SystemExit(f"{h5ad}: µm/px unknown")
    xy = spatial.spot_centres_px(adata) * mpp
    d = spatial.spot_diameter_px(adata) * mpp
    return pd.DataFrame({"id": adata.obs_names.astype(str), "x_um": xy[:, 0],
                         "y_um": xy[:, 1], "diameter_um": d, "source": "drawn"})  # fmt: skip


def spatialdata_screenshot(map_path: Path, spots: Path, gene: str, out: Path, work: Path) -> Path:
    import napari
    import spatialdata
    from napari_spatialdata import Interactive

    from napari_histoexpress.inference.spatialdata_export import export_spatialdata

    result = export_spatialdata(map_path, work / "slide.sdata.zarr", spots_of(spots),
                                genes=[gene])  # fmt: skip
    print(result.elements, result.warnings)
    sdata = spatialdata.read_zarr(result.path)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 950)
    interactive = Interactive(sdata, headless=True)
    loader = interactive._sdata_widget.worker_thread
    names = [n for n, kind in result.elements.items() if kind != "tables"]
    order = sorted(names, key=lambda n: (not n.endswith("_image"), n.endswith("_spots")))
    for i, name in enumerate(order):
        interactive.add_element(name, "global")
        _wait_until(lambda i=i: len(viewer.layers) > i and not loader.isRunning(), name)
    for layer in viewer.layers:
        if layer.name.endswith("_gene_maps"):
            layer.colormap = "magma"
            layer.opacity = 0.45
            data = np.asarray(layer.data[-1] if layer.multiscale else layer.data)
            lo, hi = np.nanpercentile(data, [1, 99])
            layer.contrast_limits = (float(lo), float(hi))
        if layer.name.endswith("_spots"):
            print("spots", layer.data.shape, np.unique(layer.size)[:3])
            layer.face_color = "transparent"
            layer.border_color = "cyan"
            layer.border_width = 0.12
    viewer.reset_view()
    try:
        return _grab_window(viewer, out / "spatialdata_napari.png")
    finally:
        viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--spots", type=Path, required=True, help="imported section .h5ad")
    parser.add_argument("--gene", default="ERBB2")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="histoexpress_sdata_shot_") as tmp:
        print(spatialdata_screenshot(args.map, args.spots, args.gene, args.out, Path(tmp)))


if __name__ == "__main__":
    main()
