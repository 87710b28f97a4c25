"""A slide's predictions → a SpatialData store (``.zarr``), for napari-spatialdata / squidpy.

:func:`export_spatialdata` writes, with element names prefixed by the slide's library id
(``P`` = :func:`element_prefix`):

* ``P_image``: the slide as a multiscale image (``c, y, x`` uint8, levels halved until the
  smaller side is under :data:`MIN_LEVEL_SIDE`), read lazily from the slide's pyramid through
  dask and written chunk by chunk: the full-resolution image is never held in memory.
* ``P_spots`` (with spots): the spots as circles (``ShapesModel``: points with a ``radius``
  column), centres and radii in the image's full-resolution pixels — the same numbers as
  ``obsm["spatial"]`` and ``diameter_px / 2`` of the ``.h5ad`` export
  (:func:`~napari_histoexpress.inference.spot_export.spots_anndata`); shape index
  0 … n − 1.
* ``table`` (with spots): that AnnData (X = every gene's prediction over each spot, obs as in
  the ``.h5ad`` export, ``uns["histoexpress"]`` provenance, ``uns["spatial"]`` without
  thumbnails: the image element is the picture), annotating ``P_spots`` by the SpatialData
  table convention: ``obs["region"]`` (categorical, = ``"P_spots"``) is the ``region_key``
  and ``obs["instance_id"]`` (the shape index) the ``instance_key``.
* ``P_gene_maps`` (with ``genes``): the chosen genes' dense maps as one multiscale float32
  image, one channel per gene (channel names = genes), NaN where nothing was predicted
  (napari draws NaN transparent), computed per chunk from the map store's features.

Coordinate systems (every element is in both):

* ``global`` — full-resolution slide pixels (identity for the image and the spots; a scale of
  ``map_mpp / slide_mpp`` for the gene maps, whose pixel ``j`` covers slide pixels
  ``[j, j + 1) · map_mpp / slide_mpp``, the map store's convention);
* ``micrometers`` — µm from the slide's corner (a scale of ``slide_mpp``; ``map_mpp`` for the
  gene maps). :mod:`napari_histoexpress.io.ome_zarr_slides` reads the µm/px back from it.

Choices: element names carry the library id so that stores of several slides can be merged
with ``spatialdata.concatenate``; the table is named ``table`` (what napari-spatialdata and
squidpy look for first). Without a readable slide (missing file, or not the size the map was
predicted on) the store is written without the image and the result's ``warnings`` say why.
The write is atomic (:func:`~napari_histoexpress.io.export.write_folder_atomic`): a failed
export leaves no partial store and keeps an existing one.

``spatialdata`` and ``geopandas`` are the optional extra ``[spatialdata]``, imported only
lazily (:func:`~napari_histoexpress.io.spatialdata_import.require_spatialdata`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import HistoExpressError
from ..io.export import write_folder_atomic
from ..io.spatialdata_import import require_spatialdata

__all__ = [
    "MICRON_SYSTEM",
    "PIXEL_SYSTEM",
    "SpatialDataExportResult",
    "element_prefix",
    "export_spatialdata",
    "spatialdata_of",
]

#: Coordinate system of full-resolution slide pixels.
PIXEL_SYSTEM = "global"
#: Coordinate system in µm.
MICRON_SYSTEM = "micrometers"
#: Levels of the written images are halved until the smaller side is below this (px).
MIN_LEVEL_SIDE = 512
#: Chunk side of the written images (px).
CHUNK_SIDE = 1024


@dataclass
class SpatialDataExportResult:
    path: Path
    elements: dict[str, str]  # name → kind (images, shapes, tables)
    n_spots: int
    gene_maps: list[str]
    warnings: list[str] = field(default_factory=list)


def element_prefix(library_id: str | None) -> str:
    """A SpatialData element-name prefix from a library id (letters, digits, ``_ - .``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(library_id or "slide")).strip("_.-")
    return name or "slide"


def scale_factors(shape: Sequence[int], min_side: int = MIN_LEVEL_SIDE) -> list[int]:
    """Halvings (``[2, 2, ...]``) until the smaller side of ``shape`` is below ``min_side``."""
    side, out = min(int(v) for v in shape), []
    while side >= min_side:
        side //= 2
        out.append(2)
    return out


def _transforms(px_scale: float, um_scale: float) -> dict[str, Any]:
    from spatialdata.transformations import Identity, Scale

    to_px = Identity() if px_scale == 1.0 else Scale([px_scale, px_scale], axes=("y", "x"))
    return {PIXEL_SYSTEM: to_px, MICRON_SYSTEM: Scale([um_scale, um_scale], axes=("y", "x"))}


def _slide_image(
    slide_path: str | None, expected: tuple[int, int] | None, mpp: float
) -> tuple[Any | None, str | None]:
    """The slide as a ``(3, H, W)`` dask array, or ``(None, why not)``."""
    from ..io.slides import open_slide

    if not slide_path:
        return None, "the map store does not record its slide file; written without image"
    try:
        slide = open_slide(slide_path, mpp=mpp)
    except Exception as exc:  # any unreadable slide: no image, say why
        return None, f"{slide_path}: {exc}; written without image"
    if expected is not None and tuple(slide.shape) != tuple(expected):
        return None, (
            f"{slide_path}: the slide is {slide.shape[0]} x {slide.shape[1]} px but the map "
            f"was predicted on {expected[0]} x {expected[1]} px; written without image"
        )
    level0 = slide.levels[0].transpose(2, 0, 1)
    return level0.rechunk((3, CHUNK_SIDE, CHUNK_SIDE)), None


def _parse_image(data: Any, *, c_coords: list[str], px: float, um: float) -> Any:
    from spatialdata.models import Image2DModel

    return Image2DModel.parse(
        data,
        dims=("c", "y", "x"),
        c_coords=c_coords,
        scale_factors=scale_factors(data.shape[1:]) or None,
        transformations=_transforms(px, um),
    )


def spatialdata_of(
    store: Any,
    spots: pd.DataFrame | None = None,
    *,
    genes: Sequence[str] = (),
    slide_path: str | os.PathLike[str] | None = None,
    with_image: bool = True,
    library_id: str | None = None,
) -> tuple[Any, list[str]]:
    """``(SpatialData object, warnings)`` of a map ``store`` (module docstring); lazy: the
    arrays are computed when it is written."""
    require_spatialdata()
    import geopandas as gpd
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    from .map_store import DenseMapStore

    if not isinstance(store, DenseMapStore):
        store = DenseMapStore.open(store, mode="r")
    slide_mpp, map_mpp = store.slide_mpp, store.map_mpp
    if not slide_mpp or not map_mpp:
        raise HistoExpressError(
            f"{store.path}: the map store does not record the slide's and the map's µm/px"
        )
    slide_path = str(slide_path or store.slide_path or "") or None
    if library_id is None and slide_path:
        library_id = Path(slide_path).name.split(".")[0] or None
    prefix = element_prefix(library_id)
    warnings: list[str] = []
    images: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    tables: dict[str, Any] = {}

    if with_image:
        image, why = _slide_image(slide_path, store.slide_shape, slide_mpp)
        if image is None:
            warnings.append(str(why))
        else:
            images[f"{prefix}_image"] = _parse_image(
                image, c_coords=["r", "g", "b"], px=1.0, um=slide_mpp
            )

    if genes:
        unknown = [g for g in genes if g not in store.genes]
        if unknown:
            raise HistoExpressError(
                f"{store.path}: gene(s) {unknown} are not in the map "
                f"({len(store.genes)} genes, e.g. {store.genes[:5]})"
            )
        maps = store.gene_maps(list(genes), level=0).transpose(2, 0, 1)
        maps = maps.rechunk((len(genes), CHUNK_SIDE, CHUNK_SIDE))
        images[f"{prefix}_gene_maps"] = _parse_image(
            maps, c_coords=[str(g) for g in genes], px=map_mpp / slide_mpp, um=map_mpp
        )

    n_spots = 0
    if spots is not None and len(spots):
        from .spot_export import spots_anndata

        adata = spots_anndata(store, spots, slide_path=slide_path, with_images=False)
        n_spots = adata.n_obs
        region = f"{prefix}_spots"
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        circles = gpd.GeoDataFrame(
            {"radius": adata.obs["diameter_px"].to_numpy(np.float64) / 2.0},
            geometry=shapely.points(xy),
            index=pd.RangeIndex(n_spots),
        )
        shapes[region] = ShapesModel.parse(circles, transformations=_transforms(1.0, slide_mpp))
        adata.obs["region"] = pd.Categorical([region] * n_spots)
        adata.obs["instance_id"] = np.arange(n_spots, dtype=np.int64)
        tables["table"] = TableModel.parse(
            adata, region=region, region_key="region", instance_key="instance_id"
        )
    if not images and not shapes:
        raise HistoExpressError(
            f"{store.path}: nothing to write: no readable slide image, no spots and no genes"
            + (f" ({warnings[0]})" if warnings else "")
        )
    sdata = SpatialData(images=images, shapes=shapes, tables=tables)
    return sdata, warnings


def export_spatialdata(
    store: Any,
    path: str | os.PathLike[str],
    spots: pd.DataFrame | None = None,
    *,
    genes: Sequence[str] = (),
    slide_path: str | os.PathLike[str] | None = None,
    with_image: bool = True,
) -> SpatialDataExportResult:
    """Write :func:`spatialdata_of` to ``path`` (a ``.zarr`` folder, atomically)."""
    sdata, warnings = spatialdata_of(
        store, spots, genes=genes, slide_path=slide_path, with_image=with_image
    )
    out = write_folder_atomic(path, lambda tmp: sdata.write(tmp))
    elements = {name: kind for kind, name, _ in sdata.gen_elements()}
    n_spots = int(sdata.tables["table"].n_obs) if "table" in sdata.tables else 0
    return SpatialDataExportResult(
        path=Path(out),
        elements=elements,
        n_spots=n_spots,
        gene_maps=[str(g) for g in genes],
        warnings=warnings,
    )
