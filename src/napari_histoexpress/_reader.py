"""napari reader contribution: slides (one multiscale RGB layer) and ST data (slide + spots).

Dispatch only; the reading is done by :mod:`napari_histoexpress.io`. A slide whose project
folder already holds a complete dense-map store (:func:`napari_histoexpress.project.complete_map`)
opens with that store recorded in ``metadata["histoexpress_map"]`` (the key of
``_layers.MAP_KEY``), so a slide predicted once shows its genes again with no
computation.

A slide whose project folder holds a µm/px the user set in the Predict widget
(:mod:`napari_histoexpress.slide_settings`) opens at that µm/px (it overrides the file's own
metadata; ``mpp_source`` says so): a plain JPEG whose resolution was typed once is in µm
every time it is reopened. An unreadable settings file is logged and ignored.

A heatmap OME-TIFF written by ``histoexpress export heatmap``
(:func:`napari_histoexpress.io.heatmap_tiff.is_heatmap_tiff`) opens as gene heatmap layers
(:func:`._layers.heatmap_tiff_layers`), not as a slide.

A QuPath GeoJSON file (``.geojson``) opens as a Shapes layer of its polygon annotations,
on the slide beside it with the same name (:mod:`._region_layers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._layers import MAP_KEY, LayerDataTuple, heatmap_tiff_layers, slide_layer_data, st_layers

ReaderFunction = Callable[[Any], list[LayerDataTuple]]

log = logging.getLogger(__name__)


def _with_stored_map(layer: LayerDataTuple, slide_path: Path) -> LayerDataTuple:
    """Record the slide's stored complete map (if any) in the layer's metadata."""
    from .project import complete_map

    try:
        stored = complete_map(slide_path)
    except OSError as exc:  # an unreadable project folder never blocks opening the slide
        log.warning("%s: cannot look for stored maps (%s)", slide_path, exc)
        stored = None
    if stored is not None:
        layer[1]["metadata"][MAP_KEY] = str(stored)
    return layer


def _saved_mpp(slide_path: Path) -> float | None:
    """The µm/px saved in the slide's project folder (``None``: none, or unreadable)."""
    from .errors import InputFileError
    from .slide_settings import load_mpp

    try:
        return load_mpp(slide_path)
    except (InputFileError, OSError) as exc:  # never blocks opening the slide
        log.warning("%s", exc)
        return None


def _open_slide_layer(path: Path) -> LayerDataTuple:
    from .io.slides import open_slide
    from .slide_settings import MPP_SOURCE

    mpp = _saved_mpp(path)
    layer = slide_layer_data(open_slide(path, mpp=mpp))
    if mpp is not None:
        layer[1]["metadata"]["mpp_source"] = MPP_SOURCE
    return _with_stored_map(layer, path)


def _kind(path: Path) -> str | None:
    from .io.slides import is_slide_path
    from .io.spatialdata_import import is_spatialdata_store
    from .io.visium import is_spaceranger_folder

    if path.is_dir() and is_spaceranger_folder(path):
        return "st"
    if path.is_dir() and is_spatialdata_store(path):
        return "st"  # its table + image (io.spatialdata_import)
    if path.suffix.lower() == ".h5ad":
        return "st"
    if path.suffix.lower() == ".geojson" and path.is_file():
        return "regions"  # QuPath annotations (._region_layers)
    if path.is_file() and is_slide_path(path):
        from .io.heatmap_tiff import is_heatmap_tiff

        return "heatmap" if is_heatmap_tiff(path) else "slide"
    return None


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return a reader when every given path is something this plugin opens, else ``None``."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(_kind(Path(p)) is None for p in paths):
        return None
    return read


def read(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Open slides and ST datasets as napari layer-data tuples."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[LayerDataTuple] = []
    for p in map(Path, paths):
        kind = _kind(p)
        if kind == "slide":
            layers.append(_open_slide_layer(p))
        elif kind == "regions":
            from ._region_layers import read_regions_layer

            layers.append(read_regions_layer(p))
        elif kind == "heatmap":
            layers.extend(heatmap_tiff_layers(p))
        else:
            from .io.st_datasets import read_st_dataset

            layers.extend(st_layers(read_st_dataset(p), source=p))
    return layers
