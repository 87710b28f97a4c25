"""A SpatialData store (``.zarr``, e.g. from ``spatialdata-io`` for Visium / Visium HD) →
the package's spatial AnnData (:mod:`.spatial`), like every other importer.

:func:`read_spatialdata` picks

* the **table** (``table=`` by name, else the only one) and the one shapes element it
  annotates (``spatialdata_attrs``: ``region``, ``region_key``, ``instance_key``; a table of
  several regions, such as one table for all Visium HD bin sizes, needs ``region=``);
  table rows whose instance is not in the shapes element are dropped
  (``metadata['n_dropped_rows']``);
* the **image** (``image=`` by name, else the largest image sharing a coordinate system with
  the shapes; its level 0 is the "full-resolution image"). ``metadata['source_image_path']``
  is the image's OME-Zarr group inside the store (``STORE/images/NAME``), which
  :func:`napari_histoexpress.io.slides.open_slide` reads like a slide file, so the import can
  be trained on, predicted and compared like any section.

Spots: circles (points with a ``radius``, Visium) keep their centre and diameter; polygons
(Visium HD square bins) become their centroid and the diameter of the circle of equal area
(``obs['bin_side_px']`` keeps the square's side). Both are mapped into the image's pixels
through the elements' transformations to a coordinate system both are in (``global``
first): image⁻¹ ∘ shapes; a rotation or shear is refused (the package's spots are circles
on an axis-aligned image).

µm/px of the image's level 0, first found of (``metadata['mpp_source']``): ``mpp=``
(``"user"``); a ``scale`` to a coordinate system named for µm (``"spatialdata"``, as
:mod:`napari_histoexpress.inference.spatialdata_export` writes); ``spot_diameter_um=``
divided by the median spot diameter in image pixels (``"spot-diameter"``; 55 for Visium);
a shapes name like ``square_008um`` (spatialdata-io's Visium HD bins) divided by the median
bin side (``"bin-size"``); else unknown.

``X``: the table's ``X`` as stored (counts for a spatialdata-io import; CSR float32);
``obs``: the table's columns. Thumbnails ``hires``/``lowres`` come from the image's pyramid.
``spatialdata`` is the optional extra ``[spatialdata]`` (:func:`require_spatialdata`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..errors import InputFileError, MissingExtraError
from .ome_zarr_slides import MICRON_SYSTEMS
from .spatial import set_library

__all__ = ["EXTRA_HINT", "is_spatialdata_store", "read_spatialdata", "require_spatialdata"]

EXTRA_HINT = 'pip install "napari-histoexpress[spatialdata]"'
_BIN_NAME = re.compile(r"square_0*(\d+(?:\.\d+)?)um", re.IGNORECASE)


def require_spatialdata() -> Any:
    """The ``spatialdata`` module, or :class:`MissingExtraError` naming the extra."""
    try:
        import geopandas  # noqa: F401
        import spatialdata
    except ImportError as exc:
        raise MissingExtraError(
            "SpatialData support needs the optional packages spatialdata and geopandas "
            f"({exc.name or exc} is missing): {EXTRA_HINT}"
        ) from exc
    return spatialdata


def is_spatialdata_store(path: str | Path) -> bool:
    """Whether ``path`` is a SpatialData zarr store (its root group's attributes say so)."""
    path = Path(path)
    for meta_file, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = path / meta_file
        if f.is_file():
            try:
                meta = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            attrs = meta.get(key, {}) if key else meta
            return isinstance(attrs, dict) and "spatialdata_attrs" in attrs
    return False


def _matrix(element: Any, system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


def _affine_xy(source: Any, target: Any, store: Path) -> tuple[np.ndarray, str]:
    """``(3 × 3 affine from source's to target's intrinsic x, y, the coordinate system used)``
    through a coordinate system both are in (``global`` first, else the first in common)."""
    from spatialdata.transformations import get_transformation

    common = [s for s in get_transformation(source, get_all=True)
              if s in get_transformation(target, get_all=True)]  # fmt: skip
    if not common:
        raise InputFileError(store, "the spots and the image share no coordinate system")
    system = "global" if "global" in common else str(common[0])
    m = np.linalg.inv(_matrix(target, system)) @ _matrix(source, system)
    if abs(m[0, 1]) > 1e-9 * abs(m[0, 0]) or abs(m[1, 0]) > 1e-9 * abs(m[1, 1]):
        raise InputFileError(store, "the spots are rotated or sheared relative to the image")
    return m, system


def _table(sdata: Any, store: Path, name: str | None) -> tuple[str, AnnData]:
    names = list(sdata.tables)
    if name is None:
        if len(names) != 1:
            raise InputFileError(
                store, f"{len(names)} tables {names}; choose one with table=/--table"
            )
        name = names[0]
    if name not in sdata.tables:
        raise InputFileError(store, f"no table {name!r} (tables: {names})")
    return name, sdata.tables[name]


def _region(table: AnnData, store: Path, tname: str, region: str | None) -> tuple[str, str, str]:
    attrs = table.uns.get("spatialdata_attrs", {})
    regions = attrs.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    rkey, ikey = attrs.get("region_key"), attrs.get("instance_key")
    if not regions or not rkey or not ikey:
        raise InputFileError(store, f"table {tname!r} annotates no shapes element")
    if region is None:
        if len(regions) != 1:
            raise InputFileError(
                store, f"table {tname!r} annotates {regions}; choose one with region=/--region"
            )
        region = regions[0]
    if region not in regions:
        raise InputFileError(store, f"table {tname!r} does not annotate {region!r} ({regions})")
    return region, str(rkey), str(ikey)


def _image(sdata: Any, store: Path, shapes_name: str, name: str | None) -> str | None:
    from spatialdata.transformations import get_transformation

    if name is not None:
        if name not in sdata.images:
            raise InputFileError(store, f"no image {name!r} (images: {list(sdata.images)})")
        return name
    systems = set(get_transformation(sdata.shapes[shapes_name], get_all=True))
    best, best_px = None, -1
    for img_name, img in sdata.images.items():
        if not systems & set(get_transformation(img, get_all=True)):
            continue
        level0 = img["scale0"]["image"] if hasattr(img, "children") else img
        px = int(level0.sizes["y"]) * int(level0.sizes["x"])
        if px > best_px:
            best, best_px = img_name, px
    return best


def _micron_scale(element: Any) -> float | None:
    from spatialdata.transformations import get_transformation

    for system, t in get_transformation(element, get_all=True).items():
        if str(system).lower() in MICRON_SYSTEMS:
            m = np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))
            if m[0, 0] > 0 and abs(m[0, 1]) < 1e-12 and np.isclose(m[0, 0], m[1, 1]):
                return float(m[0, 0])
    return None


def read_spatialdata(
    path: str | Path,
    *,
    table: str | None = None,
    region: str | None = None,
    image: str | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
    library_id: str | None = None,
) -> AnnData:
    """Read a SpatialData store into the spatial AnnData convention (module docstring)."""
    import shapely

    store = Path(path)
    if not store.exists():
        raise InputFileError(store, "not found")
    if not is_spatialdata_store(store):
        raise InputFileError(store, "not a SpatialData store (no spatialdata_attrs at its root)")
    spatialdata = require_spatialdata()
    try:
        sdata = spatialdata.read_zarr(store)
    except Exception as exc:  # spatialdata raises many types for a damaged store
        raise InputFileError(store, f"cannot read the SpatialData store ({exc})") from exc
    tname, tab = _table(sdata, store, table)
    region, rkey, ikey = _region(tab, store, tname, region)
    if region not in sdata.shapes:
        raise InputFileError(store, f"table {tname!r} annotates {region!r}, not a shapes element")
    rows = tab[tab.obs[rkey].astype(str) == region]
    shapes = sdata.shapes[region]
    ids = rows.obs[ikey].to_numpy()
    present = pd.Index(shapes.index).get_indexer(ids)
    n_dropped = int((present < 0).sum())
    rows, present = rows[present >= 0], present[present >= 0]
    if rows.n_obs == 0:
        raise InputFileError(store, f"no row of table {tname!r} matches a shape of {region!r}")
    geoms = shapes.geometry.to_numpy()[present]
    kinds = set(shapely.get_type_id(geoms).tolist())
    if kinds <= {0}:  # points: circles with a radius
        if "radius" not in shapes.columns:
            raise InputFileError(store, f"shapes {region!r} are points without a 'radius'")
        xy = shapely.get_coordinates(geoms)
        diameter = 2.0 * shapes["radius"].to_numpy(float)[present]
        side = None
        shape_kind = "circle"
    elif kinds <= {3, 6}:  # polygons / multipolygons: bins
        xy = shapely.get_coordinates(shapely.centroid(geoms))
        area = shapely.area(geoms)
        diameter = 2.0 * np.sqrt(area / np.pi)
        side = np.sqrt(area)
        shape_kind = "polygon"
    else:
        raise InputFileError(store, f"shapes {region!r} are neither circles nor polygons")

    img_name = _image(sdata, store, region, image)
    source_image = None
    scale = 1.0
    if img_name is not None:
        m, _ = _affine_xy(shapes, sdata.images[img_name], store)
        xy = xy @ m[:2, :2].T + m[:2, 2]
        scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        source_image = store.resolve() / "images" / img_name
    diameter = diameter * scale
    side = None if side is None else side * scale

    mpp_source = "unknown"
    if mpp is not None:
        mpp_source = "user"
    elif img_name is not None and (m_um := _micron_scale(sdata.images[img_name])) is not None:
        mpp, mpp_source = m_um, "spatialdata"
    elif spot_diameter_um is not None:
        mpp, mpp_source = float(spot_diameter_um) / float(np.median(diameter)), "spot-diameter"
    elif side is not None and (hit := _BIN_NAME.search(region)):
        mpp, mpp_source = float(hit.group(1)) / float(np.median(side)), "bin-size"

    X = rows.X
    X = sparse.csr_matrix(X, dtype=np.float32) if X is not None else None
    obs = rows.obs.copy()
    obs.index = obs.index.astype(str)
    if side is not None:
        obs["bin_side_px"] = side
    adata = AnnData(X=X, obs=obs, var=rows.var.copy())
    for key, layer in rows.layers.items():
        adata.layers[key] = layer
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)

    images: dict[str, np.ndarray] = {}
    scalef: dict[str, float] = {}
    if source_image is not None:
        from .slides import open_slide
        from .thumbnails import thumbnails_from_slide

        with open_slide(source_image) as slide:
            images, scalef = thumbnails_from_slide(slide)
    d_px = float(np.median(diameter))
    lib = library_id or store.name.split(".")[0] or "spatialdata"
    set_library(
        adata,
        lib,
        images=images,
        scalefactors={**scalef, "spot_diameter_fullres": d_px}
        | ({} if mpp is None else {"microns_per_pixel": float(mpp)}),
        metadata={
            "source_image_path": None if source_image is None else str(source_image),
            "source_image_note": None
            if source_image is not None
            else "the store has no image in the spots' coordinate system",
            "microns_per_pixel": mpp,
            "mpp_source": mpp_source,
            "spot_diameter_um": None if mpp is None else d_px * float(mpp),
            "technology": "spatialdata",
            "spatialdata_store": str(store.resolve()),
            "spatialdata_table": tname,
            "spatialdata_region": region,
            "spatialdata_image": img_name,
            "spot_shape": shape_kind,
            "n_dropped_rows": n_dropped,
        },
    )
    return adata
