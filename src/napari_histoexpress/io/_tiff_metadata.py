"""µm/px (microns per pixel) of a TIFF-family slide, and a cheap truncation check.

Rules (first match wins; a user-given ``mpp`` in :func:`~napari_histoexpress.io.slides.open_slide`
overrides all of them):

1. **SVS** (Aperio): ``MPP = 0.2520`` in the ImageDescription of the first page → ``'svs'``.
2. **OME-TIFF**: ``PhysicalSizeX`` of the first ``Pixels`` element, converted from
   ``PhysicalSizeXUnit`` (default µm per the OME schema; Å, nm, µm/um, mm, cm, m accepted)
   → ``'ome'``.
3. **NDPI** (Hamamatsu): XResolution in pixels per centimetre (ResolutionUnit CENTIMETER)
   → ``'ndpi'``.
4. **Any other TIFF**: XResolution/ResolutionUnit with unit INCH or CENTIMETER (and the
   millimetre/micrometre extensions some writers use) → ``'tiff-resolution'``.
   ResolutionUnit NONE, a missing tag, or the 72/96 dpi defaults written by image editors and
   libraries do **not** describe a physical pixel size: they give ``None``.

Nothing is ever guessed: when no rule applies the result is ``(None, 'unknown')``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import tifffile

#: µm per unit, for OME ``PhysicalSizeXUnit`` values.
_OME_UNIT_TO_UM: dict[str, float] = {
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu (U+03BC) as well as the micro sign (U+00B5)
    "um": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}

#: µm per unit, for the TIFF ResolutionUnit tag (2 inch, 3 centimetre; 4 mm and 5 µm are
#: extensions written by some tools and understood by tifffile).
_TIFF_UNIT_TO_UM: dict[int, float] = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}

#: Resolutions (per inch) that image libraries write by default: not a physical pixel size.
_DEFAULT_DPI = (72.0, 96.0)

_SVS_MPP = re.compile(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


def _valid(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or mpp <= 0:
        return None
    return float(mpp)


def svs_mpp(description: str) -> float | None:
    """µm/px from an Aperio ImageDescription (``...|MPP = 0.2520|...``), else ``None``."""
    match = _SVS_MPP.search(description or "")
    return _valid(float(match.group(1))) if match else None


def ome_mpp(ome_xml: str, image_index: int = 0) -> float | None:
    """µm/px from the ``PhysicalSizeX`` (+ unit) of the ``Pixels`` of OME image
    ``image_index`` (tifffile's OME series follow the order of the OME ``Image`` elements)."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = [elem for elem in root.iter() if elem.tag.rsplit("}", 1)[-1] == "Pixels"]
    for elem in pixels[image_index : image_index + 1]:
        size = elem.get("PhysicalSizeX")
        if size is None:
            return None
        unit = elem.get("PhysicalSizeXUnit", "µm").strip()
        factor = _OME_UNIT_TO_UM.get(unit)
        if factor is None:
            return None
        try:
            return _valid(float(size) * factor)
        except ValueError:
            return None
    return None


def resolution_mpp(page: Any) -> float | None:
    """µm/px from the XResolution/ResolutionUnit tags of a TIFF page, else ``None``.

    Unit NONE (1) or missing, and 72/96 dots per inch, are treated as "unknown".
    """
    tags = page.tags
    xres = tags.get("XResolution")
    unit_tag = tags.get("ResolutionUnit")
    if xres is None:
        return None
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default is inch
    um_per_unit = _TIFF_UNIT_TO_UM.get(unit)
    if um_per_unit is None:
        return None
    value = xres.value
    try:
        px_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
    except (TypeError, ZeroDivisionError, IndexError):
        return None
    if not math.isfinite(px_per_unit) or px_per_unit <= 0:
        return None
    if unit == 2 and any(abs(px_per_unit - d) < 1e-6 for d in _DEFAULT_DPI):
        return None
    return _valid(um_per_unit / px_per_unit)


def tiff_mpp(
    tif: tifffile.TiffFile, page: Any = None, series_index: int = 0
) -> tuple[float | None, str]:
    """``(µm/px of level 0, source)`` following the rules of this module's docstring.

    ``page`` is the level-0 page of the main image (default: the first page) and
    ``series_index`` its series (used to pick the OME image).
    """
    if page is None:
        page = tif.pages.first
    if tif.is_svs:
        mpp = svs_mpp(tif.pages.first.description)
        if mpp is not None:
            return mpp, "svs"
    if tif.is_ome and tif.ome_metadata:
        mpp = ome_mpp(tif.ome_metadata, series_index)
        if mpp is not None:
            return mpp, "ome"
    mpp = resolution_mpp(page)
    if mpp is not None:
        return mpp, "ndpi" if tif.is_ndpi else "tiff-resolution"
    return None, "unknown"


def truncation_problem(pages: list[Any], file_size: int, level_names: list[str]) -> str | None:
    """Say which chunk ends past the end of the file, or ``None`` when all lie inside it.

    The check is cheap: it reads only the tile/strip offset and byte-count arrays that tifffile
    already parsed from the IFDs, never the pixel data. For each page it checks the chunk that
    ends last (chunks with byte count 0 are sparse/empty and allowed). It does not detect
    corrupted compressed data inside the file: that is reported when the region is read.
    """
    for page, name in zip(pages, level_names, strict=True):
        offsets = page.dataoffsets
        counts = page.databytecounts
        best_end, best_index = -1, -1
        for index, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
            if count and offset + count > best_end:
                best_end, best_index = offset + count, index
        if best_end > file_size:
            kind = "tile" if page.is_tiled else "strip"
            return (
                f"truncated TIFF ({kind} {best_index} of {name} ends at byte {best_end} "
                f"past the end of the file, {file_size} bytes)"
            )
        no_data = len(offsets) == 0 or best_end < 0
        if no_data and page.shape and math.prod(page.shape) > 0:
            return f"truncated or corrupt TIFF ({name} has no image data)"
    return None
