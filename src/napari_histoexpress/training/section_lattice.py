"""A section's patch lattice for spot models with slide context (DKAN; ALIGN-ST next).

Such a model predicts a spot from its own patch *and* the patches around it on the lattice
the whole-slide predictor lays (:func:`~napari_histoexpress.geometry.lattice_grid`), so
training and evaluation build that same lattice for each section:

* the nodes are the lattice cells whose centre is on tissue — the package's tissue
  detection on the slide's thumbnail, as the predictor decides which chunks to encode
  (:func:`~napari_histoexpress.io.tissue.slide_tissue`) — plus every cell that
  holds a measured spot (a spot is always on its own node);
* every node's patch (centred on the node) and every spot's patch (centred on the spot) go
  through the model's frozen encoder once, through the on-disk feature cache
  (:mod:`napari_histoexpress.models.feature_cache`, the run's ``feature_cache`` setting);
* a spot belongs to the node whose cell holds its centre.

The result, :class:`SectionLattice`, gives :class:`~napari_histoexpress.models.base.
LatticeNodes` for the model and the spots' features and cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..geometry import LatticeGrid
    from ..models.base import LatticeNodes
    from ..stain import StainNormalizer

__all__ = ["SectionLattice", "section_lattice"]


@dataclass
class SectionLattice:
    """One section's lattice (see the module docstring).

    Attributes:
        grid: the lattice geometry; rc: ``(N, 2)`` ``(row, col)`` of the nodes; tissue:
            ``(N,)`` bool (False only for spot cells off the detected tissue); features:
            ``(N, D)`` float32 node features; spot_rc: ``(S, 2)`` each spot's cell;
            spot_features: ``(S, D)`` float32 features of the spot-centred patches.
    """

    grid: LatticeGrid
    rc: np.ndarray
    tissue: np.ndarray
    features: np.ndarray
    spot_rc: np.ndarray
    spot_features: np.ndarray

    def nodes(self, device: torch.device | str = "cpu") -> LatticeNodes:
        from ..models.base import LatticeNodes

        mpp = self.grid.working_mpp / self.grid.factor
        centres = self.grid.centres_level0(self.rc[:, 0], self.rc[:, 1])
        return LatticeNodes(
            features=torch.from_numpy(self.features).to(device),
            positions_um=torch.from_numpy(centres * mpp - mpp / 2.0),
            grid_rc=torch.from_numpy(self.rc),
            lattice_shape=self.grid.map_shape,
            pitch_um=self.grid.pitch_um,
            tissue=torch.from_numpy(self.tissue),
        )


def section_lattice(
    pair: tuple[Any, Any],
    encoder: Any,
    *,
    pitch_um: float,
    feature_cache: str = "auto",
    normalizer: StainNormalizer | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> SectionLattice:
    """The lattice of one ``(adata, slide)`` pair for a model whose frozen encoder is
    ``encoder`` (a ``LoadedEncoder``) and whose nodes are ``pitch_um`` apart."""
    from ..geometry import LATTICE_CHUNK_NODES, lattice_grid
    from ..io.spatial import spot_centres_px
    from ..io.tissue import slide_tissue, tissue_at
    from ..models import feature_cache as fc
    from .spot_crops import section_mpp

    adata, slide = pair
    mpp = section_mpp(adata, slide)
    grid = lattice_grid(tuple(slide.shape), mpp, encoder.spec.input_mpp, pitch_um)
    mask, downsample = slide_tissue(slide, LATTICE_CHUNK_NODES * grid.pitch_px * grid.factor)
    rows, cols = np.mgrid[0 : grid.map_shape[0], 0 : grid.map_shape[1]]
    all_rc = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int64)
    on_tissue = tissue_at(mask, downsample, grid.centres_level0(all_rc[:, 0], all_rc[:, 1]))
    spot_rc = grid.node_of(spot_centres_px(adata))
    cells = np.zeros(grid.map_shape, dtype=bool)
    cells[spot_rc[:, 0], spot_rc[:, 1]] = True
    keep = on_tissue | cells.ravel()
    rc = all_rc[keep]
    tissue = on_tissue[keep]
    centres_um = grid.centres_level0(rc[:, 0], rc[:, 1]) * mpp
    kw: dict[str, Any] = {"normalizer": normalizer, "batch_size": batch_size, "progress": progress}
    if feature_cache == "none":
        node_feats = fc.lattice_features(slide, centres_um, encoder, **kw)
        spot_feats = fc.spot_features(pair, encoder, **kw)
    else:
        cache_dir = None if feature_cache == "auto" else feature_cache
        node_feats = fc.cached_lattice_features(
            slide, centres_um, encoder, cache_dir=cache_dir, **kw
        )
        spot_feats = fc.cached_spot_features(pair, encoder, cache_dir=cache_dir, **kw)
    return SectionLattice(
        grid=grid,
        rc=rc,
        tissue=tissue,
        features=np.ascontiguousarray(node_feats, dtype=np.float32),
        spot_rc=spot_rc,
        spot_features=np.ascontiguousarray(spot_feats, dtype=np.float32),
    )
