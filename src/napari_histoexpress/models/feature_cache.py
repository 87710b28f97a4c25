"""Frozen-encoder features of spot-centred (or lattice) patches, cached on disk per section.

A spot model that trains on frozen image features (the ridge baseline; HAGE's frozen patch
feature, design *spot-models* §1) needs each spot's patch encoded **once**, not once per
epoch or once per cross-validation fold. This module encodes the patches and keeps the
result in one safetensors file per section:

``<cache>/<key>/<section fingerprint>.safetensors``

* ``<cache>``: ``cache_dir`` when given, else :func:`default_cache_dir` =
  ``$HISTOEXPRESS_HOME/features`` (``~/.cache/napari-histoexpress/features`` by default,
  :func:`napari_histoexpress.user_cache.cache_home`). Deleting the folder (or one key
  folder) clears it; nothing else refers to it.
* ``<key>``: ``<backbone>-<patch_um>um-<input_px>px-<16 hex>``, the hex a SHA-256 of the
  **encoder key** (:meth:`LoadedEncoder.key`, also written as ``key.json`` in the folder and
  into every file's metadata): the cache format, the backbone name, its pretrained source,
  ``zero_init_last``, architecture options and seed, a SHA-256 of the encoder's actual
  weights and buffers (so a new checkpoint, another random seed or a changed file gives a
  new key), the levels (``out_indices``), the pooling, the patch side in µm, the input side
  in pixels and the working µm/px (``patch_um / input_px``), the input normalisation
  mean/std (resolved: the backbone's statistics when not given), the forward precision
  (the autocast dtype: ``float32``, ``bfloat16``, ``float16``) and the stain normalisation
  reference (:meth:`~napari_histoexpress.stain.StainNormalizer.to_dict` without a slide's
  source estimate; ``None`` = no normalisation).
* ``<section fingerprint>``: ``<image stem>-<20 hex>``, a SHA-256 of the image file (its
  resolved path, size and modification time; a slide built in memory from arrays, whose
  path is no file, hashes its level-0 pixels instead), the slide's level-0 shape and µm/px,
  what is encoded (``spots`` or ``lattice``), the patch centres (float64 bytes), the spot
  ids (spots) and the slide's own stain source estimate, if any.

A file holds ``features`` ``(N, D)`` float32 and ``centres`` ``(N, 2)`` float64 (level-0 px
for spots, µm for lattice nodes), and in its metadata the key and fingerprint JSON, the spot
ids (JSON list), and a SHA-256 of the feature bytes. On load every one of them is checked
against the request: a file that cannot be read, or whose key, fingerprint, ids, centres,
shape or checksum differ, is **never returned**: a :class:`FeatureCacheWarning` names it and
the features are recomputed and written again (atomically: a temporary file renamed into
place, so a crash or a concurrent writer never leaves half a file). A cache folder that
cannot be written warns once and the features are still returned.

Not in the key: the device (CPU and CUDA float32 agree to rounding, not bit for bit) and the
batch size (convolution kernels may round differently per batch size). The features equal
an uncached computation with the same device, precision and batch size exactly. A change
of the patch extraction itself (``read_region_at_mpp``) must bump :data:`FORMAT`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..user_cache import cache_home

if TYPE_CHECKING:
    from ..stain import StainNormalizer

__all__ = [
    "FORMAT",
    "POOLINGS",
    "FeatureCacheWarning",
    "FrozenEncoder",
    "LoadedEncoder",
    "Pooling",
    "cached_lattice_features",
    "cached_spot_features",
    "check_pooling",
    "default_cache_dir",
    "encode_tensor",
    "encoder_channels",
    "encoder_settings",
    "feature_file",
    "lattice_features",
    "nuclei_features",
    "parse_pooling",
    "slide_fingerprint",
    "spot_features",
    "weights_hash",
]

#: version of the cache layout and of what goes into a file; part of every key
FORMAT = 1
#: how a level's feature map becomes a vector: ``"mean"`` = global average pooling per
#: level, the levels' vectors concatenated (what the ridge baseline has always done);
#: ``"mean+tokensT"`` (``T`` a whole number, e.g. ``"mean+tokens3"``) = the same vector
#: followed by the **last** level's map average-pooled to a ``T × T`` grid, flattened token
#: by token (``T²`` tokens of the last level's channels, row-major): DKAN's patch tokens;
#: ``"+nucleiM"`` (after either, e.g. ``"mean+nuclei32"``) appends the patch's nuclei mask
#: (:mod:`napari_histoexpress.nuclei`, default segmenter; ``"+nucleiM:NAME"`` another one by
#: name) as the nuclear fraction of an ``M × M`` grid, row-major: ALIGN-ST's nuclei stream
POOLINGS = ("mean", "mean+tokensT", "mean+nucleiM", "mean+tokensT+nucleiM[:segmenter]")
_POOLING = re.compile(r"^mean(?:\+tokens([1-9][0-9]?))?(?:\+nuclei([1-9][0-9]{0,2})(?::(.+))?)?$")


@dataclass(frozen=True)
class Pooling:
    """A parsed pooling string (:data:`POOLINGS`): ``tokens`` = ``T`` (0: none), ``nuclei`` =
    ``M`` (0: none) and the segmenter's name."""

    tokens: int = 0
    nuclei: int = 0
    segmenter: str | None = None


def parse_pooling(pooling: str) -> Pooling:
    """:class:`Pooling` of a pooling string; ``ValueError`` naming the choices otherwise."""
    match = _POOLING.match(str(pooling))
    if match is None:
        raise ValueError(
            f"pooling must be one of {POOLINGS} (T = 1 … 99, M = 1 … 999), got {pooling!r}"
        )
    tokens, grid, segmenter = match.groups()
    nuclei = int(grid) if grid else 0
    if nuclei:
        from ..nuclei import DEFAULT_SEGMENTER

        segmenter = segmenter or DEFAULT_SEGMENTER
    return Pooling(int(tokens) if tokens else 0, nuclei, segmenter)


def check_pooling(pooling: str) -> int:
    """``T`` of ``"mean+tokensT…"`` (``0`` without tokens); ``ValueError`` for a string that
    is not a pooling (:func:`parse_pooling`)."""
    return parse_pooling(pooling).tokens


def nuclei_features(images_uint8: np.ndarray, mpp: float, grid: int, segmenter: str) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 patches at ``mpp`` µm/px → ``(n, grid²)`` float32 nuclear
    fractions (:func:`napari_histoexpress.nuclei.nuclei_grid` of the segmenter's labels)."""
    from ..nuclei import get_segmenter, nuclei_grid

    segment = get_segmenter(segmenter)
    out = np.empty((len(images_uint8), grid * grid), np.float32)
    for i, patch in enumerate(images_uint8):
        out[i] = nuclei_grid(segment(np.ascontiguousarray(patch), float(mpp)), grid).ravel()
    return out


_warned: set[str] = set()


class FeatureCacheWarning(UserWarning):
    """A cached feature file was unusable (recomputed), or the cache could not be written."""


def default_cache_dir() -> Path:
    """``$HISTOEXPRESS_HOME/features`` (``~/.cache/napari-histoexpress/features`` by default);
    nothing is created."""
    return cache_home("features")


# ---------------------------------------------------------------------------- the encoder


@functools.lru_cache(maxsize=16)
def _channels(
    backbone: str, out_indices: tuple[int, ...] | None, kwargs_json: str
) -> tuple[int, ...]:
    from .backbones import create_backbone

    with torch.random.fork_rng(devices=[]):  # a probe: the caller's random state untouched
        net = create_backbone(
            backbone, pretrained=None, out_indices=out_indices, model_kwargs=json.loads(kwargs_json)
        )
    info: Any = net.feature_info
    return tuple(int(c) for c in info.channels())


def encoder_channels(
    backbone: str,
    out_indices: Sequence[int] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    """Channels of each level a frozen encoder pools (the network is built once per process,
    without weights, to read them)."""
    idx = None if out_indices is None else tuple(int(i) for i in out_indices)
    return _channels(backbone, idx, json.dumps(dict(backbone_kwargs or {}), sort_keys=True))


def encoder_settings(config: Any) -> dict[str, Any]:
    """The frozen-encoder fields of ``config`` (a :class:`FrozenEncoder`, or a model config
    with the same ``backbone``/``pretrained``/``out_indices``/``mean``/``std`` fields: the
    ridge baseline's, HAGE's) normalised: ``pretrained`` resolved
    (:func:`~.pretrained.resolve_pretrained`), ``out_indices`` a tuple of ints, ``mean`` and
    ``std`` tuples of three floats (``ValueError`` otherwise), ``None`` kept."""
    from .pretrained import resolve_pretrained

    out: dict[str, Any] = {"pretrained": resolve_pretrained(config.backbone, config.pretrained)}
    idx = config.out_indices
    out["out_indices"] = None if idx is None else tuple(int(i) for i in idx)
    for name in ("mean", "std"):
        value = getattr(config, name)
        if value is not None and len(value) != 3:
            raise ValueError(f"{name} must have 3 values (RGB), got {value!r}")
        out[name] = None if value is None else tuple(float(v) for v in value)
    return out


@dataclass(frozen=True)
class FrozenEncoder:
    """What a frozen patch encoder is (everything that changes its features but weights).

    ``backbone``/``pretrained``/``zero_init_last``/``backbone_kwargs``/``seed``: as for
    :func:`~napari_histoexpress.models.backbones.create_backbone` (the seed sets a random
    init; ``pretrained="auto"`` is resolved as the ridge baseline does, see
    :func:`~napari_histoexpress.models.pretrained.resolve_pretrained`). ``out_indices``: the
    levels pooled (``None``: all of timm's). ``patch_um``: the patch side in µm, resampled to
    ``input_px`` pixels. ``mean``/``std``: RGB normalisation (``None``: the backbone's).
    ``pooling``: one of :data:`POOLINGS`.
    """

    backbone: str = "tf_efficientnet_lite0"
    pretrained: str | None = "auto"
    patch_um: float = 448 * 0.74
    input_px: int = 224
    out_indices: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pooling: str = "mean"
    zero_init_last: bool = False
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, value in encoder_settings(self).items():
            set_(self, name, value)
        set_(self, "patch_um", float(self.patch_um))
        set_(self, "input_px", int(self.input_px))
        if not (math.isfinite(self.patch_um) and self.patch_um > 0) or self.input_px <= 0:
            raise ValueError(
                f"patch_um and input_px must be positive, got {self.patch_um}, {self.input_px}"
            )
        check_pooling(self.pooling)
        set_(self, "backbone_kwargs", dict(self.backbone_kwargs))

    @classmethod
    def from_config(cls, config: Any, *, seed: int, pooling: str = "mean") -> FrozenEncoder:
        """The encoder a model config describes (any object with ``backbone``,
        ``pretrained``, ``patch_um``, ``input_px``, ``out_indices``, ``mean``, ``std``,
        ``zero_init_last`` and ``backbone_kwargs`` attributes: the ridge baseline's, HAGE's
        and DKAN's configs), pooled as ``pooling`` (default mean), with the random-init
        ``seed``."""
        return cls(
            backbone=config.backbone,
            pretrained=config.pretrained,
            patch_um=config.patch_um,
            input_px=config.input_px,
            out_indices=config.out_indices,
            mean=config.mean,
            std=config.std,
            pooling=pooling,
            zero_init_last=config.zero_init_last,
            backbone_kwargs=dict(config.backbone_kwargs),
            seed=seed,
        )

    @property
    def input_mpp(self) -> float:
        """The working µm per pixel: ``patch_um / input_px``."""
        return self.patch_um / self.input_px

    def input_stats(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """RGB ``(mean, std)`` of the input: the given ones, else the backbone's."""
        from .backbones import backbone_transform_stats

        mean, std = backbone_transform_stats(self.backbone)
        mean, std = self.mean or mean, self.std or std
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        return (m[0], m[1], m[2]), (s[0], s[1], s[2])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (tuples as lists, statistics resolved)."""
        d = asdict(self)
        mean, std = self.input_stats()
        d.update(
            out_indices=None if self.out_indices is None else list(self.out_indices),
            mean=list(mean),
            std=list(std),
            backbone_kwargs=json.loads(json.dumps(dict(self.backbone_kwargs), sort_keys=True)),
            input_mpp=self.input_mpp,
        )
        return d

    def build(self) -> torch.nn.Module:
        """The frozen network (eval mode, no gradients, on the CPU), deterministic given
        ``seed`` (built exactly as the ridge baseline builds its encoder)."""
        from .backbones import create_backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = create_backbone(
                self.backbone,
                pretrained=self.pretrained,
                out_indices=self.out_indices,
                zero_init_last=self.zero_init_last,
                model_kwargs=self.backbone_kwargs,
            )
        return net.eval().requires_grad_(False)

    def load(
        self, *, module: torch.nn.Module | None = None, device: Any = "cpu", precision: str = "fp32"
    ) -> LoadedEncoder:
        """:class:`LoadedEncoder` of this description (``module``: an already built network
        of it, e.g. a fitted model's; else :meth:`build`)."""
        return LoadedEncoder(self, module, device=device, precision=precision)


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a network's parameters and buffers: names, dtypes, shapes and bytes,
    in name order (``num_batches_tracked``, bookkeeping that never changes a feature, left
    out)."""
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        if name.endswith("num_batches_tracked"):
            continue
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def encode_tensor(
    module: torch.nn.Module,
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: Any,
    precision: str = "fp32",
    pooling: str = "mean",
    mpp: float | None = None,
) -> np.ndarray:
    """``(n, 3, h, w)`` float RGB in [0, 1] → ``(n, d)`` float32: ``module`` (a timm
    ``features_only`` network) on ``(x - mean) / std`` in ``precision``, every level pooled
    (:data:`POOLINGS`) in float32 and concatenated; a nuclei pooling also segments the
    patches (at ``mpp`` µm/px, required then) on the CPU."""
    from ..devices import autocast

    parsed = parse_pooling(pooling)
    tokens = parsed.tokens
    m = torch.tensor(tuple(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    x = x.to(device)
    with autocast(device, precision):
        maps = module((x - m) / s)
    parts = [f.float().mean(dim=(2, 3)) for f in maps]
    if tokens:
        grid = torch.nn.functional.adaptive_avg_pool2d(maps[-1].float(), tokens)
        parts.append(grid.flatten(2).transpose(1, 2).flatten(1))  # (n, T²·C), token-major
    feats = torch.cat(parts, dim=1).cpu().numpy().astype(np.float32)
    if not parsed.nuclei:
        return feats
    if mpp is None:
        raise ValueError(f"pooling {pooling!r} segments nuclei: encode_tensor needs the mpp")
    rgb = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    rgb_np = rgb.permute(0, 2, 3, 1).cpu().numpy()
    assert parsed.segmenter is not None
    nuc = nuclei_features(rgb_np, mpp, parsed.nuclei, parsed.segmenter)
    return np.concatenate([feats, nuc], axis=1)


class LoadedEncoder:
    """A :class:`FrozenEncoder` with its network on a device: encodes uint8 patches and
    gives the cache key (the weights are hashed once, here)."""

    def __init__(
        self,
        spec: FrozenEncoder,
        module: torch.nn.Module | None = None,
        *,
        device: Any = "cpu",
        precision: str = "fp32",
    ) -> None:
        from ..devices import autocast_dtype, resolve_device

        self.spec = spec
        self.device = resolve_device(device)
        dtype = autocast_dtype(self.device, precision)  # validates precision
        self.precision = precision
        self.compute_dtype = "float32" if dtype is None else str(dtype).removeprefix("torch.")
        self.module = (module if module is not None else spec.build()).to(self.device)
        self.weights_hash = weights_hash(self.module)
        self.mean, self.std = spec.input_stats()
        #: how many times the network ran (one per batch)
        self.forward_calls = 0

    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        """``(n, h, w, 3)`` uint8 → ``(n, d)`` float32 features."""
        self.forward_calls += 1
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device)
        return encode_tensor(
            self.module,
            x.permute(0, 3, 1, 2).float() / 255.0,
            self.mean,
            self.std,
            device=self.device,
            precision=self.precision,
            pooling=self.spec.pooling,
            mpp=self.spec.input_mpp,
        )

    def key(self, normalizer: StainNormalizer | None = None) -> dict[str, Any]:
        """The cache key (see the module docstring) as plain JSON."""
        return {
            "format": FORMAT,
            "encoder": self.spec.to_dict(),
            "weights_sha256": self.weights_hash,
            "precision": self.compute_dtype,
            "stain": _stain_reference(normalizer),
        }


def _stain_reference(normalizer: StainNormalizer | None) -> dict[str, Any] | None:
    if normalizer is None or normalizer.method == "none":
        return None
    return normalizer.without_source().to_dict()


def _stain_source(normalizer: StainNormalizer | None) -> Any:
    if normalizer is None or normalizer.method == "none":
        return None
    return normalizer.to_dict().get("source")


# ---------------------------------------------------------------------------- sections


def _as_pair(section: Any) -> tuple[Any, Any]:
    """``(adata, slide)`` from the pair, an object with ``pair()`` (a training ``Section``),
    or an AnnData whose source image is opened."""
    if isinstance(section, tuple | list) and len(section) == 2:
        return section[0], section[1]
    pair = getattr(section, "pair", None)
    if callable(pair):
        adata, slide = pair()
        return adata, slide
    from ..io.slides import open_slide
    from ..io.spatial import microns_per_pixel, source_image_path

    path = source_image_path(section)
    if path is None:
        raise ValueError("section has no source image path; pass (adata, slide) instead")
    return section, open_slide(path, mpp=microns_per_pixel(section))


def slide_fingerprint(slide: Any) -> dict[str, Any]:
    """What identifies a slide's pixels: its file (resolved path, size, modification time in
    ns) or, for a slide built in memory (its path is no file), a SHA-256 of its level-0
    pixels; plus its level-0 shape and µm/px."""
    path = Path(slide.path)
    d: dict[str, Any] = {"shape": list(slide.shape), "mpp": slide.mpp}
    if path.is_file():
        st = path.stat()
        d.update(path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        pixels = np.ascontiguousarray(np.asarray(slide.levels[0]))
        d.update(path=str(path), pixels_sha256=hashlib.sha256(pixels.tobytes()).hexdigest())
    return d


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _slug(text: str, limit: int = 40) -> str:
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x")[:limit]


def _key_dirname(key: Mapping[str, Any]) -> str:
    enc = key["encoder"]
    head = _slug(f"{enc['backbone']}-{enc['patch_um']:g}um-{enc['input_px']}px", 60)
    return f"{head}-{_sha(_json(key).encode())[:16]}"


def feature_file(
    cache_dir: str | os.PathLike[str] | None,
    key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
) -> Path:
    """Where the features of ``fingerprint`` (a section's) under ``key`` are cached."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    stem = _slug(Path(str(fingerprint["slide"]["path"])).stem)
    name = f"{stem}-{_sha(_json(fingerprint).encode())[:20]}.safetensors"
    return root / _key_dirname(key) / name


# ---------------------------------------------------------------------------- encoding


def _patches(
    slide: Any, centres_px: np.ndarray, spec: FrozenEncoder, normalizer: StainNormalizer | None
) -> Iterator[np.ndarray]:
    from ..io.slides import read_region_at_mpp

    size = (spec.input_px, spec.input_px)
    for x, y in centres_px:
        patch = np.asarray(read_region_at_mpp(slide, (float(x), float(y)), size, spec.input_mpp))
        yield patch if normalizer is None else normalizer.apply_numpy(patch)


def _encode_all(
    patches: Iterable[np.ndarray],
    encoder: LoadedEncoder,
    n: int,
    batch_size: int,
    progress: bool,
    label: str,
) -> np.ndarray:
    from tqdm.auto import tqdm

    if n == 0:
        raise ValueError(f"{label} has no spots or lattice nodes to encode")
    bs = max(1, int(batch_size))
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    with tqdm(total=n, disable=not progress, desc=label, unit="patch") as bar:
        for patch in patches:
            batch.append(patch)
            if len(batch) == bs:
                out.append(encoder.encode_patches(np.stack(batch)))
                bar.update(len(batch))
                batch = []
        if batch:
            out.append(encoder.encode_patches(np.stack(batch)))
            bar.update(len(batch))
    return np.concatenate(out)


def _loaded(encoder: FrozenEncoder | LoadedEncoder, device: Any, precision: str) -> LoadedEncoder:
    if isinstance(encoder, LoadedEncoder):
        return encoder
    return encoder.load(device=device, precision=precision)


def spot_features(
    section: Any,
    encoder: FrozenEncoder | LoadedEncoder,
    *,
    normalizer: StainNormalizer | None = None,
    batch_size: int = 32,
    device: Any = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """``(n_spots, d)`` float32 features of a section's spot-centred patches, in ``adata``
    order, **not cached** (``normalizer``: stain normalisation of each uint8 patch first).
    ``device``/``precision`` apply when ``encoder`` is a :class:`FrozenEncoder`."""
    from ..io.spatial import spot_centres_px

    adata, slide = _as_pair(section)
    enc = _loaded(encoder, device, precision)
    xy = spot_centres_px(adata)
    patches = _patches(slide, xy, enc.spec, normalizer)
    return _encode_all(patches, enc, len(xy), batch_size, progress, _label(slide))


def lattice_features(
    slide: Any,
    centres_um: np.ndarray,
    encoder: FrozenEncoder | LoadedEncoder,
    *,
    normalizer: StainNormalizer | None = None,
    batch_size: int = 32,
    device: Any = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """``(n, d)`` float32 features of patches centred on ``centres_um`` ``(n, 2)`` (x, y in
    µm of level 0), not cached."""
    enc = _loaded(encoder, device, precision)
    um = _centres_um(centres_um)
    patches = _patches(slide, um / _slide_mpp(slide), enc.spec, normalizer)
    return _encode_all(patches, enc, len(um), batch_size, progress, _label(slide))


def _label(slide: Any) -> str:
    return Path(str(slide.path)).name


def _slide_mpp(slide: Any) -> float:
    if slide.mpp is None:
        from ..errors import MissingResolutionError

        raise MissingResolutionError(slide.path, "µm per pixel unknown; give it")
    return float(slide.mpp)


def _centres_um(centres_um: np.ndarray) -> np.ndarray:
    um = np.asarray(centres_um, dtype=np.float64)
    if um.ndim != 2 or um.shape[1] != 2:
        raise ValueError(f"centres_um must be (n, 2), got shape {um.shape}")
    return np.ascontiguousarray(um)


# ---------------------------------------------------------------------------- caching


def cached_spot_features(
    section: Any,
    encoder: FrozenEncoder | LoadedEncoder,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    normalizer: StainNormalizer | None = None,
    batch_size: int = 32,
    device: Any = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """:func:`spot_features`, read from the cache when a valid file is there, else computed
    and written (see the module docstring). Rows follow ``adata.obs_names``, which the file
    records and the load checks. ``section``: ``(adata, slide)``, a training ``Section``, or
    an AnnData with a recorded source image."""
    from ..io.spatial import spot_centres_px

    adata, slide = _as_pair(section)
    enc = _loaded(encoder, device, precision)
    xy = np.ascontiguousarray(spot_centres_px(adata), dtype=np.float64)
    ids = [str(i) for i in adata.obs_names]
    fingerprint = {
        "kind": "spots",
        "slide": slide_fingerprint(slide),
        "n": len(xy),
        "centres_sha256": _sha(xy.tobytes()),
        "ids_sha256": _sha(_json(ids).encode()),
        "stain_source": _stain_source(normalizer),
    }

    def compute() -> np.ndarray:
        patches = _patches(slide, xy, enc.spec, normalizer)
        return _encode_all(patches, enc, len(xy), batch_size, progress, _label(slide))

    return _cached(cache_dir, enc.key(normalizer), fingerprint, xy, ids, compute)


def cached_lattice_features(
    slide: Any,
    centres_um: np.ndarray,
    encoder: FrozenEncoder | LoadedEncoder,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    normalizer: StainNormalizer | None = None,
    batch_size: int = 32,
    device: Any = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """:func:`lattice_features` (patches centred on ``centres_um``, x, y in µm), cached like
    :func:`cached_spot_features`; the file records the centres (µm) and the load checks
    them."""
    enc = _loaded(encoder, device, precision)
    um = _centres_um(centres_um)
    fingerprint = {
        "kind": "lattice",
        "slide": slide_fingerprint(slide),
        "n": len(um),
        "centres_sha256": _sha(um.tobytes()),
        "stain_source": _stain_source(normalizer),
    }

    def compute() -> np.ndarray:
        patches = _patches(slide, um / _slide_mpp(slide), enc.spec, normalizer)
        return _encode_all(patches, enc, len(um), batch_size, progress, _label(slide))

    return _cached(cache_dir, enc.key(normalizer), fingerprint, um, None, compute)


def _cached(
    cache_dir: str | os.PathLike[str] | None,
    key: dict[str, Any],
    fingerprint: dict[str, Any],
    centres: np.ndarray,
    ids: list[str] | None,
    compute: Callable[[], np.ndarray],
) -> np.ndarray:
    path = feature_file(cache_dir, key, fingerprint)
    if path.exists():
        try:
            return _read(path, key, fingerprint, centres, ids)
        except Exception as exc:
            warnings.warn(
                f"{path}: cached features unusable ({exc}); computing them again",
                FeatureCacheWarning,
                stacklevel=3,
            )
    features = compute()
    _write(path, key, fingerprint, centres, ids, features)
    return features


def _read(
    path: Path,
    key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    centres: np.ndarray,
    ids: list[str] | None,
) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
        names = set(fh.keys())
        if names != {"features", "centres"}:
            raise ValueError(f"holds tensors {sorted(names)}, not features and centres")
        features = fh.get_tensor("features")
        stored_centres = fh.get_tensor("centres")
    if meta.get("format") != str(FORMAT):
        raise ValueError(f"cache format {meta.get('format')!r}, not {FORMAT}")
    if json.loads(meta.get("key", "null")) != json.loads(_json(key)):
        raise ValueError("recorded encoder key differs")
    if json.loads(meta.get("section", "null")) != json.loads(_json(fingerprint)):
        raise ValueError("recorded section fingerprint differs")
    if ids is not None and json.loads(meta.get("ids", "null")) != ids:
        raise ValueError("recorded spot ids differ")
    n = len(centres)
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features {features.dtype} {features.shape}, expected ({n}, d) float32")
    if stored_centres.shape != centres.shape or not np.array_equal(stored_centres, centres):
        raise ValueError("recorded patch centres differ")
    if _sha(np.ascontiguousarray(features).tobytes()) != meta.get("features_sha256"):
        raise ValueError("feature checksum mismatch (damaged file)")
    return np.array(features, dtype=np.float32)


def _write(
    path: Path,
    key: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    centres: np.ndarray,
    ids: list[str] | None,
    features: np.ndarray,
) -> None:
    from safetensors.numpy import save_file

    from ..io.export import write_atomic

    features = np.ascontiguousarray(features, dtype=np.float32)
    metadata = {
        "format": str(FORMAT),
        "key": _json(key),
        "section": _json(fingerprint),
        "features_sha256": _sha(features.tobytes()),
    }
    if ids is not None:
        metadata["ids"] = _json(ids)
    tensors = {"features": features, "centres": np.ascontiguousarray(centres, dtype=np.float64)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        key_json = path.parent / "key.json"
        if not key_json.is_file():
            text = json.dumps(key, indent=1, sort_keys=True)
            write_atomic(key_json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except Exception as exc:
        folder = str(path.parent.parent)
        if folder not in _warned:
            _warned.add(folder)
            warnings.warn(
                f"{folder}: cannot write the feature cache ({exc}); features are computed "
                "but not kept (set HISTOEXPRESS_HOME to a writable folder)",
                FeatureCacheWarning,
                stacklevel=4,
            )
