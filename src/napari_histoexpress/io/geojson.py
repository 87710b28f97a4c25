"""QuPath GeoJSON: annotations in (polygons with their class), spots and regions out.

Reading (:func:`read_annotations`) takes what QuPath's *File > Export objects as GeoJSON*
writes: a ``FeatureCollection`` (QuPath ≥ 0.4), a bare list of ``Feature`` objects (QuPath
≤ 0.3), or a single ``Feature``. Each feature with a ``Polygon`` or ``MultiPolygon``
geometry (holes kept; the polygonal parts of a ``GeometryCollection``) becomes an
:class:`Annotation` with ``properties.name``, ``properties.classification.name`` (and its
``color``), ``properties.objectType`` and the feature's ``id``. Points and lines enclose no
area: they are skipped and reported in one :class:`~napari_histoexpress.errors.InputFileWarning`
(how many of which kind, and their feature indices). A file that is not JSON, not GeoJSON
features, holds malformed coordinates, or has no polygon at all raises
:class:`~napari_histoexpress.errors.InputFileError` naming the file, the feature index (0-based,
in file order) and what is wrong. A self-intersecting polygon is repaired
(``shapely.make_valid``, keeping its polygonal part).

Coordinates stay **QuPath's**: full-resolution (level-0) pixels, ``x`` to the right and
``y`` down, the image's top-left *corner* at ``(0, 0)``, so pixel ``(row i, column j)``
covers ``[j, j + 1) × [i, i + 1)`` and its centre is at ``(j + 0.5, i + 0.5)``. napari places
pixel centres at integer indices, so a slide layer of ``scale = (mpp, mpp)`` shows the
point ``(X, Y)`` at world µm ``((X − 0.5)·mpp, (Y − 0.5)·mpp)``:
:func:`qupath_to_world_um` / :func:`world_um_to_qupath` convert (``x_um, y_um`` of the
spots tables are those world µm).

Writing (:func:`annotation_feature`, :func:`circle_feature`, :func:`write_features`): a
``FeatureCollection`` as QuPath ≥ 0.4 reads it — ``objectType`` ``"annotation"`` (regions) or
``"detection"`` (spots), ``name``, ``classification {name, color}``, and
``measurements`` as a flat ``{name: value}`` object (the predicted genes: QuPath lists them in
its measurement table and colours objects by them under *Measure > Show measurement maps*).
Non-finite values are left out (JSON has no NaN; QuPath shows a missing measurement as
NaN). A circle becomes a polygon of :data:`CIRCLE_VERTICES` vertices with the circle's area
(QuPath itself exports ellipses as polygons). Feature ids are UUIDs as QuPath uses them
(a given UUID is kept; any other id is turned into a stable UUID and kept in ``name`` when
the feature has none). Writes are atomic (:func:`~.export.write_atomic`).
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from ..errors import InputFileError, InputFileWarning
from .export import write_atomic

__all__ = [
    "CIRCLE_VERTICES",
    "Annotation",
    "annotation_feature",
    "circle_feature",
    "circle_polygon",
    "polygon_rings",
    "qupath_to_world_um",
    "read_annotations",
    "rings_to_geometry",
    "world_um_to_qupath",
    "write_features",
]

#: Vertices of the polygon a circle is written as (its area equals the circle's).
CIRCLE_VERTICES = 64
#: The namespace of the UUIDs made from ids that are not UUIDs (stable across exports).
_ID_NAMESPACE = uuid.UUID("6f1d2b1e-8a5c-4f0e-9a43-2c7d5b9e4a10")
_AREA_TYPES = ("Polygon", "MultiPolygon", "GeometryCollection")


@dataclass(frozen=True)
class Annotation:
    """One polygonal QuPath object: ``geometry`` (a shapely ``Polygon`` or ``MultiPolygon``,
    QuPath full-resolution pixels) and its properties. ``index`` is the feature's place in
    the file (0-based)."""

    geometry: BaseGeometry
    index: int
    name: str | None = None
    classification: str | None = None
    color: tuple[int, int, int] | None = None
    object_type: str = "annotation"
    id: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What to call it: its name, else its class, else ``annotation <index>``."""
        return self.name or self.classification or f"{self.object_type} {self.index}"


# ------------------------------------------------------------------ coordinates
def qupath_to_world_um(geom: BaseGeometry, mpp: float) -> BaseGeometry:
    """A geometry in QuPath pixels → napari world µm of a slide layer of ``scale=(mpp, mpp)``
    (``x_um = (X − 0.5)·mpp``; see the module docstring)."""
    moved = affinity.translate(geom, -0.5, -0.5)
    return affinity.scale(moved, float(mpp), float(mpp), origin=(0.0, 0.0))


def world_um_to_qupath(geom: BaseGeometry, mpp: float) -> BaseGeometry:
    """The inverse of :func:`qupath_to_world_um`."""
    scaled = affinity.scale(geom, 1.0 / float(mpp), 1.0 / float(mpp), origin=(0.0, 0.0))
    return affinity.translate(scaled, 0.5, 0.5)


# ------------------------------------------------------------------ reading
def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except UnicodeDecodeError:
        raise InputFileError(path, "not a text file (GeoJSON is UTF-8 text)") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def _features(path: Path, doc: Any) -> list[Any]:
    if isinstance(doc, list):  # QuPath <= 0.3: a bare list of features
        return doc
    if isinstance(doc, Mapping):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            feats = doc.get("features")
            if not isinstance(feats, list):
                raise InputFileError(path, "a FeatureCollection without a 'features' list")
            return feats
        if kind == "Feature":
            return [doc]
        if kind in _AREA_TYPES or kind in ("Point", "MultiPoint", "LineString"):
            return [{"type": "Feature", "geometry": doc, "properties": {}}]
        raise InputFileError(
            path, f"not GeoJSON features (top-level type {kind!r}; expected a FeatureCollection)"
        )
    raise InputFileError(path, "not GeoJSON features (expected a FeatureCollection or a list)")


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """The polygonal part of ``geom`` (repaired when invalid), ``None`` when it has none."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if isinstance(geom, Polygon | MultiPolygon):
        parts = list(getattr(geom, "geoms", [geom]))
    else:
        parts = [
            g for g in shapely.get_parts(geom).tolist() if isinstance(g, Polygon | MultiPolygon)
        ]
        parts = [p for g in parts for p in getattr(g, "geoms", [g])]
    parts = [p for p in parts if not p.is_empty and p.area > 0]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _colour(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, list | tuple) and len(value) >= 3:
        try:
            r, g, b = (int(v) for v in value[:3])
        except (TypeError, ValueError):
            return None
        return (r, g, b)
    if isinstance(value, int | np.integer) and not isinstance(value, bool):  # packed RGB
        v = int(value) & 0xFFFFFF
        return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return None


def _measurements(value: Any) -> dict[str, float]:
    """QuPath ≥ 0.4's ``{name: value}`` or ≤ 0.3's ``[{name, value}, ...]``."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):
        items = ((m.get("name"), m.get("value")) for m in value if isinstance(m, Mapping))
    else:
        return {}
    out: dict[str, float] = {}
    for key, val in items:
        if key is None:
            continue
        try:
            out[str(key)] = float(val) if val is not None else math.nan
        except (TypeError, ValueError):
            continue
    return out


def read_annotations(path: str | os.PathLike[str]) -> list[Annotation]:
    """The polygonal objects of a QuPath GeoJSON file, in file order (see the module
    docstring: what is read, what is skipped with a warning, what raises)."""
    path = Path(path)
    feats = _features(path, _load(path))
    out: list[Annotation] = []
    skipped: dict[str, list[int]] = {}
    for i, feat in enumerate(feats):
        if not isinstance(feat, Mapping):
            raise InputFileError(path, f"feature {i} is not a JSON object")
        raw = feat.get("geometry")
        if raw is None:
            skipped.setdefault("no geometry", []).append(i)
            continue
        if not isinstance(raw, Mapping) or "type" not in raw:
            raise InputFileError(path, f"feature {i}: 'geometry' is not a GeoJSON geometry")
        kind = str(raw["type"])
        if kind not in _AREA_TYPES:
            skipped.setdefault(kind, []).append(i)
            continue
        try:
            geom = shape(raw)
        except Exception as exc:  # shapely raises several types for bad coordinates
            raise InputFileError(
                path, f"feature {i}: malformed {kind} coordinates ({exc})"
            ) from None
        if not np.isfinite(np.asarray(shapely.get_coordinates(geom))).all():
            raise InputFileError(path, f"feature {i}: {kind} coordinates are not finite numbers")
        area = _polygonal(geom) if not geom.is_empty else None
        if area is None:
            skipped.setdefault(f"{kind} without area", []).append(i)
            continue
        props = feat.get("properties")
        props = props if isinstance(props, Mapping) else {}
        cls = props.get("classification")
        cls_name: str | None = None
        colour = None
        if isinstance(cls, Mapping):
            cls_name = None if cls.get("name") is None else str(cls.get("name"))
            colour = _colour(cls.get("color", cls.get("colorRGB")))
        elif isinstance(cls, str):
            cls_name = cls
        colour = colour or _colour(props.get("color"))
        fid = feat.get("id", props.get("id"))
        name = props.get("name")
        out.append(
            Annotation(
                geometry=area,
                index=i,
                name=None if name in (None, "") else str(name),
                classification=cls_name,
                color=colour,
                object_type=str(
                    props.get("objectType") or props.get("object_type") or "annotation"
                ),
                id=None if fid is None else str(fid),
                measurements=_measurements(props.get("measurements")),
            )
        )
    if skipped:
        what = "; ".join(
            f"{len(idx)} {kind} (feature{'s' if len(idx) > 1 else ''} "
            f"{', '.join(map(str, idx[:5]))}{', …' if len(idx) > 5 else ''})"
            for kind, idx in skipped.items()
        )
        if out:
            warnings.warn(
                InputFileWarning(path, f"skipped objects that enclose no area: {what}"),
                stacklevel=2,
            )
    if not out:
        detail = f" (only {what})" if skipped else ""
        raise InputFileError(path, f"no polygon annotations{detail}")
    return out


# ------------------------------------------------------------------ writing
def _uuid(value: str | None, seed: str) -> str:
    if value:
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            pass
    return str(uuid.uuid5(_ID_NAMESPACE, str(value or seed)))


def _finite_measurements(values: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, val in values.items():
        try:
            v = float(val)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[str(key)] = v
    return out


def annotation_feature(
    geometry: BaseGeometry,
    *,
    object_type: str = "annotation",
    name: str | None = None,
    classification: str | None = None,
    color: Sequence[int] | None = None,
    measurements: Mapping[str, Any] | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """One QuPath GeoJSON feature (``geometry`` in QuPath pixels); see the module docstring."""
    props: dict[str, Any] = {"objectType": object_type}
    if id and name is None:
        try:
            uuid.UUID(str(id))
        except ValueError:
            name = str(id)  # keep a non-UUID id readable in QuPath
    if name is not None:
        props["name"] = str(name)
    if classification is not None:
        cls: dict[str, Any] = {"name": str(classification)}
        if color is not None:
            cls["color"] = [int(c) for c in list(color)[:3]]
        props["classification"] = cls
    if measurements:
        props["measurements"] = _finite_measurements(measurements)
    return {
        "type": "Feature",
        "id": _uuid(id, json.dumps(mapping(geometry), sort_keys=True)[:200] + str(name)),
        "geometry": mapping(geometry),
        "properties": props,
    }


def circle_polygon(x: float, y: float, radius: float, n_vertices: int = CIRCLE_VERTICES) -> Polygon:
    """A regular polygon of ``n_vertices`` around ``(x, y)`` with the circle's area."""
    n = int(n_vertices)
    scale = math.sqrt(2.0 * math.pi / (n * math.sin(2.0 * math.pi / n)))
    t = 2.0 * math.pi * np.arange(n) / n
    r = float(radius) * scale
    return Polygon(np.stack([x + r * np.cos(t), y + r * np.sin(t)], axis=1))


def circle_feature(
    x: float,
    y: float,
    radius: float,
    *,
    object_type: str = "detection",
    name: str | None = None,
    classification: str | None = None,
    color: Sequence[int] | None = None,
    measurements: Mapping[str, Any] | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """A circle (QuPath pixels) as a feature: a :func:`circle_polygon` feature."""
    return annotation_feature(
        circle_polygon(x, y, radius),
        object_type=object_type,
        name=name,
        classification=classification,
        color=color,
        measurements=measurements,
        id=id,
    )


def write_features(features: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write a ``FeatureCollection`` atomically; returns ``path``."""
    doc = {"type": "FeatureCollection", "features": list(features)}
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    return write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------ rings (napari shapes)
def polygon_rings(geom: BaseGeometry) -> list[tuple[int, str, np.ndarray]]:
    """``(part, "exterior" | "hole", (n, 2) x, y)`` of every ring of a (Multi)Polygon,
    without the closing vertex: how a Shapes layer of plain polygons holds holes."""
    out: list[tuple[int, str, np.ndarray]] = []
    for k, part in enumerate(getattr(geom, "geoms", [geom])):
        out.append((k, "exterior", np.asarray(part.exterior.coords, dtype=np.float64)[:-1]))
        for hole in part.interiors:
            out.append((k, "hole", np.asarray(hole.coords, dtype=np.float64)[:-1]))
    return out


def rings_to_geometry(rings: Iterable[tuple[str, np.ndarray]]) -> BaseGeometry | None:
    """The inverse of :func:`polygon_rings` for one annotation: the union of its exterior
    rings minus the union of its holes (``None`` when nothing encloses an area)."""
    outer: list[BaseGeometry] = []
    holes: list[BaseGeometry] = []
    for kind, xy in rings:
        xy = np.asarray(xy, dtype=np.float64)
        if len(xy) < 3:
            continue
        poly = Polygon(xy)
        poly = poly if poly.is_valid else shapely.make_valid(poly)
        (holes if kind == "hole" else outer).append(poly)
    if not outer:
        return None
    geom = shapely.union_all(outer)
    if holes:
        geom = shapely.difference(geom, shapely.union_all(holes))
    return _polygonal(geom)
