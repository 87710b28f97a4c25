"""Spatial-transcriptomics importers: real her2st / MOB / Visium data and synthetic error cases."""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from PIL import Image
from scipy import sparse

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io import spatial
from napari_histoexpress.io.export import write_h5ad_atomic
from napari_histoexpress.io.legacy_st import fit_array_pitch
from napari_histoexpress.io.st_datasets import (
    import_summary,
    read_h5ad,
    read_legacy_st,
    read_st_dataset,
    read_visium,
)

matplotlib.use("Agg")


def _her2st_paths(root: Path, section: str) -> tuple[Path, Path, Path]:
    return (
        root / "images" / f"{section}.jpg",
        root / "counts" / f"{section}.tsv.gz",
        root / "spots" / f"{section}_selection.tsv",
    )


def _read_recording(*args, **kwargs) -> tuple[AnnData, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = read_legacy_st(*args, **kwargs)
    return adata, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def c2(her2st: Path) -> AnnData:
    return read_legacy_st(*_her2st_paths(her2st, "C2"))


@pytest.fixture(scope="module")
def c3(her2st: Path) -> tuple[AnnData, list[str]]:
    return _read_recording(*_her2st_paths(her2st, "C3"))


@pytest.fixture(scope="module")
def mob1(shared_data: Path) -> tuple[AnnData, list[str]]:
    mob = shared_data / "mob"
    return _read_recording(
        mob / "MOB1.jpg", mob / "MOB1.tsv.gz", mob / "alignment_table_MOB1.tsv.gz"
    )


# ---------------------------------------------------------------------------------------------
# Real data: her2st


def test_her2st_c2_follows_the_convention(c2: AnnData, her2st: Path) -> None:
    _, counts_path, spots_path = _her2st_paths(her2st, "C2")
    counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    spots = pd.read_csv(spots_path, sep="\t")
    spots.index = spots.x.astype(str) + "x" + spots.y.astype(str)

    assert c2.shape == counts.shape
    assert sparse.issparse(c2.X) and c2.X.format == "csr"
    assert c2.obs_names.is_unique and c2.var_names.is_unique
    assert list(c2.obs_names) == list(counts.index)
    # raw counts, as in the file, for a few genes
    for gene in ("ERBB2", "GAPDH", counts.columns[-1]):
        np.testing.assert_array_equal(c2[:, gene].X.toarray().ravel(), counts[gene].to_numpy())
    # obsm['spatial'] = (pixel_x, pixel_y) of the joined spot
    np.testing.assert_allclose(
        c2.obsm["spatial"], spots.loc[c2.obs_names, ["pixel_x", "pixel_y"]].to_numpy()
    )
    assert (c2.obs["array_col"].to_numpy() == spots.loc[c2.obs_names, "x"].to_numpy()).all()

    lib_id, lib = spatial.library(c2)
    assert lib_id == "C2"
    assert lib["metadata"]["technology"] == "st"
    assert lib["metadata"]["mpp_source"] == "st-array-pitch"
    assert Path(spatial.source_image_path(c2)).samefile(her2st / "images" / "C2.jpg")
    mpp = spatial.microns_per_pixel(c2)
    assert spatial.spot_diameter_px(c2) == pytest.approx(100.0 / mpp)


def test_her2st_mpp_agrees_with_neighbour_spacing(c2: AnnData, her2st: Path) -> None:
    """Independent check of the array fit: median pixel distance of array neighbours."""
    spots = pd.read_csv(_her2st_paths(her2st, "C2")[2], sep="\t")
    pos = {(x, y): (px, py) for x, y, px, py in spots[["x", "y", "pixel_x", "pixel_y"]].values}
    steps = [
        np.hypot(pos[(x + dx, y + dy)][0] - px, pos[(x + dx, y + dy)][1] - py)
        for (x, y), (px, py) in pos.items()
        for dx, dy in ((1, 0), (0, 1))
        if (x + dx, y + dy) in pos
    ]
    independent = 200.0 / float(np.median(steps))
    assert spatial.microns_per_pixel(c2) == pytest.approx(independent, rel=0.02)
    # the image spans the array's spot-centre frame: width ≈ 32 pitches of 200 µm
    width_um = (
        spatial.library(c2)[1]["images"]["hires"].shape[1]
        / (spatial.library(c2)[1]["scalefactors"]["tissue_hires_scalef"])
        * spatial.microns_per_pixel(c2)
    )
    assert width_um == pytest.approx(32 * 200.0, rel=0.03)


def test_her2st_c3_drops_selected_spots_without_counts(c3, her2st: Path) -> None:
    adata, messages = c3
    _, counts_path, spots_path = _her2st_paths(her2st, "C3")
    counts_ids = set(pd.read_csv(counts_path, sep="\t", index_col=0, usecols=[0]).index)
    spots = pd.read_csv(spots_path, sep="\t")
    selected = {f"{x}x{y}" for x, y, s in spots[["x", "y", "selected"]].values if s == 1}
    missing = selected - counts_ids
    assert len(missing) > 0
    assert adata.n_obs == len(selected & counts_ids)
    assert not missing & set(adata.obs_names)
    dropped_msgs = [m for m in messages if "have no row in" in m]
    assert len(dropped_msgs) == 1
    assert f"{len(missing)} selected spot(s)" in dropped_msgs[0]
    assert str(spots_path) in dropped_msgs[0]
    meta = spatial.library(adata)[1]["metadata"]
    assert meta["n_dropped_spots"] == len(missing)
    assert meta["n_dropped_count_rows"] == 0
    summary = import_summary(adata)
    assert "\n" not in summary
    assert summary.startswith(f"C3: {adata.n_obs:,} spots, {adata.n_vars:,} genes, ")
    assert f"µm/px (st-array-pitch), {len(missing)} spots dropped (no counts)" in summary


def test_scanpy_spatial_plot_runs(c2: AnnData) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    axes = sc.pl.spatial(c2, color="ERBB2", show=False)
    assert axes and len(axes[0].collections) > 0
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# Real data: MOB alignment tables


def test_mob_alignment_table_variant(mob1, shared_data: Path) -> None:
    adata, messages = mob1
    mob = shared_data / "mob"
    counts_ids = list(pd.read_csv(mob / "MOB1.tsv.gz", sep="\t", index_col=0, usecols=[0]).index)
    table = pd.read_csv(mob / "alignment_table_MOB1.tsv.gz", sep="\t")
    assert (table["selected"] == 0).any()  # the variant lists unselected spots too
    ids = table.x.astype(str) + "x" + table.y.astype(str)
    selected = set(ids[table["selected"] == 1])
    kept = [i for i in counts_ids if i in selected]
    assert list(adata.obs_names) == kept
    meta = spatial.library(adata)[1]["metadata"]
    assert meta["n_dropped_count_rows"] == len(counts_ids) - len(kept)
    assert meta["n_count_rows_without_spot"] == len(set(counts_ids) - set(ids))
    # pixel coordinates refer to the supplied down-scaled JPEG: the thumbnail is the image
    with Image.open(mob / "MOB1.jpg") as im:
        width, height = im.size
    xy = adata.obsm["spatial"]
    assert (xy[:, 0] < width).all() and (xy[:, 1] < height).all()
    lib = spatial.library(adata)[1]
    assert lib["images"]["hires"].shape == (height, width, 3)
    assert lib["scalefactors"]["tissue_hires_scalef"] == 1.0
    # staggered array + anisotropic JPEG: µm/px not estimated, and said so
    assert spatial.microns_per_pixel(adata) is None
    assert meta["mpp_source"] == "unknown" and meta["array_layout"] == "staggered"
    assert any("µm/px unknown" in m for m in messages)
    assert "µm/px unknown (unknown)" in import_summary(adata)
    assert spatial.spot_diameter_px(adata) > 0


def test_mob_user_mpp_wins(shared_data: Path) -> None:
    mob = shared_data / "mob"
    adata, messages = _read_recording(
        mob / "MOB2.jpg", mob / "MOB2.tsv.gz", mob / "alignment_table_MOB2.tsv.gz", mpp=5.0
    )
    assert spatial.microns_per_pixel(adata) == 5.0
    assert spatial.library(adata)[1]["metadata"]["mpp_source"] == "user"
    assert spatial.spot_diameter_px(adata) == pytest.approx(100.0 / 5.0)
    assert not any("µm/px unknown" in m for m in messages)


# ---------------------------------------------------------------------------------------------
# Real data: Visium


def test_visium_toy(shared_data: Path) -> None:
    folder = shared_data / "visium_toy"
    adata = read_visium(folder)
    assert adata.shape == (100, 100)
    assert adata.X.format == "csr" and adata.var_names.is_unique
    positions = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None)
    positions = positions.set_index(0)
    np.testing.assert_allclose(adata.obsm["spatial"], positions.loc[adata.obs_names, [5, 4]])
    scalefactors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    assert spatial.microns_per_pixel(adata) == pytest.approx(
        55.0 / scalefactors["spot_diameter_fullres"]
    )
    lib_id, lib = spatial.library(adata)
    assert lib_id == "visium_toy"
    assert lib["metadata"]["mpp_source"] == "visium-spot-diameter"
    assert lib["images"]["hires"].dtype == np.uint8 and lib["images"]["hires"].shape[2] == 3
    assert lib["images"]["lowres"].shape == (600, 600, 3)
    assert spatial.source_image_path(adata) is None
    assert "no full-resolution image" in lib["metadata"]["source_image_note"]
    again = read_st_dataset(folder)
    assert again.shape == adata.shape
    assert import_summary(adata).startswith("visium_toy: 100 spots, 100 genes, ")


# ---------------------------------------------------------------------------------------------
# Synthetic files


def _write_legacy(
    tmp: Path,
    *,
    n_x: int = 6,
    n_y: int = 5,
    pitch: float = 150.0,
    size: tuple[int, int] = (1200, 1000),
    gz: bool = True,
    missing_counts: tuple[str, ...] = (),
) -> tuple[Path, Path, Path]:
    """A legacy-ST section: white PNG with red disks at spot centres, counts, spot table."""
    rng = np.random.default_rng(0)
    rows = []
    for x in range(1, n_x + 1):
        for y in range(1, n_y + 1):
            px, py = 300.0 + pitch * (x - 1), 200.0 + pitch * (y - 1)
            rows.append((x, y, float(x), float(y), px, py, 1))
    spots = pd.DataFrame(
        rows, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]
    )
    spots_path = tmp / "S1_selection.tsv"
    spots.to_csv(spots_path, sep="\t", index=False)

    ids = [
        f"{x}x{y}"
        for x, y in zip(spots.x, spots.y, strict=True)
        if f"{x}x{y}" not in missing_counts
    ]
    genes = ["GENEA", "GENEB", "GENEA", "GENEC"]  # duplicated symbol on purpose
    values = rng.integers(0, 20, size=(len(ids), len(genes)))
    text = "\t" + "\t".join(genes) + "\n"
    text += "".join(
        f"{i}\t" + "\t".join(map(str, v)) + "\n" for i, v in zip(ids, values, strict=True)
    )
    counts_path = tmp / ("S1.tsv.gz" if gz else "S1.tsv")
    if gz:
        with gzip.open(counts_path, "wt") as fh:
            fh.write(text)
    else:
        counts_path.write_text(text)

    from PIL import ImageDraw

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for px, py in spots[["pixel_x", "pixel_y"]].to_numpy():
        draw.ellipse((px - 30, py - 30, px + 30, py + 30), fill=(255, 0, 0))
    image_path = tmp / "S1.png"
    image.save(image_path)
    return image_path, counts_path, spots_path


def test_synthetic_legacy_mpp_and_thumbnails(tmp_path: Path) -> None:
    image, counts, spots = _write_legacy(tmp_path, pitch=150.0, gz=False, size=(3000, 2500))
    adata = read_legacy_st(image, counts, spots)
    assert spatial.microns_per_pixel(adata) == pytest.approx(200.0 / 150.0)
    assert list(adata.var_names) == ["GENEA", "GENEB", "GENEA-1", "GENEC"]
    lib = spatial.library(adata, "S1")[1]
    hires, lowres = lib["images"]["hires"], lib["images"]["lowres"]
    assert max(hires.shape[:2]) == 2000 and max(lowres.shape[:2]) == 600
    assert hires.dtype == np.uint8 and hires.shape[2] == 3
    for key, img in (("hires", hires), ("lowres", lowres)):
        scalef = lib["scalefactors"][f"tissue_{key}_scalef"]
        for x, y in adata.obsm["spatial"]:
            r, g, b = img[round(y * scalef), round(x * scalef)].astype(int)
            assert r > 200 and g < 60 and b < 60, (key, x, y)
        # and between spots the thumbnail is white (the disks are where the spots are)
        x, y = adata.obsm["spatial"][0] + 75.0
        assert img[round(y * scalef), round(x * scalef)].min() > 200


def test_synthetic_legacy_user_mpp_and_drops(tmp_path: Path) -> None:
    image, counts, spots = _write_legacy(tmp_path, missing_counts=("2x3", "4x4"))
    adata, messages = _read_recording(
        image, counts, spots, mpp=0.5, spot_diameter_um=55.0, library_id="lib"
    )
    assert spatial.library_ids(adata) == ["lib"]
    assert spatial.microns_per_pixel(adata) == 0.5
    assert spatial.spot_diameter_px(adata) == pytest.approx(110.0)
    assert spatial.library(adata)[1]["metadata"]["n_dropped_spots"] == 2
    assert any("2 selected spot(s)" in m and str(counts) in m for m in messages)
    assert "2 spots dropped (no counts)" in import_summary(adata)


def test_array_fit_refuses_too_few_spots() -> None:
    fit = fit_array_pitch(np.array([[1.0, 1.0], [2.0, 1.0]]), np.array([[0.0, 0.0], [290.0, 0.0]]))
    assert fit.mpp is None and "too few spots" in fit.note


def test_counts_and_spots_disagree(tmp_path: Path) -> None:
    image, counts, spots = _write_legacy(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    table["x"] += 100  # no common id any more
    table.to_csv(spots, sep="\t", index=False)
    with pytest.raises(InputFileError) as info:
        read_legacy_st(image, counts, spots)
    assert str(counts) in str(info.value) and str(spots) in str(info.value)


def test_counts_of_another_section_are_refused(tmp_path: Path) -> None:
    """Most selected spots without counts: the files are of different sections (issue 9:
    C2 counts with C3 spots kept 32 of 182 spots without a word)."""
    from napari_histoexpress.errors import InputFileWarning

    ids = [f"{x}x{y}" for x in range(1, 7) for y in range(1, 6)]
    image, counts, spots = _write_legacy(tmp_path, missing_counts=tuple(ids[:20]))
    with pytest.raises(InputFileError) as info:
        read_legacy_st(image, counts, spots)
    assert info.value.path == str(spots) and str(counts) in info.value.problem
    assert "20 of its 30 selected spots" in info.value.problem
    assert info.value.setting == "allow_missing_counts"
    assert "allow_missing_counts" not in str(info.value)  # the front end names its flag
    with pytest.warns(InputFileWarning, match="20 of its 30"):
        adata = read_legacy_st(image, counts, spots, allow_missing_counts=True)
    assert adata.n_obs == 10
    # half or fewer missing: dropped with a warning, as before
    image, counts, spots = _write_legacy(tmp_path, missing_counts=tuple(ids[:15]))
    assert read_legacy_st(image, counts, spots).n_obs == 15


def test_unknown_mpp_warning_carries_the_setting(tmp_path: Path) -> None:
    from napari_histoexpress.errors import InputFileWarning

    image, counts, spots = _write_legacy(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    table["pixel_y"] *= 1.1  # 10 % anisotropic: no single µm/px
    table.to_csv(spots, sep="\t", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = read_legacy_st(image, counts, spots)
    assert spatial.microns_per_pixel(adata) is None
    unknown = [w.message for w in caught if "µm/px unknown" in str(w.message)]
    assert len(unknown) == 1 and isinstance(unknown[0], InputFileWarning)
    assert unknown[0].setting == "mpp" and "mpp=" not in str(unknown[0])
    with pytest.raises(InputFileError, match="positive") as info:
        read_legacy_st(image, counts, spots, mpp=-1.0)
    assert info.value.setting == "mpp"


def test_spot_pixels_outside_image(tmp_path: Path) -> None:
    image, counts, spots = _write_legacy(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    table[["pixel_x", "pixel_y"]] *= 10  # coordinates of a 10x larger image
    table.to_csv(spots, sep="\t", index=False)
    with pytest.raises(InputFileError, match="outside the image"):
        read_legacy_st(image, counts, spots)


def test_legacy_missing_files_and_columns(tmp_path: Path) -> None:
    image, counts, spots = _write_legacy(tmp_path)
    with pytest.raises(InputFileError, match="image file not found"):
        read_legacy_st(tmp_path / "nope.jpg", counts, spots)
    with pytest.raises(InputFileError, match="counts table file not found"):
        read_legacy_st(image, tmp_path / "nope.tsv.gz", spots)
    pd.read_csv(spots, sep="\t").drop(columns=["pixel_x"]).to_csv(spots, sep="\t", index=False)
    with pytest.raises(InputFileError, match=r"lacks column\(s\) \['pixel_x'\]"):
        read_legacy_st(image, counts, spots)


def _write_10x_h5(path: Path, barcodes: list[str], genes: list[str], counts: np.ndarray) -> None:
    """The Cell Ranger/Space Ranger ≥ 3 HDF5 layout (features × barcodes CSC)."""
    mat = sparse.csc_matrix(counts.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = mat.data, mat.indices, mat.indptr
        g["shape"] = np.array(mat.shape, dtype=np.int32)
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


def _write_spaceranger(tmp: Path, *, with_header: bool = True) -> Path:
    outs = tmp / "sampleA" / "outs"
    (outs / "spatial").mkdir(parents=True)
    barcodes = [f"AAAC{i:04d}-1" for i in range(12)]
    counts = np.arange(12 * 3).reshape(12, 3) % 7
    _write_10x_h5(outs / "filtered_feature_bc_matrix.h5", barcodes, ["G1", "G2", "G3"], counts)
    rows = [
        (b, 1, i // 4, i % 4, 300 + 100 * (i // 4), 400 + 100 * (i % 4))
        for i, b in enumerate(barcodes)
    ]
    rows.append(("TTTT0000-1", 0, 9, 9, 50, 50))  # an out-of-tissue position
    cols = [
        "barcode",
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    table = pd.DataFrame(rows, columns=cols)
    if with_header:
        table.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    else:
        table.to_csv(outs / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    scalef = {
        "spot_diameter_fullres": 50.0,
        "tissue_hires_scalef": 0.1,
        "tissue_lowres_scalef": 0.03,
        "fiducial_diameter_fullres": 80.0,
    }
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef))
    Image.new("RGBA", (200, 150), (10, 20, 30, 255)).save(
        outs / "spatial" / "tissue_hires_image.png"
    )
    Image.new("RGB", (60, 45), (10, 20, 30)).save(outs / "spatial" / "tissue_lowres_image.png")
    return outs


def test_synthetic_spaceranger_with_fullres_image(tmp_path: Path) -> None:
    _write_spaceranger(tmp_path)
    fullres = tmp_path / "sampleA" / "sampleA_HE.jpg"
    Image.new("RGB", (2000, 1500), (200, 100, 150)).save(fullres)
    Image.new("RGB", (640, 480)).save(tmp_path / "sampleA" / "photo_of_the_slide.jpg")  # wrong size
    adata = read_visium(tmp_path / "sampleA")  # the parent of outs/ works too
    assert adata.shape == (12, 3)
    assert spatial.library_ids(adata) == ["sampleA"]
    np.testing.assert_array_equal(adata.X.toarray(), np.arange(36).reshape(12, 3) % 7)
    np.testing.assert_allclose(adata.obsm["spatial"][5], [400 + 100 * 1, 300 + 100 * 1])
    assert Path(spatial.source_image_path(adata)).samefile(fullres)
    assert spatial.microns_per_pixel(adata) == pytest.approx(55.0 / 50.0)
    assert spatial.library(adata)[1]["images"]["hires"].shape == (150, 200, 3)


def test_spaceranger_without_header_and_h5ad_roundtrip(tmp_path: Path) -> None:
    outs = _write_spaceranger(tmp_path, with_header=False)
    adata = read_st_dataset(outs)
    assert adata.n_obs == 12
    path = write_h5ad_atomic(adata, tmp_path / "a.h5ad")
    back = read_st_dataset(path)
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    np.testing.assert_allclose(back.obsm["spatial"], adata.obsm["spatial"])
    assert import_summary(back) == import_summary(adata)
    assert spatial.microns_per_pixel(back) == spatial.microns_per_pixel(adata)


def test_spaceranger_folder_without_spatial(tmp_path: Path) -> None:
    outs = _write_spaceranger(tmp_path)
    shutil.rmtree(outs / "spatial")
    with pytest.raises(InputFileError) as info:
        read_visium(outs)
    assert str(outs) in str(info.value) and "spatial/" in str(info.value)
    with pytest.raises(InputFileError, match="spatial/"):
        read_st_dataset(outs)


def test_spaceranger_missing_files(tmp_path: Path) -> None:
    outs = _write_spaceranger(tmp_path)
    (outs / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(InputFileError, match="tissue_positions"):
        read_visium(outs)
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(InputFileError, match=r"filtered_feature_bc_matrix\.h5"):
        read_visium(outs)
    with pytest.raises(InputFileError, match="not a Space Ranger output folder"):
        read_st_dataset(tmp_path / "sampleA" / "outs" / "spatial")


def test_read_h5ad_rejects_bad_files(tmp_path: Path) -> None:
    not_h5ad = tmp_path / "table.h5ad"
    not_h5ad.write_text("x,y\n1,2\n")
    with pytest.raises(InputFileError, match=r"not a readable \.h5ad"):
        read_h5ad(not_h5ad)
    with pytest.raises(InputFileError, match="file not found"):
        read_h5ad(tmp_path / "absent.h5ad")

    plain = AnnData(X=np.ones((3, 2), np.float32))
    plain.write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(InputFileError) as info:
        read_h5ad(tmp_path / "plain.h5ad")
    assert "plain.h5ad" in str(info.value) and "obsm['spatial']" in str(info.value)

    plain.obsm["spatial"] = np.zeros((3, 2))
    plain.write_h5ad(tmp_path / "nolib.h5ad")
    with pytest.raises(InputFileError, match="no spatial library"):
        read_st_dataset(tmp_path / "nolib.h5ad")

    with pytest.raises(InputFileError, match=r"expected an \.h5ad file"):
        read_st_dataset(_touch(tmp_path / "x.csv"))


def _touch(path: Path) -> Path:
    path.write_text("")
    return path
