"""Reading the heatmap OME-TIFFs this package writes (:mod:`~..inference.heatmap_export`).

A heatmap file is an OME-TIFF whose image is named :data:`OME_IMAGE_NAME`, with one float32
channel per gene (plus, optionally, the :data:`MASK_CHANNEL` channel) and an OME
``MapAnnotation`` recording the map it came from (grid, background, µm/px of the slide and
of the map, contrast limits). :func:`is_heatmap_tiff` recognises one from its first IFD's
description only; :func:`open_heatmap_tiff` gives its levels as lazy dask arrays
``(C, Y, X)`` read tile by tile (tifffile → zarr → dask), so napari shows it like the
predicted heatmap layers.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from os import PathLike
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InputFileError

__all__ = [
    "MASK_CHANNEL",
    "OME_IMAGE_NAME",
    "HeatmapTiff",
    "is_heatmap_tiff",
    "open_heatmap_tiff",
]

#: The ``Name`` of the OME image of a heatmap file.
OME_IMAGE_NAME = "napari-histoexpress predicted expression"
#: The optional last channel: 1.0 on predicted pixels, 0.0 on background.
MASK_CHANNEL = "predicted"
_SUFFIXES = (".ome.tif", ".ome.tiff")


@dataclasses.dataclass(frozen=True)
class HeatmapTiff:
    """An opened heatmap OME-TIFF (see the module docstring)."""

    path: Path
    channels: list[str]
    levels: list[da.Array]  # (C, Y, X) float32 per level, finest first
    mpp: float | None  # µm/px of level 0 (OME PhysicalSizeX)
    annotation: dict[str, str]
    _owner: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def genes(self) -> list[str]:
        return [c for c in self.channels if c != MASK_CHANNEL]

    @property
    def grid(self) -> str:
        return self.annotation.get("grid", "map")

    @property
    def slide_mpp(self) -> float | None:
        return _float(self.annotation.get("slide_mpp"))

    def contrast_limits(self, gene: str) -> tuple[float, float] | None:
        text = self.annotation.get(f"contrast_limits.{gene}", "").split()
        if len(text) != 2:
            return None
        lo, hi = _float(text[0]), _float(text[1])
        return None if lo is None or hi is None else (lo, hi)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_parts(xml: str) -> tuple[str | None, list[str], float | None, dict[str, str]]:
    """Image name, channel names, PhysicalSizeX (µm) and MapAnnotation of OME-XML."""
    root = ET.fromstring(xml)
    name: str | None = None
    channels: list[str] = []
    mpp: float | None = None
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "Image" and name is None:
            name = el.get("Name")
        elif tag == "Pixels" and mpp is None:
            size, unit = _float(el.get("PhysicalSizeX")), el.get("PhysicalSizeXUnit", "µm")
            if size is not None:
                scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
                mpp = None if scale is None else size * scale
        elif tag == "Channel":
            channels.append(el.get("Name") or f"channel {len(channels)}")
    annotation: dict[str, str] = {}
    for el in root.iter():
        if _local(el.tag) == "M" and el.get("K"):
            annotation[str(el.get("K"))] = el.text or ""
    return name, channels, mpp, annotation


def is_heatmap_tiff(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a heatmap OME-TIFF of this package (reads the first IFD only)."""
    import tifffile

    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith(_SUFFIXES)):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.pages.first.description
    except Exception:  # not a TIFF, truncated...: not ours (the slide reader will say)
        return False
    return OME_IMAGE_NAME in xml and "<OME" in xml


def open_heatmap_tiff(path: str | PathLike[str]) -> HeatmapTiff:
    """Open a heatmap OME-TIFF lazily (every level, every channel)."""
    import tifffile
    import zarr

    path = Path(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise InputFileError(path, f"not a readable TIFF file ({exc})") from exc
    try:
        xml = tif.ome_metadata
        if not xml:
            raise InputFileError(path, "not an OME-TIFF (no OME-XML)")
        name, channels, mpp, annotation = _ome_parts(xml)
        if name != OME_IMAGE_NAME:
            raise InputFileError(path, "not a heatmap OME-TIFF of napari-histoexpress")
        series = tif.series[0]
        group = zarr.open(series.aszarr(), mode="r")
        levels = []
        for k in range(len(series.levels)):
            arr = group[str(k)] if isinstance(group, zarr.Group) else group
            lv = da.from_zarr(arr)
            if lv.ndim == 2:  # one channel: tifffile squeezes the C axis
                lv = lv[None]
            levels.append(lv.astype(np.float32))
    except InputFileError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputFileError(path, f"cannot read the heatmap OME-TIFF ({exc})") from exc
    if len(channels) != int(levels[0].shape[0]):
        channels = [f"channel {i}" for i in range(int(levels[0].shape[0]))]
    return HeatmapTiff(path, channels, levels, mpp, annotation, tif)
