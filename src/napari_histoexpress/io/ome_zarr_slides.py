"""OME-Zarr (OME-NGFF) multiscale images as slides: the H&E inside a SpatialData store.

A SpatialData store keeps each image as an OME-Zarr multiscale group
(``STORE.zarr/images/NAME``: ``multiscales`` metadata and one zarr array per level,
``c, y, x`` for a 2-D image). :func:`napari_histoexpress.io.slides.open_slide` opens such a
group like any slide file: the levels are read lazily through zarr (only the chunks a window
touches), converted to ``(Y, X, 3)`` uint8 RGB on read by the same view as TIFF levels, and
the level downsamples are the datasets' own scale factors.

µm/px of level 0, first found of:

* a SpatialData coordinate transformation of the group (``multiscales[0]
  .coordinateTransformations``) of type ``scale`` whose output coordinate system is named
  for micrometres (:data:`MICRON_SYSTEMS`, e.g. ``micrometers`` as
  :mod:`napari_histoexpress.inference.spatialdata_export` writes), its y/x factor;
* plain OME-NGFF: the spatial axes have unit ``micrometer`` (or ``nanometer`` /
  ``millimeter``), dataset 0's ``scale`` is then the pixel size in that unit.

Otherwise the size is unknown (``None``), as for any slide without a physical size.
(``mpp_source``: ``"spatialdata"`` or ``"ome-zarr"``.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask.array as da
import zarr

from ..errors import InputFileError

#: Coordinate-system names taken as micrometres (lower case).
MICRON_SYSTEMS = ("micrometers", "micrometer", "microns", "micron", "um", "µm")
_UNIT_TO_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}
#: Dask chunk side for the levels (a multiple of the zarr chunk near this).
_CHUNK_SIDE = 2048


def _group_attrs(path: Path) -> dict[str, Any] | None:
    """The group attributes of a zarr v3 (``zarr.json``) or v2 (``.zattrs``) folder."""
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
            if meta.get("node_type") != "group":
                return None
            attrs = meta.get("attributes", {})
        elif (path / ".zattrs").is_file():
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, ValueError):
        return None
    return attrs if isinstance(attrs, dict) else None


def _multiscales(attrs: dict[str, Any]) -> list[Any] | None:
    ms = attrs.get("ome", {}).get("multiscales") if isinstance(attrs.get("ome"), dict) else None
    ms = ms or attrs.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def is_ome_zarr_image(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an OME-Zarr multiscale image group (no array data is read)."""
    path = Path(path)
    if not path.is_dir():
        return False
    attrs = _group_attrs(path)
    return attrs is not None and _multiscales(attrs) is not None


def _axes(ms: dict[str, Any]) -> list[dict[str, Any]]:
    axes = ms.get("axes") or [{"name": n} for n in ("c", "y", "x")]  # NGFF 0.3: cyx
    return [a if isinstance(a, dict) else {"name": str(a)} for a in axes]


def _scale_of(transforms: Any, n_axes: int) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", ())) == n_axes:
            return [float(v) for v in t["scale"]]
    return None


def _first_multiscale(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The group's first ``multiscales`` entry and its axis names (lower case)."""
    ms_list = _multiscales(_group_attrs(path) or {})
    if not ms_list:
        raise InputFileError(path, "not an OME-Zarr multiscale image (no 'multiscales')")
    ms = ms_list[0]
    return ms, [str(a.get("name", "")).lower() for a in _axes(ms)]


def ome_zarr_mpp(path: str | Path) -> tuple[float | None, str]:
    """``(µm/px of level 0, source)`` of an OME-Zarr image group (module docstring)."""
    path = Path(path)
    ms, names = _first_multiscale(path)
    yx = [names.index("y"), names.index("x")] if {"y", "x"} <= set(names) else None
    if yx is None:
        return None, "unknown"
    for t in ms.get("coordinateTransformations") or []:
        if not isinstance(t, dict) or t.get("type") != "scale":
            continue
        out = t.get("output")
        name = str(out.get("name", "") if isinstance(out, dict) else out or "").lower()
        scale = _scale_of([t], len(names))
        if name in MICRON_SYSTEMS and scale and scale[yx[0]] > 0:
            return float(scale[yx[1]]), "spatialdata"
    axes = _axes(ms)
    unit = str(axes[yx[1]].get("unit", "")).lower()
    datasets = ms.get("datasets") or []
    scale = (
        _scale_of(datasets[0].get("coordinateTransformations"), len(names)) if datasets else None
    )
    if unit in _UNIT_TO_UM and scale and scale[yx[1]] > 0:
        return float(scale[yx[1]]) * _UNIT_TO_UM[unit], "ome-zarr"
    return None, "unknown"


def _chunks(zchunks: tuple[int, ...], shape: tuple[int, int, int]) -> tuple[int, int, int]:
    def side(c: int, n: int) -> int:
        return max(c, (_CHUNK_SIDE // c) * c) if c < n else n

    return (side(zchunks[0], shape[0]), side(zchunks[1], shape[1]), 3)


def open_ome_zarr_levels(
    path: str | Path,
) -> tuple[list[da.Array], list[tuple[float, float]], float | None, str]:
    """``(levels (H, W, 3) uint8 dask, (x, y) downsample per level, µm/px, source)``.

    Channel axis: ``c`` of size 3 or 4 (alpha composited over white), or 1 (gray); other
    non-spatial axes (``t``, ``z``) are read at index 0. Errors name the group.
    """
    from .slides import _ZarrRGB  # the TIFF levels' RGB view (same conversions)

    path = Path(path)
    ms, names = _first_multiscale(path)
    if not {"y", "x"} <= set(names):
        raise InputFileError(path, f"OME-Zarr image without y and x axes (axes {names})")
    letters = {"y": "Y", "x": "X", "c": "C"}
    tif_axes = "".join(letters.get(n, "T") for n in names)  # other axes: read at index 0
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a damaged store
        raise InputFileError(path, f"cannot open the zarr group ({exc})") from exc
    page = SimpleNamespace(photometric=2, extrasamples=())
    levels: list[da.Array] = []
    scales: list[tuple[float, float]] = []
    base: list[float] | None = None
    for k, ds in enumerate(ms.get("datasets") or []):
        try:
            arr = group[str(ds["path"])]
        except (KeyError, TypeError) as exc:
            raise InputFileError(path, f"level {k}: dataset {ds!r} missing ({exc})") from None
        if not isinstance(arr, zarr.Array):
            raise InputFileError(path, f"level {k}: {ds.get('path')!r} is a group, not an array")
        shape = tuple(int(s) for s in arr.shape)
        if len(shape) != len(names):
            raise InputFileError(path, f"level {k}: {len(shape)} dims for axes {names}")
        if "c" in names and shape[names.index("c")] not in (1, 3, 4):
            raise InputFileError(
                path,
                f"{shape[names.index('c')]} channels: an RGB image (3 or 4 channels, or 1) "
                "is needed as the slide",
            )
        if "c" in names and shape[names.index("c")] == 4:
            page = SimpleNamespace(photometric=2, extrasamples=(2,))
        view = _ZarrRGB(arr, tif_axes, page)
        zch = tuple(int(c) for c in arr.chunks)
        yx_chunks = (zch[names.index("y")], zch[names.index("x")])
        levels.append(da.from_array(view, chunks=_chunks(yx_chunks, view.shape), asarray=True))
        scale = _scale_of(ds.get("coordinateTransformations"), len(names))
        if scale is None:
            scale = [1.0] * len(names)
        if base is None:
            base = scale
        sx = scale[names.index("x")] / base[names.index("x")]
        sy = scale[names.index("y")] / base[names.index("y")]
        scales.append((float(sx), float(sy)))
    if not levels:
        raise InputFileError(path, "OME-Zarr image without datasets")
    if 0 in levels[0].shape:
        raise InputFileError(path, f"empty image (shape {levels[0].shape[:2]})")
    mpp, source = ome_zarr_mpp(path)
    return levels, scales, mpp, source
