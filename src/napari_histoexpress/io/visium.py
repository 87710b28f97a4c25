"""10x Genomics Visium (Space Ranger ``outs/`` folder) → spatial AnnData.

Read: ``filtered_feature_bc_matrix.h5`` (``scanpy.read_10x_h5``: raw UMI counts, CSR
float32, gene symbols as ``var_names`` with ``gene_ids`` in ``var``), and in ``spatial/``
``tissue_positions.csv`` (Space Ranger ≥ 2.0, with header) or
``tissue_positions_list.csv`` (older, no header), ``scalefactors_json.json`` and the
``tissue_hires_image.png`` / ``tissue_lowres_image.png`` thumbnails (kept as Space Ranger
wrote them, converted to uint8 RGB).

Choices:

* ``obsm['spatial'] = (pxl_col_in_fullres, pxl_row_in_fullres)`` = ``(x, y)``.
* µm/px = 55 / ``spot_diameter_fullres`` (``mpp_source='visium-spot-diameter'``): Visium
  spots are 55 µm wide and Space Ranger measures their diameter in full-resolution pixels
  from the fiducial frame; this is the standard estimate (squidpy, STUtility, ...).
* The full-resolution image is not part of ``outs/``. It is looked for next to the folder
  (in the folder itself and its parent, and the grand-parent when the folder is ``outs``):
  a file that :func:`napari_histoexpress.io.slides.open_slide` reads, whose size agrees (2 %)
  with ``hires size / tissue_hires_scalef``. If exactly one agrees it becomes
  ``metadata['source_image_path']``; otherwise the key is absent and
  ``metadata['source_image_note']`` says why.
* Barcodes of the matrix without a row in the positions file are dropped with a warning
  (``metadata['n_dropped_count_rows']``). The filtered matrix defines the spots, so
  ``n_dropped_spots`` is 0; in-tissue positions absent from the matrix (none in a
  complete Space Ranger run) are counted in ``n_in_tissue_positions_without_counts``.
* ``X`` is converted to CSR float32 (exact for counts below 2**24).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..errors import InputFileError
from .spatial import set_library
from .thumbnails import read_png_rgb

#: Diameter of a Visium spot.
VISIUM_SPOT_DIAMETER_UM = 55.0
_POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def is_spaceranger_folder(folder: str | Path) -> bool:
    """Whether ``folder`` (or its ``outs/``) looks like Space Ranger output."""
    folder = Path(folder)
    return any(
        (f / "filtered_feature_bc_matrix.h5").is_file() or (f / "spatial").is_dir()
        for f in (folder, folder / "outs")
    )


def _read_positions(spatial: Path) -> pd.DataFrame:
    with_header = spatial / "tissue_positions.csv"
    without_header = spatial / "tissue_positions_list.csv"
    if with_header.is_file():
        path, table = with_header, None
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError) as exc:
            raise InputFileError(path, f"cannot read tissue positions ({exc})") from exc
    elif without_header.is_file():
        path = without_header
        try:
            table = pd.read_csv(path, header=None)
        except (OSError, pd.errors.ParserError) as exc:
            raise InputFileError(path, f"cannot read tissue positions ({exc})") from exc
        if table.shape[1] != len(_POSITION_COLUMNS):
            raise InputFileError(
                path, f"expected {len(_POSITION_COLUMNS)} columns, found {table.shape[1]}"
            )
        table.columns = _POSITION_COLUMNS
    else:
        raise InputFileError(
            spatial, "no tissue_positions.csv or tissue_positions_list.csv in spatial/"
        )
    missing = [c for c in _POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise InputFileError(path, f"tissue positions lack column(s) {missing}")
    return table.set_index("barcode")


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of a candidate image (headers only), or ``None`` if unreadable."""
    from .slides import open_slide

    try:
        with open_slide(path) as slide:
            height, width = slide.shape
    except Exception:  # an unreadable candidate is simply not a candidate
        return None
    return width, height


def find_fullres_image(
    folder: Path, expected_wh: tuple[float, float] | None
) -> tuple[Path | None, str | None]:
    """Find the full-resolution image next to a Space Ranger folder (see module doc)."""
    from .slides import is_slide_path

    places = [folder, folder.parent]
    if folder.name == "outs":
        places.append(folder.parent.parent)
    candidates: list[Path] = []
    for place in places:
        if place.is_dir():
            candidates += sorted(p for p in place.iterdir() if p.is_file() and is_slide_path(p))
    if not candidates:
        return None, "no full-resolution image found next to the Space Ranger folder"
    matching = []
    for cand in candidates:
        size = _image_size(cand)
        if size is None:
            continue
        if expected_wh is None or all(
            abs(s - e) <= 0.02 * e for s, e in zip(size, expected_wh, strict=True)
        ):
            matching.append(cand)
    if len(matching) == 1:
        return matching[0].resolve(), None
    if not matching:
        return None, (
            f"{len(candidates)} image(s) next to the folder, none of the "
            "full-resolution size implied by the hires scale factor"
        )
    return None, f"several candidate full-resolution images: {[m.name for m in matching]}"


def read_visium(folder: str | Path, *, library_id: str | None = None) -> AnnData:
    """Read a Space Ranger output folder (or its parent holding ``outs/``), see module doc."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(folder, "not a folder (expected a Space Ranger output folder)")
    if not (folder / "spatial").is_dir() and (folder / "outs" / "spatial").is_dir():
        folder = folder / "outs"
    spatial = folder / "spatial"
    if not spatial.is_dir():
        raise InputFileError(
            folder,
            "no spatial/ subfolder (tissue positions, scale factors and images of Space "
            "Ranger): is this a Space Ranger outs/ folder?",
        )
    h5 = folder / "filtered_feature_bc_matrix.h5"
    if not h5.is_file():
        raise InputFileError(folder, "no filtered_feature_bc_matrix.h5 (the counts matrix)")
    scalefactor_path = spatial / "scalefactors_json.json"
    if not scalefactor_path.is_file():
        raise InputFileError(spatial, "no scalefactors_json.json")
    try:
        raw_scalefactors = json.loads(scalefactor_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(scalefactor_path, f"not valid JSON ({exc})") from exc
    if not raw_scalefactors.get("spot_diameter_fullres"):
        raise InputFileError(scalefactor_path, "no spot_diameter_fullres")
    positions = _read_positions(spatial)

    import scanpy as sc

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            adata = sc.read_10x_h5(h5)
    except Exception as exc:  # h5py/scanpy raise many types for a bad file
        raise InputFileError(h5, f"cannot read the 10x matrix ({exc})") from exc
    adata.var_names_make_unique()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    in_positions = adata.obs_names.isin(positions.index)
    n_dropped = int((~in_positions).sum())
    in_tissue = positions.index[positions["in_tissue"].to_numpy() == 1]
    n_tissue_without_counts = int((~in_tissue.isin(adata.obs_names)).sum())
    if n_dropped:
        warnings.warn(
            f"{n_dropped} barcode(s) of {h5} have no row in the tissue positions and were dropped",
            UserWarning,
            stacklevel=2,
        )
        adata = adata[in_positions].copy()
    if adata.n_obs == 0:
        raise InputFileError(folder, "no barcode of the matrix is in the tissue positions")
    pos = positions.loc[adata.obs_names]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = pos[col].to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(
        dtype=np.float64
    )

    scalefactors = {k: float(v) for k, v in raw_scalefactors.items() if isinstance(v, int | float)}
    mpp = VISIUM_SPOT_DIAMETER_UM / scalefactors["spot_diameter_fullres"]
    scalefactors["microns_per_pixel"] = mpp
    images = {}
    for key in ("hires", "lowres"):
        png = spatial / f"tissue_{key}_image.png"
        if png.is_file() and f"tissue_{key}_scalef" in scalefactors:
            images[key] = read_png_rgb(png)
    if not images:
        raise InputFileError(spatial, "no tissue_hires_image.png or tissue_lowres_image.png")

    key = "hires" if "hires" in images else "lowres"
    scalef = scalefactors[f"tissue_{key}_scalef"]
    expected = (images[key].shape[1] / scalef, images[key].shape[0] / scalef)
    source, note = find_fullres_image(folder, expected)

    lib_id = library_id or (folder.parent.name if folder.name == "outs" else folder.name)
    set_library(
        adata,
        lib_id,
        images=images,
        scalefactors=scalefactors,
        metadata={
            "source_image_path": str(source) if source else None,
            "source_image_note": note,
            "microns_per_pixel": mpp,
            "mpp_source": "visium-spot-diameter",
            "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
            "technology": "visium",
            # The filtered matrix defines the spots: positions without a barcode in it are
            # not "dropped" (only counted, for information); matrix barcodes without a
            # position are dropped.
            "n_dropped_spots": 0,
            "n_in_tissue_positions_without_counts": n_tissue_without_counts,
            "n_dropped_count_rows": n_dropped,
        },
    )
    return adata
