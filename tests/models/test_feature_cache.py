"""The frozen-encoder feature cache: one safetensors file per section, never stale."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pytest
import torch
from PIL import Image

from napari_histoexpress.io.slides import Slide, open_slide
from napari_histoexpress.models import feature_cache as fc
from napari_histoexpress.models.ridge import RidgeBaseline, RidgeConfig
from napari_histoexpress.stain import StainNormalizer

MPP = 0.5
#: ResNet18 stem + layer1 on 32 px patches of 64 µm (2 µm/px): tiny and quick
TINY = fc.FrozenEncoder(backbone="resnet18", patch_um=64.0, input_px=32, out_indices=(0, 1))


def _image(seed: int, nx: int = 4, ny: int = 3, pitch: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 250, size=((ny + 1) * pitch, (nx + 1) * pitch, 3), dtype=np.uint8)
    xs, ys = np.meshgrid(np.arange(nx) * pitch + pitch, np.arange(ny) * pitch + pitch)
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    return img, xy


def _adata(xy: np.ndarray) -> ad.AnnData:
    adata = ad.AnnData(X=np.ones((len(xy), 2), np.float32))
    adata.obs_names = [f"spot{i}" for i in range(len(xy))]
    adata.var_names = ["g0", "g1"]
    adata.obsm["spatial"] = xy.copy()
    return adata


def _section(seed: int = 0) -> tuple[ad.AnnData, Slide]:
    """An in-memory slide (its path is no file) and its spots."""
    img, xy = _image(seed)
    slide = Slide(
        path=Path(f"mem{seed}.png"), levels=[da.from_array(img)], mpp=MPP, mpp_source="user"
    )
    return _adata(xy), slide


@pytest.fixture
def file_section(tmp_path: Path) -> tuple[ad.AnnData, Slide]:
    img, xy = _image(7)
    path = tmp_path / "slide.png"
    Image.fromarray(img).save(path)
    return _adata(xy), open_slide(path, mpp=MPP)


class Counted:
    """A :class:`LoadedEncoder` of ``spec`` whose network counts its forward calls."""

    def __init__(self, spec: fc.FrozenEncoder = TINY) -> None:
        self.calls = 0
        module = spec.build()
        module.register_forward_pre_hook(self._hook)
        self.encoder = fc.LoadedEncoder(spec, module)

    def _hook(self, *_: object) -> None:
        self.calls += 1


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


# --------------------------------------------------------------------------------- caching


def test_second_call_reads_the_cache_and_equals_uncached(tmp_path: Path) -> None:
    sec = _section()
    counted = Counted()
    first = fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path, batch_size=5)
    assert counted.calls == 3  # 12 spots in batches of 5
    second = fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path, batch_size=5)
    assert counted.calls == 3  # read from the file: the encoder did not run
    assert first.dtype == np.float32 and first.shape == (12, 64 + 64)
    uncached = fc.spot_features(sec, TINY, batch_size=5)
    np.testing.assert_array_equal(first, uncached)
    np.testing.assert_array_equal(second, uncached)
    assert len(_files(tmp_path)) == 1
    # a FrozenEncoder (built afresh, same seed) finds the same file
    third = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path, batch_size=5)
    np.testing.assert_array_equal(third, uncached)
    assert len(_files(tmp_path)) == 1


def test_file_layout_and_metadata_round_trip(tmp_path: Path) -> None:
    from safetensors import safe_open

    adata, slide = _section()
    enc = TINY.load()
    feats = fc.cached_spot_features((adata, slide), enc, cache_dir=tmp_path)
    (path,) = _files(tmp_path)
    assert path.parent.parent == tmp_path
    assert path.parent.name.startswith("resnet18-64um-32px-")
    assert path.name.startswith("mem0-")
    key = json.loads((path.parent / "key.json").read_text())
    assert key == json.loads(json.dumps(enc.key()))
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
        np.testing.assert_array_equal(fh.get_tensor("features"), feats)
        np.testing.assert_array_equal(fh.get_tensor("centres"), adata.obsm["spatial"])
    assert json.loads(meta["key"]) == key
    assert key["format"] == fc.FORMAT and key["precision"] == "float32"
    assert key["weights_sha256"] == fc.weights_hash(TINY.build())
    encoder = key["encoder"]
    assert encoder["backbone"] == "resnet18" and encoder["pretrained"] is None
    assert (encoder["patch_um"], encoder["input_px"], encoder["input_mpp"]) == (64.0, 32, 2.0)
    assert encoder["out_indices"] == [0, 1] and encoder["pooling"] == "mean"
    assert encoder["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert key["stain"] is None
    assert json.loads(meta["ids"]) == list(adata.obs_names)
    section = json.loads(meta["section"])
    assert section["kind"] == "spots" and section["n"] == 12
    assert section["slide"]["mpp"] == MPP and "pixels_sha256" in section["slide"]


def test_default_location_is_under_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path / "home"))
    assert fc.default_cache_dir() == tmp_path / "home" / "features"
    fc.cached_spot_features(_section(), TINY)
    assert len(_files(tmp_path / "home" / "features")) == 1


# ------------------------------------------------------------------ what makes a new key


def _key_dir(spec: fc.FrozenEncoder, normalizer: StainNormalizer | None = None) -> str:
    return fc.feature_file(None, spec.load().key(normalizer), {"slide": {"path": "x"}}).parent.name


@pytest.mark.parametrize(
    "change",
    [
        {"patch_um": 80.0},  # another patch size in µm (and µm/px)
        {"input_px": 40},  # same µm, another µm/px
        {"seed": 1},  # other random weights
        {"out_indices": (0, 1, 2)},  # other levels
        {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},  # other normalisation
    ],
)
def test_encoder_changes_give_a_new_key(change: dict, tmp_path: Path) -> None:
    other = dataclasses.replace(TINY, **change)
    assert _key_dir(other) != _key_dir(TINY)
    sec = _section()
    fc.cached_spot_features(sec, TINY, cache_dir=tmp_path)
    counted = Counted(other)
    fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path)
    assert counted.calls > 0  # recomputed, not read from TINY's file
    assert len(_files(tmp_path)) == 2


def test_changed_weights_give_a_new_key() -> None:
    module = TINY.build()
    before = fc.LoadedEncoder(TINY, module).key()
    with torch.no_grad():
        next(iter(module.parameters())).view(-1)[0] += 1.0
    after = fc.LoadedEncoder(TINY, module).key()
    assert before["weights_sha256"] != after["weights_sha256"]
    assert before["encoder"] == after["encoder"]


def test_precision_is_in_the_key() -> None:
    assert TINY.load(precision="bf16").key()["precision"] == "bfloat16"


def test_stain_reference_gives_a_new_key_and_normalised_features(tmp_path: Path) -> None:
    ref_a = StainNormalizer("reinhard", target_means=(70.0, 10.0, -5.0), target_stds=(10, 5, 5))
    ref_b = StainNormalizer("reinhard", target_means=(60.0, 15.0, -5.0), target_stds=(10, 5, 5))
    keys = {_key_dir(TINY), _key_dir(TINY, ref_a), _key_dir(TINY, ref_b)}
    assert len(keys) == 3
    assert _key_dir(TINY, StainNormalizer()) == _key_dir(TINY)  # "none" = no normalisation
    sec = _section()
    plain = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path)
    normed = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path, normalizer=ref_a)
    assert not np.array_equal(plain, normed)
    np.testing.assert_array_equal(normed, fc.spot_features(sec, TINY, normalizer=ref_a))
    # the slide's own source estimate goes into the file's fingerprint, not the key
    img = np.asarray(sec[1].levels[0])
    sourced = ref_a.with_source(img)
    assert _key_dir(TINY, sourced) == _key_dir(TINY, ref_a)
    counted = Counted()
    fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path, normalizer=sourced)
    assert counted.calls > 0
    assert len(_files(tmp_path)) == 3


def test_another_spot_set_is_recomputed(tmp_path: Path) -> None:
    adata, slide = _section()
    counted = Counted()
    full = fc.cached_spot_features((adata, slide), counted.encoder, cache_dir=tmp_path)
    n = counted.calls

    fewer = adata[:-2].copy()
    part = fc.cached_spot_features((fewer, slide), counted.encoder, cache_dir=tmp_path)
    assert counted.calls > n and part.shape == (10, full.shape[1])
    np.testing.assert_array_equal(part, full[:-2])

    n = counted.calls
    moved = adata.copy()
    moved.obsm["spatial"][0] += 3.0
    out = fc.cached_spot_features((moved, slide), counted.encoder, cache_dir=tmp_path)
    assert counted.calls > n and not np.array_equal(out[0], full[0])

    n = counted.calls
    renamed = adata.copy()
    renamed.obs_names = [f"other{i}" for i in range(renamed.n_obs)]
    fc.cached_spot_features((renamed, slide), counted.encoder, cache_dir=tmp_path)
    assert counted.calls > n
    assert len(_files(tmp_path)) == 4


def test_changed_image_is_recomputed(file_section, tmp_path: Path) -> None:
    adata, slide = file_section
    cache = tmp_path / "cache"
    counted = Counted()
    fc.cached_spot_features((adata, slide), counted.encoder, cache_dir=cache)
    n = counted.calls
    fc.cached_spot_features((adata, slide), counted.encoder, cache_dir=cache)
    assert counted.calls == n
    fp = fc.slide_fingerprint(slide)
    assert fp["path"] == str(slide.path.resolve()) and fp["size"] > 0
    st = slide.path.stat()
    os.utime(slide.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten file
    fc.cached_spot_features((adata, slide), counted.encoder, cache_dir=cache)
    assert counted.calls > n
    # a slide opened with another µm/px reads other pixels
    n = counted.calls
    other = open_slide(slide.path, mpp=0.25)
    fc.cached_spot_features((adata, other), counted.encoder, cache_dir=cache)
    assert counted.calls > n


def test_in_memory_slide_is_fingerprinted_by_its_pixels() -> None:
    a, b = _section(0)[1], _section(1)[1]
    b.path = a.path
    assert fc.slide_fingerprint(a) != fc.slide_fingerprint(b)
    assert fc.slide_fingerprint(a) == fc.slide_fingerprint(_section(0)[1])


# ------------------------------------------------------------------------ damaged files


def test_corrupt_file_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    sec = _section()
    good = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path)
    (path,) = _files(tmp_path)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    counted = Counted()
    with pytest.warns(fc.FeatureCacheWarning, match="unusable"):
        again = fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path)
    assert counted.calls > 0
    np.testing.assert_array_equal(again, good)
    # rewritten: the next call reads it, silently
    n = counted.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            fc.cached_spot_features(sec, counted.encoder, cache_dir=tmp_path), good
        )
    assert counted.calls == n


def test_tampered_features_are_never_returned(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    sec = _section()
    good = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path)
    (path,) = _files(tmp_path)
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
        centres = fh.get_tensor("centres")
    save_file({"features": good + 1.0, "centres": centres}, str(path), metadata=meta)
    with pytest.warns(fc.FeatureCacheWarning, match="checksum"):
        again = fc.cached_spot_features(sec, TINY, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, good)

    # a file whose recorded spot ids differ (same name: e.g. a hash collision)
    meta = dict(meta, ids=json.dumps(["x"] * 12))
    save_file({"features": good, "centres": centres}, str(path), metadata=meta)
    with pytest.warns(fc.FeatureCacheWarning, match="spot ids"):
        np.testing.assert_array_equal(fc.cached_spot_features(sec, TINY, cache_dir=tmp_path), good)


# ------------------------------------------------------------------------------ lattice


def test_lattice_features_match_spot_features_and_are_cached(tmp_path: Path) -> None:
    adata, slide = _section()
    spots = fc.spot_features((adata, slide), TINY, batch_size=4)
    centres_um = adata.obsm["spatial"] * MPP
    counted = Counted()
    lat = fc.cached_lattice_features(
        slide, centres_um, counted.encoder, cache_dir=tmp_path, batch_size=4
    )
    np.testing.assert_array_equal(lat, spots)
    n = counted.calls
    again = fc.cached_lattice_features(
        slide, centres_um, counted.encoder, cache_dir=tmp_path, batch_size=4
    )
    assert counted.calls == n
    np.testing.assert_array_equal(again, spots)
    np.testing.assert_array_equal(fc.lattice_features(slide, centres_um, TINY, batch_size=4), spots)
    fc.cached_lattice_features(slide, centres_um[:5], counted.encoder, cache_dir=tmp_path)
    assert counted.calls > n
    with pytest.raises(ValueError, match="centres_um"):
        fc.lattice_features(slide, centres_um[:, 0], TINY)


def test_empty_section_raises(tmp_path: Path) -> None:
    adata, slide = _section()
    with pytest.raises(ValueError, match="no spots"):
        fc.cached_spot_features((adata[:0].copy(), slide), TINY, cache_dir=tmp_path)


def test_frozen_encoder_validates() -> None:
    with pytest.raises(ValueError, match="pooling"):
        fc.FrozenEncoder(backbone="resnet18", pooling="max")
    with pytest.raises(ValueError, match="mean"):
        fc.FrozenEncoder(backbone="resnet18", mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        fc.FrozenEncoder(backbone="resnet18", patch_um=0)
    assert fc.FrozenEncoder().pretrained == "imagenet"  # "auto" resolved, as for ridge


# ------------------------------------------------------------------------ ridge baseline


def _ridge() -> RidgeBaseline:
    return RidgeBaseline(
        RidgeConfig(
            backbone="resnet18",
            out_indices=(1, 2),
            patch_um=64.0,
            input_px=32,
            n_components=4,
            alphas=(0.1, 10.0),
            batch_size=5,
        )
    )


def test_ridge_uses_the_cache_with_the_same_results(tmp_path: Path) -> None:
    model = _ridge()
    assert fc.weights_hash(model.frozen_encoder().build()) == fc.weights_hash(model.backbone)
    calls = []
    model.backbone.register_forward_pre_hook(lambda *_: calls.append(1))
    sections = [_section(0), _section(1)]
    plain = model.extract_features(sections[0])
    n = len(calls)
    cached = model.extract_features(sections[0], cache=tmp_path)
    np.testing.assert_array_equal(cached, plain)
    assert len(calls) == 2 * n
    np.testing.assert_array_equal(model.extract_features(sections[0], cache=tmp_path), plain)
    assert len(calls) == 2 * n  # read, not encoded

    genes = ["g0", "g1"]
    for adata, _ in sections:
        adata.X = np.random.default_rng(0).poisson(5, size=adata.shape).astype(np.float32)
    ref = _ridge().fit(sections, genes)
    fitted = _ridge().fit(sections, genes, cache=tmp_path)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(fitted.state_dict()[k], v, rtol=0, atol=0)
    assert fitted.alpha == ref.alpha
    np.testing.assert_array_equal(
        fitted.predict(sections[1], cache=tmp_path), ref.predict(sections[1])
    )
    assert len(_files(tmp_path)) == 2


def test_ridge_cache_true_uses_the_default_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path))
    model = _ridge()
    feats = model.extract_features(_section(), cache=True)
    assert len(_files(tmp_path / "features")) == 1
    np.testing.assert_array_equal(feats, model.extract_features(_section()))


def test_ridge_stain_normalised_features_match_the_training_task(tmp_path: Path) -> None:
    """The training tasks' spot features (``training.frozen_features``, cached or not) of
    stain-normalised patches are the patches normalised one by one and encoded."""
    from napari_histoexpress.training.frozen_features import section_features

    norm = StainNormalizer("reinhard", target_means=(70.0, 10.0, -5.0), target_stds=(10, 5, 5))
    model = _ridge()
    sec = _section()
    by_hand = model.encode_patches(np.stack([norm.apply_numpy(p) for p in model.spot_patches(sec)]))
    enc = model.loaded_encoder()
    for cache in ("none", str(tmp_path / "cache"), str(tmp_path / "cache")):  # miss, then hit
        (feats,) = section_features(
            [sec], enc, feature_cache=cache, normalizers=[norm], progress=False
        )
        np.testing.assert_allclose(feats, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.extract_features(sec, normalizer=norm), feats)


def test_unwritable_cache_warns_once_and_still_returns(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    sec = _section()
    with pytest.warns(fc.FeatureCacheWarning, match="cannot write"):
        feats = fc.cached_spot_features(sec, TINY, cache_dir=blocker)
    np.testing.assert_array_equal(feats, fc.spot_features(sec, TINY))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.cached_spot_features(sec, TINY, cache_dir=blocker)  # no second warning


def test_sample_section_object_is_cached(tmp_path: Path) -> None:
    """The synthetic sample as a training ``Section`` (file-backed slide, 207 spots)."""
    from napari_histoexpress.io.synthetic import sample_paths
    from napari_histoexpress.training.sections import load_section

    section = load_section(sample_paths()["spots"])
    counted = Counted()
    feats = fc.cached_spot_features(section, counted.encoder, cache_dir=tmp_path)
    n = counted.calls
    assert feats.shape == (section.adata.n_obs, 128) and n > 0
    again = fc.cached_spot_features(section.pair(), counted.encoder, cache_dir=tmp_path)
    assert counted.calls == n
    np.testing.assert_array_equal(again, feats)
    np.testing.assert_array_equal(feats, fc.spot_features(section, TINY))
    (path,) = _files(tmp_path)
    assert path.name.startswith(Path(section.slide.path).stem[:20])
