"""The synthetic tissue: determinism, realism of scale, spot truth, files, shipped sample."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from napari_histoexpress.errors import InputFileError
from napari_histoexpress.io import synthetic as syn
from napari_histoexpress.io._synthetic_image import I0, STAIN_VECTORS
from napari_histoexpress.io.spatial import (
    microns_per_pixel,
    source_image_path,
    spot_centres_px,
    spot_diameter_px,
)

SMALL = {"size_um": 400.0}


@pytest.fixture(scope="module")
def sample() -> syn.SyntheticTissue:
    """The full-size tissue of the shipped sample (seed SAMPLE_SEED, default size)."""
    return syn.generate_synthetic_tissue(syn.SAMPLE_SEED)


@pytest.fixture(scope="module")
def small() -> syn.SyntheticTissue:
    return syn.generate_synthetic_tissue(5, **SMALL)


def _haematoxylin(image: np.ndarray) -> np.ndarray:
    """Colour deconvolution with the generator's own stain vectors (least squares)."""
    od = -np.log(np.clip(image.astype(np.float32), 1, None) / I0)
    conc, *_ = np.linalg.lstsq(STAIN_VECTORS.T, od.reshape(-1, 3).T, rcond=None)
    return conc[0].reshape(image.shape[:2])


def test_same_seed_same_arrays_other_seed_differs(small: syn.SyntheticTissue) -> None:
    again = syn.generate_synthetic_tissue(5, **SMALL)
    np.testing.assert_array_equal(again.image, small.image)
    np.testing.assert_array_equal(again.compartments, small.compartments)
    np.testing.assert_array_equal(again.spots.X, small.spots.X)
    np.testing.assert_array_equal(again.spots.obsm["spatial"], small.spots.obsm["spatial"])
    other = syn.generate_synthetic_tissue(6, **SMALL)
    assert (other.compartments != small.compartments).mean() > 0.05
    assert np.abs(other.image.astype(int) - small.image).mean() > 5


def test_shapes_and_types(small: syn.SyntheticTissue) -> None:
    n = round(SMALL["size_um"] / 0.5)
    assert small.image.shape == (n, n, 3) and small.image.dtype == np.uint8
    assert small.compartments.shape == (n, n) and small.compartments.dtype == np.uint8
    assert small.compartments.max() < len(syn.COMPARTMENTS)
    assert small.profiles.shape == (len(syn.COMPARTMENTS), len(small.genes))
    assert list(small.spots.var_names) == small.genes
    assert 30 <= len(small.genes) <= 40
    for gene in ("ERBB2", "KRT19", "EPCAM", "PTPRC", "CD74", "COL1A1", "ADIPOQ", "ACTB"):
        assert gene in small.genes
    assert np.all(small.profiles[0] == 0)  # glass has no RNA


def test_compartment_fractions_plausible(sample: syn.SyntheticTissue) -> None:
    frac = np.bincount(sample.compartments.ravel(), minlength=6) / sample.compartments.size
    bounds = {
        "background": (0.1, 0.45),
        "stroma": (0.15, 0.5),
        "tumour": (0.1, 0.35),
        "immune": (0.03, 0.15),
        "fat": (0.04, 0.15),
        "necrosis": (0.002, 0.05),
    }
    for name, (lo, hi) in bounds.items():
        f = frac[syn.COMPARTMENTS.index(name)]
        assert lo <= f <= hi, (name, f)


def test_region_scale_is_hundreds_of_microns(sample: syn.SyntheticTissue) -> None:
    # tumour regions: the largest connected ones span hundreds of µm
    lab, n = ndimage.label(sample.compartments == syn.COMPARTMENTS.index("tumour"))
    sizes = np.bincount(lab.ravel())[1:] * sample.mpp**2
    assert n >= 2
    assert np.sqrt(sizes.max()) > 200  # µm


def test_image_colours_look_like_h_and_e(sample: syn.SyntheticTissue) -> None:
    img = sample.image.astype(np.float32)
    c = sample.compartments
    glass = img[c == 0].mean(0)
    assert glass.min() > 225  # bright, near-white glass
    stroma = img[c == syn.COMPARTMENTS.index("stroma")].mean(0)
    assert stroma[0] > stroma[1] + 30  # eosin: pink (red ≫ green)
    immune = img[c == syn.COMPARTMENTS.index("immune")].mean(0)
    assert immune.mean() < stroma.mean() - 30  # dense nuclei: darker
    assert immune[2] > immune[1]  # haematoxylin: purple-blue (blue > green)


@pytest.mark.parametrize(("name", "lo", "hi"), [("immune", 5.0, 8.5), ("tumour", 7.0, 12.0)])
def test_nuclei_size_scale(sample: syn.SyntheticTissue, name: str, lo: float, hi: float) -> None:
    hema = _haematoxylin(sample.image[:1536, :1536])
    comp = sample.compartments[:1536, :1536] == syn.COMPARTMENTS.index(name)
    nuclei = ndimage.binary_opening((hema > 0.45) & comp)
    lab, n = ndimage.label(nuclei)
    assert n > 50
    # single nuclei are convex; touching ones (merged components) are not and are skipped
    props = [p for p in regionprops(lab) if p.area * sample.mpp**2 > 4 and p.solidity > 0.9]
    assert len(props) > 0.3 * n
    diam = np.array([p.equivalent_diameter_area for p in props]) * sample.mpp
    assert lo <= np.median(diam) <= hi, np.median(diam)


def test_spot_lattice_and_metadata(sample: syn.SyntheticTissue) -> None:
    a = sample.spots
    xy = spot_centres_px(a)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nn = d.min(1) * sample.mpp
    np.testing.assert_allclose(nn, 100.0, rtol=1e-9)
    assert spot_diameter_px(a) == pytest.approx(55.0 / sample.mpp)
    assert microns_per_pixel(a) == sample.mpp
    meta = a.uns["spatial"][syn.LIBRARY_ID]["metadata"]
    assert meta["mpp_source"] == "synthetic"
    assert meta["technology"] == "visium-synthetic"
    assert meta["spot_diameter_um"] == 55.0
    assert 150 <= a.n_obs <= 260
    # every kept spot is mostly tissue and fractions are a partition
    fr = a.obs[[f"frac_{c}" for c in syn.COMPARTMENTS]].to_numpy()
    np.testing.assert_allclose(fr.sum(1), 1.0)
    assert (1 - fr[:, 0] >= syn.MIN_TISSUE_FRACTION).all()
    # thumbnails match their scale factors
    lib = a.uns["spatial"][syn.LIBRARY_ID]
    hires = lib["images"]["hires"]
    sf = lib["scalefactors"]["tissue_hires_scalef"]
    assert hires.shape[1] == round(sample.image.shape[1] * sf)


def test_other_mpp_keeps_physical_units() -> None:
    t = syn.generate_synthetic_tissue(1, size_um=500.0, mpp=1.0)
    assert t.image.shape[:2] == (500, 500)
    xy = spot_centres_px(t.spots)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(d.min(1), 100.0)
    assert spot_diameter_px(t.spots) == pytest.approx(55.0)


def test_expected_density_integrates_to_the_spot_mean(sample: syn.SyntheticTissue) -> None:
    a = sample.spots
    r = spot_diameter_px(a) / 2
    for gene in ("KRT19", "COL1A1", "MALAT1"):
        dens = sample.expected_density(gene)
        assert dens.dtype == np.float32 and dens.shape == sample.compartments.shape
        g = sample.gene_index(gene)
        for i in range(0, a.n_obs, 17):
            sy, sx, mask = syn.spot_disk(tuple(a.obsm["spatial"][i]), r, dens.shape)
            integral = float(dens[sy, sx][mask].sum(dtype=np.float64))
            assert integral == pytest.approx(float(a.layers["expected"][i, g]), rel=1e-4)
    with pytest.raises(KeyError):
        sample.expected_density("NOT_A_GENE")


def test_counts_follow_the_truth(sample: syn.SyntheticTissue) -> None:
    a = sample.spots
    x = np.asarray(a.X, dtype=np.float64)
    mu = np.asarray(a.layers["expected"], dtype=np.float64)
    for gene in ("KRT19", "COL1A1", "CD74", "FABP4"):
        g = sample.gene_index(gene)
        assert np.corrcoef(x[:, g], mu[:, g])[0, 1] > 0.9, gene
    # unbiased overall, thousands of UMIs per spot, overdispersed relative to Poisson
    assert x.sum() / mu.sum() == pytest.approx(1.0, abs=0.05)
    assert np.median(x.sum(1)) > 1000
    g = sample.gene_index("MALAT1")
    resid = (x[:, g] - mu[:, g]) / np.sqrt(mu[:, g])
    assert resid.var() > 1.5
    # a marker is highest where its compartment dominates
    krt = x[:, sample.gene_index("KRT19")]
    tum = (a.obs["compartment"] == "tumour").to_numpy()
    strom = (a.obs["compartment"] == "stroma").to_numpy()
    assert np.median(krt[tum]) > 5 * np.median(krt[strom])


def test_write_and_read_back(small: syn.SyntheticTissue, tmp_path: Path) -> None:
    import anndata as ad
    import tifffile
    import zarr

    paths = syn.write_synthetic_sample(tmp_path / "out", tissue=small)
    assert set(paths) == {"image", "truth", "spots"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(syn.FILE_NAMES.values())

    with tifffile.TiffFile(paths["image"]) as tf:
        assert tf.is_ome
        levels = tf.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(800, 800), (400, 400)]
        page = tf.pages[0]
        assert page.is_tiled and page.tilewidth == 512
        assert page.compression == tifffile.COMPRESSION.JPEG
        xres = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert 1e4 * xres[1] / xres[0] == pytest.approx(small.mpp)
        pix = tf.ome_metadata.split("<Pixels", 1)[1]
        assert f'PhysicalSizeX="{small.mpp}"' in pix and 'PhysicalSizeXUnit="µm"' in pix
        level0 = levels[0].asarray()
    diff = np.abs(level0.astype(int) - small.image)
    assert diff.mean() < 4
    group = zarr.open(tifffile.imread(paths["image"], aszarr=True), mode="r")
    assert sorted(int(k) for k in group) == [0, 1]
    assert group["1"].shape == (400, 400, 3)

    truth = syn.read_synthetic_truth(paths["truth"])
    np.testing.assert_array_equal(truth["compartments"], small.compartments)
    np.testing.assert_array_equal(truth["profiles"], small.profiles)
    assert truth["genes"] == small.genes and truth["mpp"] == small.mpp

    spots = ad.read_h5ad(paths["spots"])
    np.testing.assert_array_equal(spots.X, small.spots.X)
    rel = source_image_path(spots)
    assert rel == syn.FILE_NAMES["image"]
    assert (paths["spots"].parent / rel).resolve() == paths["image"].resolve()
    assert "source_image_path" not in small.spots.uns["spatial"][syn.LIBRARY_ID]["metadata"]


def test_write_is_atomic(small: syn.SyntheticTissue, tmp_path: Path, monkeypatch) -> None:
    import anndata as ad

    folder = tmp_path / "s"
    first = syn.write_synthetic_sample(folder, tissue=small)
    before = {k: p.read_bytes() for k, p in first.items()}

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    other = syn.generate_synthetic_tissue(9, **SMALL)
    with pytest.raises(OSError, match="disk full"):
        syn.write_synthetic_sample(folder, tissue=other)
    assert sorted(p.name for p in folder.iterdir()) == sorted(syn.FILE_NAMES.values())
    assert {k: p.read_bytes() for k, p in first.items()} == before
    with pytest.raises(OSError):
        syn.write_synthetic_sample(tmp_path / "fresh", tissue=other)
    assert list((tmp_path / "fresh").iterdir()) == []


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        syn.generate_synthetic_tissue(0, mpp=-1.0)
    with pytest.raises(ValueError):
        syn.generate_synthetic_tissue(0, size_um=50.0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match=r"bad\.npz"):
        syn.read_synthetic_truth(bad)


def test_shipped_sample_matches_the_generator(sample: syn.SyntheticTissue) -> None:
    import anndata as ad
    import tifffile

    folder = syn.shipped_sample_folder()
    assert folder is not None, "package sample_data folder is missing"
    paths = syn.sample_paths()
    assert all(p.parent == folder for p in paths.values()), "shipped files are missing"
    for p in paths.values():
        assert p.stat().st_size < 2 * 1024 * 1024, p

    truth = syn.read_synthetic_truth(paths["truth"])
    np.testing.assert_array_equal(truth["compartments"], sample.compartments)
    assert int(truth["generator_version"]) == syn.GENERATOR_VERSION
    spots = ad.read_h5ad(paths["spots"])
    np.testing.assert_array_equal(spots.X, sample.spots.X)
    np.testing.assert_array_equal(spots.obsm["spatial"], sample.spots.obsm["spatial"])
    assert list(spots.obs_names) == list(sample.spots.obs_names)
    image = tifffile.imread(paths["image"])
    diff = np.abs(image.astype(int) - sample.image)
    assert diff.mean() < 4 and np.percentile(diff, 99) < 40
    assert (folder / "README.md").is_file()


def test_sample_paths_falls_back_to_a_cache(tmp_path: Path, monkeypatch) -> None:
    calls: list[Path] = []
    real_write = syn.write_synthetic_sample

    def small_write(folder, seed=0, **kw):
        calls.append(Path(folder))
        return real_write(folder, seed, size_um=300.0)

    monkeypatch.setattr(syn, "shipped_sample_folder", lambda: None)
    monkeypatch.setattr(syn, "write_synthetic_sample", small_write)
    monkeypatch.delenv("HISTOEXPRESS_HOME", raising=False)  # the XDG fallback itself
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = syn.sample_paths()
    assert all(p.is_file() for p in first.values())
    assert str(first["image"]).startswith(str(tmp_path / "cache" / "napari-histoexpress"))
    second = syn.sample_paths()
    assert second == first and len(calls) == 1
    assert os.path.basename(first["spots"]) == syn.FILE_NAMES["spots"]
