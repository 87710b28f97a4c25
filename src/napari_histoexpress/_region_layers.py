"""QuPath annotations (GeoJSON) as a napari Shapes layer of polygons, and back (no napari import).

Representation (the reader, the Spots widget's grid and the tests rely on it):

- a Shapes layer with ``metadata["histoexpress"] == "regions"``, ``metadata["slide"]`` = the
  slide layer's name (the slide file beside the GeoJSON with the same stem, e.g.
  ``C2.geojson`` → ``C2.jpg``), ``metadata["path"]`` = the GeoJSON file; ``scale`` = the slide's
  ``(µm/px, µm/px)``, so shape data are slide pixels ``(row, col)`` in napari's
  pixel-centre convention (QuPath ``(X, Y)`` → ``(Y − 0.5, X − 0.5)``) and napari shows µm,
  aligned with the slide layer;
- one ``polygon`` shape per ring: every exterior ring (a ``MultiPolygon`` has several) and
  every hole; ``features``: ``annotation`` (the annotation's index in the layer: rings with
  the same index are one annotation), ``ring`` (``exterior`` / ``hole``), ``name``,
  ``classification``; holes are drawn without face colour;
- :func:`layer_regions` rebuilds each annotation's geometry (exteriors minus holes) from the
  layer's current vertices in world µm, so edits in napari count; a shape drawn by hand in
  the layer is a region of its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._layers import LayerDataTuple, world_kwargs
from .io.geojson import Annotation, polygon_rings, rings_to_geometry

REGIONS_KIND = "regions"
_DEFAULT_EDGE = (1.0, 0.55, 0.0, 1.0)


def sibling_slide(path: Path) -> Path | None:
    """The slide file beside ``path`` with the same stem (``C2.geojson`` → ``C2.jpg``)."""
    from .io.slides import is_slide_path

    exact = path.with_name(path.name[: -len(path.suffix)]) if path.suffix else None
    if exact is not None and exact.is_file() and is_slide_path(exact):
        return exact  # QuPath's "C2.svs.geojson"
    stem = path.name.split(".")[0]
    for cand in sorted(path.parent.glob(f"{glob_escape(stem)}.*")):
        if cand != path and cand.is_file() and is_slide_path(cand):
            return cand
    return None


def regions_layer_data(
    annotations: Sequence[Annotation],
    *,
    mpp: float | None,
    slide_name: str | None = None,
    name: str = "regions",
    path: str | None = None,
) -> LayerDataTuple:
    """A Shapes layer-data tuple of the annotations (QuPath pixels); see the module docstring."""
    data: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    edge: list[tuple[float, ...]] = []
    face: list[tuple[float, ...]] = []
    for k, ann in enumerate(annotations):
        rgb = tuple(c / 255.0 for c in ann.color) if ann.color is not None else _DEFAULT_EDGE[:3]
        for _part, kind, xy in polygon_rings(ann.geometry):
            data.append(np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1))
            rows.append(
                {
                    "annotation": k,
                    "ring": kind,
                    "name": ann.name or "",
                    "classification": ann.classification or "",
                }
            )
            edge.append((*rgb, 1.0))
            face.append((*rgb, 0.0 if kind == "hole" else 0.12))
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "features": pd.DataFrame(rows),
        "edge_color": np.array(edge),
        "face_color": np.array(face),
        "edge_width": 3.0,
        **world_kwargs(mpp),
        "metadata": {
            "histoexpress": REGIONS_KIND,
            "slide": slide_name,
            "path": path,
            "microns_per_pixel": mpp,
            "object_types": [a.object_type for a in annotations],
            "ids": [a.id for a in annotations],
            "colors": [a.color for a in annotations],
        },
    }
    return (data, kwargs, "shapes")


def read_regions_layer(path: str | Path) -> LayerDataTuple:
    """The reader's layer for a QuPath GeoJSON file: placed on the slide beside it (same
    stem), at that slide's µm/px; in pixels, with a warning, when there is none."""
    from .io.geojson import read_annotations

    path = Path(path)
    annotations = read_annotations(path)
    slide = sibling_slide(path)
    mpp: float | None = None
    if slide is not None:
        from .io.slides import open_slide
        from .slide_settings import load_mpp

        try:
            mpp = load_mpp(slide)
        except Exception:  # an unreadable settings file: the slide's own metadata
            mpp = None
        if mpp is None:
            try:
                with open_slide(slide) as opened:
                    mpp = opened.mpp
            except Exception:
                mpp = None
    if mpp is None:
        warnings.warn(
            f"{path}: no slide with a known µm/px beside it (same name, e.g. "
            f"{path.with_suffix('.svs').name}); the annotations are shown in pixels. Open "
            "them from the Spots widget's 'Load regions…' with the slide chosen, or put the "
            "GeoJSON beside its slide.",
            stacklevel=2,
        )
    return regions_layer_data(
        annotations,
        mpp=mpp,
        slide_name=None if slide is None else slide.name,
        name=f"{path.name} regions",
        path=str(path),
    )


def layer_regions(
    world_vertices: Sequence[np.ndarray],
    features: pd.DataFrame,
    *,
    mpp: float,
    indices: Sequence[int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Annotation]:
    """The annotations of a regions layer: geometry in **QuPath pixels** rebuilt from the
    shapes' world vertices ``(row, col)`` µm (exteriors minus holes), name and class from
    the features. ``indices`` (shape indices, e.g. the selection) picks the annotations
    those shapes belong to (default all)."""
    n = len(world_vertices)
    has = len(features) == n and "annotation" in features
    ann_of = [
        (int(features["annotation"].iloc[i]) if has else -1) if not _isna(features, i) else -1
        for i in range(n)
    ]
    keys = [(a if a >= 0 else -1 - i) for i, a in enumerate(ann_of)]  # hand-drawn: own key
    wanted = set(keys) if indices is None else {keys[i] for i in indices}
    md = metadata or {}
    out: list[Annotation] = []
    order = list(dict.fromkeys(keys))
    for key in order:
        if key not in wanted:
            continue
        members = [i for i in range(n) if keys[i] == key]
        rings = []
        for i in members:
            v = np.asarray(world_vertices[i], dtype=np.float64)[:, -2:] / float(mpp)
            xy = np.stack([v[:, 1] + 0.5, v[:, 0] + 0.5], axis=1)
            kind = str(features["ring"].iloc[i]) if has and "ring" in features else "exterior"
            rings.append((kind, xy))
        geom = rings_to_geometry(rings)
        if geom is None:
            continue
        first = members[0]

        def col(name: str, i: int = first) -> str | None:
            if len(features) != n or name not in features:
                return None
            value = features[name].iloc[i]
            return None if pd.isna(value) or value == "" else str(value)

        def meta(name: str, k: int = key) -> Any:
            values = md.get(name) or []
            return values[k] if 0 <= k < len(values) else None

        colour = meta("colors")
        out.append(
            Annotation(
                geometry=geom,
                index=len(out),
                name=col("name"),
                classification=col("classification"),
                color=None if colour is None else (int(colour[0]), int(colour[1]), int(colour[2])),
                object_type=meta("object_types") or "annotation",
                id=meta("ids"),
            )
        )
    return out


def _isna(features: pd.DataFrame, i: int) -> bool:
    if "annotation" not in features or len(features) <= i:
        return True
    return bool(pd.isna(features["annotation"].iloc[i]))
