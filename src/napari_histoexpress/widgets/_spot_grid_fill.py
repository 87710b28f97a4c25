"""The Spots widget's "Grid" box: fill a drawn region with a lattice of spots.

The region is drawn in the slide's "grid region" Shapes layer (*Draw region*: rectangle,
polygon or ellipse), or is the selected shapes of any other Shapes layer; *Fill with grid*
adds the lattice of :func:`napari_histoexpress.inference.spot_grid.lattice_centres`
(hexagonal or square, pitch in µm) as spots of source ``grid``: a grid of fewer than
:data:`~._spot_bins.BIN_LAYER_MIN` spots as circles of the drawn-spots layer (the
``add_spots`` callback), a larger one as a new bins layer (``add_bins``: a napari Points
layer, drawn fast at any size; up to
:data:`~napari_histoexpress.inference.spot_grid.MAX_GRID_SPOTS` spots).
*Select in region* selects the spots of the table's layer whose centres lie in the region
(:func:`~napari_histoexpress.inference.spot_grid.points_in_region`), e.g. the bins of a
tumour outline. The region's geometry is
:func:`napari_histoexpress.inference.spot_shapes.shapes_region`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
)

from ..inference.spot_grid import (
    LATTICES,
    default_lattice,
    default_pitch_um,
    lattice_centres,
    points_in_region,
)
from ..inference.spot_shapes import shapes_region
from . import _common, _spot_layer
from ._spot_bins import BIN_LAYER_MIN

REGION_KIND = "grid_region"


class GridBox(QGroupBox):
    """Lattice + pitch fields and the *Draw region* / *Fill with grid* buttons."""

    def __init__(
        self,
        viewer: Any,
        *,
        current_slide: Callable[[], Any | None],
        diameter_um: Callable[[], float],
        add_spots: Callable[[pd.DataFrame], list[str]],
        stop_adding: Callable[[], None],
        add_bins: Callable[[pd.DataFrame], Any] | None = None,
        table_layer: Callable[[], Any | None] | None = None,
    ) -> None:
        super().__init__("Grid")
        self.viewer = viewer
        self._current_slide = current_slide
        self._diameter_um = diameter_um
        self._add_spots = add_spots
        self._stop_adding = stop_adding
        self._add_bins = add_bins
        self._table_layer = table_layer

        self.lattice_combo = QComboBox()
        self.lattice_combo.addItems(list(LATTICES))
        self.pitch_spin = QDoubleSpinBox()
        self.pitch_spin.setRange(0.5, 100_000.0)
        self.pitch_spin.setDecimals(1)
        self.pitch_spin.setSuffix(" µm")
        self.region_button = QPushButton("Draw region")
        self.region_button.setToolTip("Draw a rectangle, polygon or ellipse to fill with spots")
        self.region_button.clicked.connect(self.draw_region)
        self.fill_button = QPushButton("Fill with grid")
        self.fill_button.setToolTip(
            f"Fill the region with spots; {BIN_LAYER_MIN} or more go into a new bins layer"
        )
        self.fill_button.clicked.connect(self.fill_grid)
        self.select_region_button = QPushButton("Select in region")
        self.select_region_button.setToolTip(
            "Select the spots (or bins) of the table's layer whose centres lie in the region"
        )
        self.select_region_button.clicked.connect(self.select_in_region)
        self.load_regions_button = QPushButton("Load regions…")
        self.load_regions_button.setToolTip(
            "Load QuPath annotations (GeoJSON) as a regions layer on the slide; select "
            "annotations there to fill them with a grid"
        )
        self.load_regions_button.clicked.connect(lambda: self.load_regions())

        form = QFormLayout(self)
        form.addRow("Lattice", self.lattice_combo)
        form.addRow("Pitch", self.pitch_spin)
        row = QHBoxLayout()
        row.addWidget(self.region_button)
        row.addWidget(self.fill_button)
        row.addWidget(self.select_region_button)
        form.addRow(row)
        form.addRow(self.load_regions_button)

    def set_diameter(self, diameter_um: float) -> None:
        """Set the pitch and lattice that suit spots of this diameter."""
        self.pitch_spin.setValue(default_pitch_um(diameter_um))
        self.lattice_combo.setCurrentText(default_lattice(diameter_um))

    def region_layer(self, *, create: bool = False) -> Any | None:
        """The current slide's grid-region layer (made on demand with ``create``)."""
        slide = self._current_slide()
        if slide is None:
            return None
        for layer in self.viewer.layers:
            md = getattr(layer, "metadata", None) or {}
            if md.get("histoexpress") == REGION_KIND and md.get("slide") == slide.name:
                return layer
        if not create:
            return None
        mpp = _common.slide_mpp(slide) or 1.0
        return self.viewer.add_shapes(
            name=f"{slide.name} grid region",
            scale=(mpp, mpp),
            units=("micrometer",) * 2 if _common.slide_mpp(slide) else ("pixel",) * 2,
            edge_color="#ffd400",
            edge_width=3.0,
            face_color=[1.0, 0.83, 0.0, 0.08],
            metadata={"histoexpress": REGION_KIND, "slide": slide.name},
        )

    def draw_region(self) -> None:
        """Make the grid-region layer active in rectangle mode."""
        layer = self.region_layer(create=True)
        if layer is None:
            _common.notify_error("Open a slide first: the grid region is drawn on a slide.")
            return
        self._stop_adding()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def grid_region(self) -> Any | None:
        """The union (µm) of the chosen region shapes: the selected shapes of the active
        Shapes layer (not a spots layer), else the grid-region layer's selected or all."""
        candidates = []
        active = self.viewer.layers.selection.active
        if _is_regions_layer(active) and len(active.data):
            return _regions_layer_region(active)
        if (
            isinstance(_spot_layer.unwrap(active), napari.layers.Shapes)
            and not _spot_layer.is_spots_layer(active)
            and active.selected_data
        ):
            candidates.append((active, sorted(active.selected_data)))
        region = self.region_layer()
        if not candidates and region is not None and len(region.data):
            idx = sorted(region.selected_data) or list(range(len(region.data)))
            candidates.append((region, idx))
        return shapes_region(
            (
                np.array([layer.data_to_world(v) for v in layer.data[i]], dtype=float),
                layer.shape_type[i],
            )
            for layer, idx in candidates
            for i in idx
        )

    def load_regions(self, path: str | None = None) -> Any | None:
        """Add a QuPath GeoJSON's annotations as a regions layer on the current slide (at
        its µm/px); select annotations there and *Fill with grid* fills them (holes kept)."""
        slide = self._current_slide()
        if slide is None:
            _common.notify_error("Open a slide first: the regions are placed on a slide.")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getOpenFileName(
                self, "Load QuPath annotations", "", "GeoJSON (*.geojson *.json)"
            )
            if not path:
                return None
        from napari.layers import Layer

        from .._region_layers import regions_layer_data
        from ..io.geojson import read_annotations

        try:
            annotations = read_annotations(path)
        except Exception as exc:  # InputFileError: the file and what is wrong
            _common.notify_error(exc)
            return None
        data, kwargs, kind = regions_layer_data(
            annotations,
            mpp=_common.slide_mpp(slide),
            slide_name=slide.name,
            name=f"{Path(path).name} regions",
            path=str(path),
        )
        layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        _common.notify_info(f"Loaded {len(annotations)} annotations from {path}.")
        return layer

    def fill_grid(self) -> None:
        """Fill the drawn region with a lattice of spots (source ``grid``): circles of the
        drawn-spots layer, or a new bins layer for :data:`BIN_LAYER_MIN` spots or more."""
        if self._current_slide() is None:
            _common.notify_error("Open a slide first: spots are drawn on a slide layer.")
            return
        diameter = float(self._diameter_um())
        try:
            region = self.grid_region()
            if region is None:
                _common.notify_error(
                    "No grid region: click 'Draw region' and draw a rectangle, polygon or "
                    "ellipse (or select shapes in a Shapes layer) first."
                )
                return
            if not diameter > 0:
                raise ValueError(f"the spot diameter must be positive, got {diameter:g} µm")
            centres = lattice_centres(
                region, self.pitch_spin.value(), self.lattice_combo.currentText()
            )
        except ValueError as exc:
            _common.notify_error(f"Cannot fill the region with a grid: {exc}")
            return
        if not len(centres):
            _common.notify_error(
                "The grid has no spot in this region: draw a larger region or lower the pitch."
            )
            return
        spots = pd.DataFrame(
            {
                "x_um": centres[:, 0],
                "y_um": centres[:, 1],
                "diameter_um": np.full(len(centres), diameter),
            }
        )
        if len(spots) >= BIN_LAYER_MIN and self._add_bins is not None:
            layer = self._add_bins(spots)
            _common.notify_info(
                f"Added {len(spots)} grid bins ({diameter:g} µm) in the layer '{layer.name}'."
            )
            return
        ids = self._add_spots(spots)
        _common.notify_info(f"Added {len(ids)} grid spots.")

    def select_in_region(self) -> None:
        """Select the spots of the table's layer whose centres lie in the region."""
        layer = self._table_layer() if self._table_layer is not None else None
        if layer is None or not len(layer.data):
            _common.notify_info("No spots to select: fill a region or add spots first.")
            return
        try:
            region = self.grid_region()
        except ValueError as exc:
            _common.notify_error(f"Cannot select in the region: {exc}")
            return
        if region is None:
            _common.notify_error(
                "No region: click 'Draw region' and draw a rectangle, polygon or ellipse first."
            )
            return
        table = (
            _spot_layer.bins_table(layer, numbers=True)
            if _spot_layer.is_bins_layer(layer)
            else _spot_layer.spots_table(layer)
        )
        inside = np.flatnonzero(
            points_in_region(region, table["x_um"].to_numpy(), table["y_um"].to_numpy())
        )
        self.viewer.layers.selection.active = layer
        layer.mode = "select"
        layer.selected_data = set(inside.tolist())
        _common.notify_info(f"Selected {len(inside)} of {len(table)} spots of '{layer.name}'.")


def _is_regions_layer(layer: Any) -> bool:
    from .._region_layers import REGIONS_KIND

    md = getattr(layer, "metadata", None) or {}
    return isinstance(layer, napari.layers.Shapes) and md.get("histoexpress") == REGIONS_KIND


def _regions_layer_region(layer: Any) -> Any | None:
    """The union (world µm) of a regions layer's selected annotations (all when none is
    selected), holes kept (:func:`.._region_layers.layer_regions`)."""
    import shapely

    from .._region_layers import layer_regions
    from ..io.geojson import qupath_to_world_um

    mpp = float(layer.scale[-1])
    selected = sorted(layer.selected_data) or None
    anns = layer_regions(
        [np.array([layer.data_to_world(v) for v in shape], dtype=float) for shape in layer.data],
        layer.features,
        mpp=mpp,
        indices=selected,
        metadata=layer.metadata,
    )
    if not anns:
        return None
    return shapely.union_all([qupath_to_world_um(a.geometry, mpp) for a in anns])
