"""The shared body of the gene-aware spot models on a frozen patch encoder (HAGE, DKAN).

Both keep a frozen timm encoder as a sub-module (saved in the checkpoint, so a random-init
encoder is restored exactly, and always in eval mode), a gene-vector memory (a buffer, so a
trained run predicts without the text encoder) with trainable offsets for ``learned`` genes,
a dataclass config with ``patch_um``/``input_px`` (the working µm/px is their ratio), and
the ``to(device, precision)`` convention of the ridge baseline. :class:`FrozenPatchModel`
holds that once; a model sets :attr:`config_class`, :attr:`display_name`, and (when its
frozen features are not mean-pooled) :attr:`pooling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import InputSpec, SpotModel, copy_gene_vectors

if TYPE_CHECKING:
    from typing import Self

    from .feature_cache import FrozenEncoder, LoadedEncoder

__all__ = ["FrozenPatchModel", "FrozenPatchSettings"]


@dataclass
class FrozenPatchSettings:
    """The settings HAGE's and DKAN's configs share: the frozen encoder (the ridge
    baseline's: ImageNet EfficientNet-Lite0, a 331.5 µm patch at 224 px, every level
    mean-pooled; standardised with the training statistics), the genes (``n_genes``, the
    ``gene_encoder`` of the descriptions, the ``gene_missing`` policy) and the widths
    resolved when the config is made (``image_dim``: the encoder's pooled width;
    ``gene_dim``: the gene encoder's), so a run records them."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: str | None = "auto"
    out_indices: tuple[int, ...] | None = None
    zero_init_last: bool = False
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    patch_um: float = 448 * 0.74
    input_px: int = 224
    encoder_seed: int = 0
    standardize: bool = True
    n_genes: int = 1
    gene_encoder: str = "minilm"
    gene_missing: str = "error"
    image_dim: int | None = None
    gene_dim: int | None = None

    def __post_init__(self) -> None:
        from .feature_cache import encoder_channels, encoder_settings

        for name, value in encoder_settings(self).items():
            setattr(self, name, value)
        from .gene_knowledge.missing_genes import MISSING_POLICIES

        if self.gene_missing not in MISSING_POLICIES:
            raise ValueError(
                f"gene_missing must be one of {MISSING_POLICIES}, got {self.gene_missing!r}"
            )
        if self.image_dim is None:
            channels = encoder_channels(self.backbone, self.out_indices, self.backbone_kwargs)
            self.image_dim = int(sum(channels))
        if self.gene_dim is None:
            from .gene_knowledge.gene_embeddings import create_gene_encoder

            self.gene_dim = int(create_gene_encoder(self.gene_encoder, cache=False).dim)

    @property
    def input_mpp(self) -> float:
        """µm per pixel of the encoder's input: ``patch_um / input_px``."""
        return self.patch_um / self.input_px

    def _tuples_as_lists(self, d: dict[str, Any], *extra: str) -> dict[str, Any]:
        for key in ("out_indices", "mean", "std", *extra):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


class FrozenPatchModel(nn.Module, SpotModel):
    """Base of HAGE and DKAN (see the module docstring). Subclasses register ``feature_mean``
    (on the model's device), ``gene_vectors``, ``gene_learned`` and ``gene_offsets`` and
    build ``self.encoder = self.frozen_encoder().build()``."""

    #: the dataclass of the model's settings
    config_class: ClassVar[type]
    #: the model's name in messages
    display_name: ClassVar[str]
    #: ``InputSpec.context`` of the model
    input_context: ClassVar[str] = "none"

    config: Any
    feature_mean: torch.Tensor
    gene_vectors: torch.Tensor
    gene_learned: torch.Tensor
    encoder: nn.Module
    _precision: str = "fp32"

    # ------------------------------------------------------------------ config
    @classmethod
    def _config(cls, config: Mapping[str, Any] | None) -> Any:
        config = dict(config or {})
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.display_name} config keys {unknown}; known: {sorted(known)}"
            )
        return cls.config_class(**config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> Self:
        """Build from a plain dict of the config class's fields (unknown keys raise)."""
        return cls(cls._config(config))

    @classmethod
    def settings_of(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config_class(**config).to_dict()`` (no network built)."""
        return dict(cls._config(config).to_dict())

    def config_dict(self) -> dict[str, Any]:
        return dict(self.config.to_dict())

    @classmethod
    def contract_instance(cls) -> Self:
        """:meth:`contract_config`'s model with seeded random gene vectors."""
        model = cls.from_config(cls.contract_config())
        gen = torch.Generator().manual_seed(0)
        shape = tuple(model.gene_vectors.shape)
        model.set_gene_vectors(torch.randn(*shape, generator=gen).numpy())
        return model

    def set_gene_vectors(self, vectors: np.ndarray, learned: np.ndarray | None = None) -> None:
        """The gene memory: ``(G, gene_dim)`` vectors (rows of ``learned`` genes become
        trainable through ``gene_offsets``)."""
        copy_gene_vectors(self.gene_vectors, vectors)
        n = len(self.gene_vectors)
        mask = np.zeros(n, bool) if learned is None else np.asarray(learned, bool)
        self.gene_learned.copy_(torch.as_tensor(mask))

    # ------------------------------------------------------------------ interface
    @property
    def working_mpp(self) -> float:  # type: ignore[override]
        """µm per pixel of the encoder's patches: ``patch_um / input_px``."""
        return float(self.config.input_mpp)

    @working_mpp.setter
    def working_mpp(self, value: float | None) -> None:
        mpp = float(self.config.input_mpp)
        if value is not None and not np.isclose(float(value), mpp, rtol=1e-9):
            raise ValueError(
                f"{self.display_name} works at patch_um / input_px = {mpp:g} µm/px, "
                f"not {float(value):g}"
            )

    def input_spec(self) -> InputSpec:
        mean, std = self.frozen_encoder().input_stats()
        return InputSpec(
            mpp=self.working_mpp,
            mean=mean,
            std=std,
            normalizes_input=True,
            patch_px=int(self.config.input_px),
            context=self.input_context,
            stain=None if self.stain is None else dict(self.stain),
        )

    # ------------------------------------------------------------------ frozen encoder
    @property
    def pooling(self) -> str:
        """How the frozen encoder's maps become features (:data:`.feature_cache.POOLINGS`)."""
        return "mean"

    def frozen_encoder(self) -> FrozenEncoder:
        """The frozen encoder's description (the feature cache's key)."""
        from .feature_cache import FrozenEncoder

        return FrozenEncoder.from_config(
            self.config, seed=self.config.encoder_seed, pooling=self.pooling
        )

    def loaded_encoder(self) -> LoadedEncoder:
        """:meth:`frozen_encoder` bound to this model's encoder on its device."""
        from .feature_cache import LoadedEncoder

        return LoadedEncoder(
            self.frozen_encoder(),
            self.encoder,
            device=self.feature_mean.device,
            precision=self._precision,
        )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, p, p)`` RGB in [0, 1] → raw frozen features (float32, on the model's
        device)."""
        from .feature_cache import encode_tensor

        p = int(self.config.input_px)
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, p, p):
            raise ValueError(f"images must be (N, 3, {p}, {p}), got {tuple(images.shape)}")
        device = self.feature_mean.device
        mean, std = self.frozen_encoder().input_stats()
        feats = encode_tensor(
            self.encoder,
            images.float(),
            mean,
            std,
            device=device,
            precision=self._precision,
            pooling=self.pooling,
            mpp=self.config.input_mpp,
        )
        return torch.from_numpy(feats).to(device)

    def to(self, *args: Any, **kwargs: Any) -> Self:  # type: ignore[override]
        """``nn.Module.to``; also ``to(device, precision)`` as the ridge baseline takes it
        (the frozen encoder's forward precision)."""
        if len(args) == 2 and isinstance(args[1], str) and not kwargs:
            from ..devices import autocast_dtype, resolve_device

            device = resolve_device(args[0])
            autocast_dtype(device, args[1])  # validates the precision
            self._precision = args[1]
            return super().to(device)
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> Self:
        """``nn.Module.train``, the frozen encoder always in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self
