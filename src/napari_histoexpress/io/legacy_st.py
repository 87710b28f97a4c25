"""Legacy Spatial Transcriptomics (Ståhl et al. 2016 arrays) → spatial AnnData.

Two real-world layouts are read by the same function (:func:`read_legacy_st`):

* **her2st** (Andersson et al. 2021): ``images/C2.jpg``, ``counts/C2.tsv.gz`` (spots ×
  genes, row id ``"{x}x{y}"``), ``spots/C2_selection.tsv`` (plain text, columns
  ``x y new_x new_y pixel_x pixel_y selected``, only selected spots listed).
* **ST alignment table** (ST Spot Detector output as shipped with STUtility, e.g. the MOB
  example): ``MOB1.jpg``, ``MOB1.tsv.gz``, ``alignment_table_MOB1.tsv.gz`` — the same
  columns, gzip-compressed, listing *every* array spot with ``selected`` 0/1 (1 = under
  the tissue), pixel coordinates referring to the supplied (down-scaled) JPEG.

Nothing has to be said about which layout it is: compression is inferred from the file
name, spots with ``selected == 0`` are dropped when the column exists (the count rows of
those spots are counted as dropped, as "outside the tissue"), and the pixel coordinates
are checked to fall inside the supplied image (an error otherwise, since they would then
refer to another version of the image).

µm per pixel
------------
A user-given ``mpp`` wins (``mpp_source='user'``). Otherwise it is *estimated* from the
array: on the 1k ST array the spots sit on a square grid with a 200 µm centre-to-centre
pitch per array unit (spots 100 µm in diameter). An affine least-squares fit of
``(pixel_x, pixel_y)`` on the array coordinates (``new_x, new_y`` — the detected, sub-unit
positions — when present, else ``x, y``) gives the pixels per array unit (geometric mean
of the two singular values of the linear part), and ``mpp = 200 / px_per_unit``
(``mpp_source='st-array-pitch'``). For her2st this gives about 0.69 µm/px: the pixel
coordinates are an exact affine function of ``new_x/new_y`` (residual < 0.01 px) at
about 290 px per unit, and the images span exactly the 33 × 35 spot-centre frame of the
array (9,274 px ≈ 32 × 290 px). The median nearest-neighbour distance (about 271 px) is
a biased estimator of the pitch (minimum over jittered neighbours) and is not used.

The estimate is refused (``microns_per_pixel`` absent, ``mpp_source='unknown'``, reason in
``metadata['mpp_note']``, a warning) when it would not be trustworthy:

* fewer than 3 spots or collinear array coordinates (no fit),
* a *staggered* (checkerboard) layout, i.e. all ``x + y`` of one parity, as in the MOB
  alignment tables: that is not the 1k array, and its pitch per array unit is not
  documented in the data,
* pixel scales differing by more than 3 % between the two axes (an image resampled
  non-uniformly, as the square MOB JPEGs are), where no single µm/px exists,
* fit residuals above a quarter of an array unit (coordinates not on an array).

Spot diameter in pixels: ``spot_diameter_um / mpp`` when the µm/px is known; otherwise half
the median nearest-neighbour centre distance (on ST arrays the spot diameter is half the
pitch), recorded as ``metadata['spot_diameter_source']``.
"""

from __future__ import annotations

import gzip
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree

from ..errors import InputFileError, InputFileWarning
from .spatial import set_library
from .thumbnails import thumbnails_from_slide

#: Centre-to-centre distance of neighbouring spots on the 1k ST array, per array unit.
ST_ARRAY_PITCH_UM = 200.0
#: Maximum relative difference of the x and y pixel scales for a single µm/px.
MAX_ANISOTROPY = 0.03
#: Minimum number of spots for the array fit.
MIN_SPOTS_FOR_FIT = 3
#: Largest fraction of the selected spots that may lack a counts row: above it the two
#: files are taken to belong to different sections and the import is refused (unless
#: ``allow_missing_counts``). Real sections lack a handful at most (her2st C3: 2 of 182).
MAX_FRACTION_WITHOUT_COUNTS = 0.5

_SPOT_ID = re.compile(r"^\d+x\d+$")
_REQUIRED_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


@dataclass(frozen=True)
class ArrayFit:
    """Result of fitting pixel coordinates on ST array coordinates."""

    px_per_unit: float | None
    anisotropy: float | None
    rms_px: float | None
    layout: str  # "square", "staggered" or "unknown"
    mpp: float | None
    note: str | None


def fit_array_pitch(
    array_xy: np.ndarray,
    pixel_xy: np.ndarray,
    *,
    layout_xy: np.ndarray | None = None,
    pitch_um: float = ST_ARRAY_PITCH_UM,
) -> ArrayFit:
    """Estimate µm/px from spots' array coordinates and pixel centres (see module doc).

    ``array_xy``: ``(n, 2)`` array coordinates used in the fit (``new_x/new_y`` or
    ``x/y``); ``layout_xy``: the integer ``x/y`` used to detect a staggered layout
    (defaults to ``array_xy``).
    """
    array_xy = np.asarray(array_xy, dtype=np.float64)
    pixel_xy = np.asarray(pixel_xy, dtype=np.float64)
    ok = np.isfinite(array_xy).all(1) & np.isfinite(pixel_xy).all(1)
    array_xy, pixel_xy = array_xy[ok], pixel_xy[ok]
    lay = np.asarray(layout_xy if layout_xy is not None else array_xy)[ok]
    design = np.c_[array_xy, np.ones(len(array_xy))]
    if len(array_xy) < MIN_SPOTS_FOR_FIT or np.linalg.matrix_rank(design) < 3:
        return ArrayFit(
            None,
            None,
            None,
            "unknown",
            None,
            f"too few spots ({len(array_xy)}) "
            "or collinear array coordinates: cannot fit the array pitch",
        )
    coef, *_ = np.linalg.lstsq(design, pixel_xy, rcond=None)
    linear = coef[:2].T  # pixel = linear @ array + offset
    singular = np.linalg.svd(linear, compute_uv=False)
    px_per_unit = float(np.sqrt(singular[0] * singular[1]))
    anisotropy = float(singular[0] / singular[1] - 1.0) if singular[1] > 0 else float("inf")
    rms = float(np.sqrt(((design @ coef - pixel_xy) ** 2).sum(1).mean()))
    parity = np.round(lay).astype(np.int64).sum(1) % 2
    layout = "staggered" if len(np.unique(parity)) == 1 and len(parity) > 3 else "square"
    note = None
    if layout == "staggered":
        note = (
            "staggered (checkerboard) array layout: not the 1k ST array, its pitch per "
            "array unit is unknown"
        )
    elif anisotropy > MAX_ANISOTROPY:
        note = (
            f"pixel scale differs by {anisotropy:.0%} between x and y (image resampled "
            "non-uniformly?): no single µm/px"
        )
    elif rms > 0.25 * px_per_unit:
        note = f"spot pixels do not follow the array grid (fit residual {rms:.0f} px)"
    mpp = None if note else pitch_um / px_per_unit
    return ArrayFit(px_per_unit, anisotropy, rms, layout, mpp, note)


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def read_counts_table(path: str | Path) -> tuple[sparse.csr_matrix, list[str], list[str]]:
    """A legacy-ST counts table as ``(X csr float32 spots × genes, spot_ids, genes)``.

    Tab-separated, gzip or plain; rows are spots ``"{x}x{y}"`` (a genes × spots table is
    transposed automatically). Gene names are kept verbatim (duplicates are made unique
    later, by AnnData's ``var_names_make_unique``, not by pandas' ``.1`` mangling).
    """
    path = Path(path)
    try:
        with _open_text(path) as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
        frame = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, EOFError) as exc:
        raise InputFileError(path, f"cannot read the counts table ({exc})") from exc
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputFileError(path, "the counts table is empty")
    n_cols = frame.shape[1]
    if len(header) == n_cols + 1:
        columns = header[1:]
    elif len(header) == n_cols:
        columns = header
    else:
        raise InputFileError(path, f"header has {len(header)} names for {n_cols} value columns")
    rows = [str(r) for r in frame.index]
    try:
        values = frame.to_numpy(dtype=np.float32)
    except ValueError as exc:
        raise InputFileError(path, f"the counts table has non-numeric values ({exc})") from exc
    if not all(_SPOT_ID.match(r) for r in rows):
        if all(_SPOT_ID.match(c) for c in columns):
            rows, columns, values = columns, rows, values.T
        else:
            raise InputFileError(path, "rows (or columns) must be spot ids '{x}x{y}', e.g. 10x21")
    if len(set(rows)) != len(rows):
        raise InputFileError(path, "the counts table has duplicated spot ids")
    return sparse.csr_matrix(values), rows, columns


def read_spot_table(path: str | Path) -> pd.DataFrame:
    """A spot file (``*_selection.tsv`` or ``alignment_table_*.tsv.gz``), indexed ``"{x}x{y}"``."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
        if table.shape[1] == 1:  # not tab-separated: let pandas sniff the separator
            table = pd.read_csv(path, sep=None, engine="python")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, EOFError) as exc:
        raise InputFileError(path, f"cannot read the spot table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in _REQUIRED_SPOT_COLUMNS if c not in table.columns]
    if missing:
        raise InputFileError(
            path, f"spot table lacks column(s) {missing} (has {list(table.columns)})"
        )
    xy = table[["x", "y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all() or not np.allclose(xy, np.round(xy)):
        raise InputFileError(path, "columns x and y must be integer array coordinates")
    table.index = pd.Index([f"{round(a)}x{round(b)}" for a, b in xy.tolist()], name="spot_id")
    if table.index.has_duplicates:
        raise InputFileError(path, "the spot table lists the same array spot (x, y) twice")
    return table


def _spot_diameter_from_neighbours(pixel_xy: np.ndarray) -> float | None:
    if len(pixel_xy) < 2:
        return None
    dist, _ = cKDTree(pixel_xy).query(pixel_xy, k=2)
    return float(0.5 * np.median(dist[:, 1]))


def read_legacy_st(
    image: str | Path,
    counts: str | Path,
    spots: str | Path,
    *,
    spot_diameter_um: float = 100.0,
    mpp: float | None = None,
    library_id: str | None = None,
    allow_missing_counts: bool = False,
) -> AnnData:
    """Read one legacy-ST section (image + counts + spot table) as spatial AnnData.

    See the module docstring for the layouts read, the join rules and how µm/px is
    estimated. ``X`` holds the raw counts (CSR float32), ``obs_names`` are ``"{x}x{y}"``,
    ``obs`` has ``array_col`` (= x) and ``array_row`` (= y), ``obsm['spatial']`` is
    ``(pixel_x, pixel_y)`` in pixels of ``image``. The library id defaults to the image
    file's stem (``C2`` for ``C2.jpg``).

    When more than :data:`MAX_FRACTION_WITHOUT_COUNTS` of the selected spots have no counts
    row, the counts and the spots most likely come from different sections (e.g. ``C2``
    counts with ``C3`` spots, which share 32 spot ids by chance): :class:`InputFileError`
    (setting ``"allow_missing_counts"``) unless ``allow_missing_counts`` is true. Fewer
    missing rows are dropped with an :class:`InputFileWarning`.
    """
    image, counts, spots = Path(image), Path(counts), Path(spots)
    for path, what in ((image, "image"), (counts, "counts table"), (spots, "spot table")):
        if not path.is_file():
            raise InputFileError(path, f"{what} file not found")
    if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
        raise InputFileError(
            image, f"µm per pixel must be a positive number, got {mpp!r}", setting="mpp"
        )
    lib_id = library_id or image.name.split(".")[0]

    X, count_ids, genes = read_counts_table(counts)
    table = read_spot_table(spots)

    # Array fit on every listed spot (unselected ones too: more spots, same grid).
    has_new = {"new_x", "new_y"} <= set(table.columns)
    fit_cols = ["new_x", "new_y"] if has_new else ["x", "y"]
    fit = fit_array_pitch(
        table[fit_cols].to_numpy(dtype=np.float64),
        table[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64),
        layout_xy=table[["x", "y"]].to_numpy(dtype=np.float64),
    )

    n_listed = len(table)
    if "selected" in table.columns:
        selected = table[pd.to_numeric(table["selected"], errors="coerce").fillna(0) == 1]
    else:
        selected = table
    count_set = set(count_ids)
    keep_ids = [i for i in count_ids if i in selected.index]
    if not keep_ids:
        raise InputFileError(
            counts,
            f"no spot in common with the spot table {spots} ({len(count_ids)} count rows, "
            f"{len(selected)} selected spots; row ids must be '{{x}}x{{y}}' on both sides)",
        )
    spots_without_counts = [i for i in selected.index if i not in count_set]
    n_without_spot = sum(1 for i in count_ids if i not in table.index)
    n_unselected_rows = sum(1 for i in count_ids if i in table.index and i not in selected.index)
    if len(spots_without_counts) > MAX_FRACTION_WITHOUT_COUNTS * len(selected):
        problem = (
            f"{len(spots_without_counts)} of its {len(selected)} selected spots have no row "
            f"in the counts table {counts}: the two files seem to be of different sections"
        )
        if not allow_missing_counts:
            raise InputFileError(spots, problem, setting="allow_missing_counts")
        warnings.warn(InputFileWarning(spots, f"{problem}; imported anyway"), stacklevel=2)
    elif spots_without_counts:
        warnings.warn(
            InputFileWarning(
                spots,
                f"{len(spots_without_counts)} selected spot(s) have no row in the counts "
                f"table {counts} and were dropped, e.g. {spots_without_counts[:5]}",
            ),
            stacklevel=2,
        )
    if n_without_spot:
        warnings.warn(
            InputFileWarning(
                counts, f"{n_without_spot} count row(s) have no spot in {spots} and were dropped"
            ),
            stacklevel=2,
        )

    from .slides import open_slide  # late import: slides pulls tifffile/zarr/dask

    final_mpp = float(mpp) if mpp is not None else fit.mpp
    kept = selected.loc[keep_ids]
    pixel_xy = kept[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    with open_slide(image, mpp=final_mpp) as slide:
        height, width = slide.shape
        outside = ~(
            (pixel_xy[:, 0] >= 0)
            & (pixel_xy[:, 0] < width)
            & (pixel_xy[:, 1] >= 0)
            & (pixel_xy[:, 1] < height)
        )
        if outside.mean() > 0.05:
            raise InputFileError(
                spots,
                f"{int(outside.sum())} of {len(outside)} spot centres lie outside the image "
                f"{image} ({width} × {height} px): the pixel coordinates refer to another "
                "version (size) of the image",
            )
        images, scalefactors = thumbnails_from_slide(slide)

    row_index = {sid: k for k, sid in enumerate(count_ids)}
    X = X[[row_index[i] for i in keep_ids]]
    adata = AnnData(X=X)
    adata.obs_names = pd.Index(keep_ids)
    adata.var_names = pd.Index(genes)
    adata.var_names_make_unique()
    adata.obs["array_col"] = kept["x"].round().astype(np.int64).to_numpy()
    adata.obs["array_row"] = kept["y"].round().astype(np.int64).to_numpy()
    adata.obsm["spatial"] = pixel_xy

    if mpp is not None:
        mpp_source = "user"
    elif fit.mpp is not None:
        mpp_source = "st-array-pitch"
    else:
        mpp_source = "unknown"
        warnings.warn(
            InputFileWarning(
                image,
                f"µm/px unknown ({fit.note}); the spot size is estimated from the spot "
                "spacing and training or prediction will need the µm/px",
                setting="mpp",
            ),
            stacklevel=2,
        )
    if final_mpp is not None:
        spot_px = spot_diameter_um / final_mpp
        spot_source = "spot_diameter_um / microns_per_pixel"
    else:
        spot_px = _spot_diameter_from_neighbours(pixel_xy) or 1.0
        spot_source = "half-nearest-neighbour-distance"

    scalefactors["spot_diameter_fullres"] = float(spot_px)
    if final_mpp is not None:  # unknown = absent (the spatial convention)
        scalefactors["microns_per_pixel"] = final_mpp
    set_library(
        adata,
        lib_id,
        images=images,
        scalefactors=scalefactors,
        metadata={
            "source_image_path": str(image.resolve()),
            "counts_path": str(counts.resolve()),
            "spots_path": str(spots.resolve()),
            "microns_per_pixel": final_mpp,
            "mpp_source": mpp_source,
            "mpp_note": fit.note if mpp_source == "unknown" else None,
            "array_px_per_unit": fit.px_per_unit,
            "array_fit_rms_px": fit.rms_px,
            "array_fit_anisotropy": fit.anisotropy,
            "array_layout": fit.layout,
            "array_fit_columns": ",".join(fit_cols),
            "spot_diameter_um": float(spot_diameter_um),
            "spot_diameter_source": spot_source,
            "technology": "st",
            "spot_table_rows": n_listed,
            "n_dropped_spots": len(spots_without_counts),
            "n_dropped_count_rows": len(count_ids) - len(keep_ids),
            "n_count_rows_unselected": n_unselected_rows,
            "n_count_rows_without_spot": n_without_spot,
        },
    )
    return adata
