"""PixNet: a dense gene-expression map from an H&E image, aggregated inside spots.

Zhang, Yang & Pan, "Spatial Transcriptomics Analysis of Spatially Dense Gene Expression
Prediction" (``../shared/seeds/pixnet.txt``), sections 2.1–2.4.

Architecture (paper Eq. 1–4)
----------------------------
- **Encoder**: any timm CNN with ``features_only`` (paper: ResNet18) gives the pyramid
  ``F_1 .. F_L`` (fine to coarse). Each level is first projected to ``decoder_dim`` with a
  1×1 conv so levels of any width can be summed.
- **Decoder** (U-net style, L−1 steps): ``D_0 = proj(F_L)``; step ``k = 1 .. L−1`` fuses the
  level ``F_{L−k}`` (the paper writes ``F_l`` loosely):
  ``D_k = DFFN(Dconv(D_{k−1}) + δ_k · proj(F_{L−k}))``. ``Dconv`` is a transposed conv with
  kernel = stride = the stride ratio between the levels (2 for ResNets; ``upsample =
  "transposed"``, the paper's choice). A kernel equal to its stride gives every output pixel
  of a 2×2 block its own weights, which leaves a stride-periodic *checkerboard* in dense maps
  (Odena et al., Distill 2016). ``upsample = "bilinear"`` replaces it with the usual remedy:
  bilinear ×2 resize followed by a 3×3 conv (same parameter budget order, no periodic
  pattern). If sizes still differ (odd input sizes) the upsampled map is resized to the
  skip's size. ``δ_k`` is one learnable scalar per level (init ``delta_init``).
- **DFFN** (the paper's ref. [8], "convolution-based two-layer feed-forward block"):
  pre-norm residual ``y + W2(GELU(DW3x3(W1(LN(y)))))`` with 1×1 convs ``W1`` (expand by
  ``ffn_expansion``) and ``W2``. The norm is a per-pixel LayerNorm over channels
  (``LayerNorm2d``), not BatchNorm/GroupNorm: it uses no batch or spatial statistics, so a
  tile's prediction does not depend on the batch or on how the slide was tiled.
- **Head**: ``G = Resize(Linear(D_{L−1}))`` — a 1×1 conv (Linear over channels) to genes,
  bilinear resize (``align_corners=False``) to the input size.
- **Input**: RGB float in [0, 1], ``(B, 3, H, W)``; normalisation with the backbone's
  mean/std happens inside the model (stored in the config) so checkpoints are
  self-describing.

Factorised dense map (the :class:`~.base.DenseModel` interface)
------------------------------------------------------------------
``features(x)`` returns ``D_{L−1}`` (``(B, C, h, w)``, C = ``decoder_dim``, stride of ``F_1``):
that is what whole-slide inference stores. ``gene_maps(features)`` = resize(head(features)).
:meth:`PixNet.gene_head` gives the 1×1 head as ``W (C, G)``, ``b (G,)`` and
:meth:`PixNet.input_spec` what the input must be: RGB in [0, 1] (PixNet normalises itself),
windows a multiple of the encoder's total downsampling (``input_multiple``: a CNN is only
shift-equivariant for shifts of that many pixels, see :mod:`..inference.tiling`).
Because the head is affine (``W f + b``) and bilinear resize is linear with weights summing
to 1 at every output pixel, resize and head commute, and for any disk with pixel weights
``w_p`` (exact overlap areas, ``A = Σ w_p``):

    Σ_p w_p G_p = W (Σ_p w_p R(f)_p) + b·A          (sum, paper Eq. 5)
    Σ_p w_p G_p / A = W (Σ_p w_p R(f)_p / A) + b    (mean)

where ``R(f)`` is the resized feature map. So one aggregates C feature channels, then
applies the head once per spot — cheaper than aggregating a map of all genes whenever
C < n_genes, and exact (tested numerically). :meth:`PixNet.spot_predictions` goes further:
``Σ_p w_p R(f)_p`` is itself a fixed linear map of the *low-resolution* features (bilinear
weights are separable), so training never materialises a full-resolution map.

Aggregation: mean by default
----------------------------
The targets are library-size-normalised ``log1p`` expression: an *intensive* quantity (a
fraction of the spot's transcripts), not a count. A spot twice as large does not have
twice the value; its value is an average over its parts. The mean over the disk keeps the
model scale-free across spot sizes (Visium HD 2 µm bins .. legacy ST 100 µm spots), which
is PixNet's selling point; the paper's sum (Eq. 5) would make the map's scale depend on
the training spot area. ``aggregation="sum"`` reproduces the paper.

Defaults
--------
``decoder_dim = 128`` (paper: 512). The decoder runs at stride 2 of the input, where a
512-channel DFFN (expanded to 1024) dominates the cost; 128 channels make training and
whole-slide inference practical on CPUs and 4× smaller feature stores, and are still a
rich basis for ~250 genes (the head is rank ``decoder_dim``). Set 512 to follow the paper.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ..geometry import circle_pixel_weights
from ..models.backbones import backbone_transform_stats, create_backbone
from ..models.base import DenseModel, InputSpec, check_gene_head, copy_gene_vectors
from ..models.pretrained import resolve_pretrained
from ..models.registry import register_model

if TYPE_CHECKING:
    from timm.models import FeatureInfo

__all__ = ["DFFN", "PixNet", "PixNetConfig", "ResizeConv", "spot_weight_matrix"]


@dataclass
class PixNetConfig:
    """Everything needed to rebuild a :class:`PixNet` (JSON-able via :meth:`to_dict`).

    Attributes:
        n_genes: number of predicted genes (output channels).
        backbone: timm model name (any CNN with ``features_only``).
        pretrained: ``None`` (random init, default), a weights file, ``"hf-hub:org/name"``,
            ``"imagenet"`` (offline, EfficientNet-Lite0/1/2), ``"auto"`` (``"imagenet"``
            where the backbone has offline weights, else random) or ``"none"``; recorded
            resolved (:func:`~.pretrained.resolve_pretrained`). Only used when building a
            fresh model; a checkpoint carries its own weights.
        out_indices: backbone levels to use (``None`` = all; L = their number, L >= 2).
        backbone_kwargs: extra timm architecture options (e.g. ``{"init_values": 1e-5,
            "dynamic_img_size": true}`` for a UNI-style ViT, whose levels all share one
            stride: the decoder then fuses them without upsampling, a stride-16 map).
        decoder_dim: decoder channels C (paper 512; default 128, see module docstring).
        ffn_expansion: hidden width of the DFFN = ``ffn_expansion * decoder_dim``.
        aggregation: ``"mean"`` (default, scale-free) or ``"sum"`` (paper Eq. 5).
        upsample: decoder upsampling, ``"transposed"`` (paper's Dconv) or ``"bilinear"``
            (bilinear resize + 3×3 conv: no checkerboard; see module docstring).
        delta_init: initial value of the learnable per-level skip scales δ.
        zero_init_last: timm's zero-init of residual branches (random-init backbones only).
        mean, std: input normalisation (RGB in [0, 1]); ``None`` = the backbone's.
        head: ``"linear"`` (default: the paper's 1×1 conv, one free column per gene) or
            ``"text"``: each gene's column and bias are a learned projection of its
            description embedding (``gene_encoder``, MiniLM by default; ``gene_missing`` as
            for HAGE; ``gene_dim`` resolved from the encoder), ``[w_g; b_g] = P·e_g + c``,
            trained on the seen genes — so a gene never trained on gets a column from its
            description alone (zero-shot, :meth:`PixNet.unseen_gene_head`).
    """

    n_genes: int = 250
    backbone: str = "resnet18"
    pretrained: str | None = None
    out_indices: tuple[int, ...] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_dim: int = 128
    ffn_expansion: int = 2
    aggregation: Literal["mean", "sum"] = "mean"
    upsample: Literal["transposed", "bilinear"] = "transposed"
    delta_init: float = 1.0
    zero_init_last: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    head: Literal["linear", "text"] = "linear"
    gene_encoder: str = "minilm"
    gene_missing: str = "error"
    gene_dim: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in ("linear", "text"):
            raise ValueError(f"head must be 'linear' or 'text', got {self.head!r}")
        if self.head == "text" and self.gene_dim is None:
            from .gene_knowledge.gene_embeddings import create_gene_encoder

            self.gene_dim = int(create_gene_encoder(self.gene_encoder, cache=False).dim)
        if self.aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation must be 'mean' or 'sum', got {self.aggregation!r}")
        if self.upsample not in ("transposed", "bilinear"):
            raise ValueError(f"upsample must be 'transposed' or 'bilinear', got {self.upsample!r}")
        if self.n_genes < 1 or self.decoder_dim < 1 or self.ffn_expansion < 1:
            raise ValueError("n_genes, decoder_dim and ffn_expansion must be >= 1")
        if self.out_indices is not None:
            self.out_indices = tuple(int(i) for i in self.out_indices)
        self.pretrained = resolve_pretrained(self.backbone, self.pretrained)  # auto/none
        mean: Sequence[float] | None = self.mean
        std: Sequence[float] | None = self.std
        if mean is None or std is None:
            default_mean, default_std = backbone_transform_stats(self.backbone)
            mean = mean or default_mean
            std = std or default_std
        # three values (RGB) in practice; the model's buffers check the length
        self.mean = cast("tuple[float, float, float]", tuple(float(v) for v in mean))
        self.std = cast("tuple[float, float, float]", tuple(float(v) for v in std))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("out_indices", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PixNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PixNet config keys: {sorted(unknown)}")
        return cls(**d)


class DFFN(nn.Module):
    """Conv feed-forward block: ``y + W2(GELU(DW3x3(W1(LN(y)))))`` (see module docstring)."""

    def __init__(self, dim: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = dim * expansion
        self.norm = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.dwconv(self.fc1(self.norm(x)))))


class ResizeConv(nn.Module):
    """Bilinear ×``ratio`` resize then a 3×3 conv (checkerboard-free upsampling)."""

    def __init__(self, dim: int, ratio: int) -> None:
        super().__init__()
        self.ratio = int(ratio)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.ratio, mode="bilinear", align_corners=False)
        return self.conv(x)


@register_model("pixnet")
class PixNet(nn.Module, DenseModel):
    """PixNet: dense gene-expression maps from H&E, a timm encoder with a U-net decoder.

    A :class:`~.base.DenseModel` (see the module docstring): ``features`` → ``(B, C, h, w)``
    at stride ``output_stride``, linear gene head, trained on spot disks.
    """

    # buffers registered in ``__init__`` (input normalisation, ``(1, 3, 1, 1)``)
    input_mean: torch.Tensor
    input_std: torch.Tensor
    # the text head's (``head="text"`` only)
    gene_vectors: torch.Tensor
    text_head: nn.Linear

    def __init__(self, config: PixNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_backbone(
            config.backbone,
            pretrained=config.pretrained,
            out_indices=config.out_indices,
            zero_init_last=config.zero_init_last,
            model_kwargs=config.backbone_kwargs,
        )
        feature_info = cast("FeatureInfo", self.encoder.feature_info)
        channels = list(feature_info.channels())
        reductions = list(feature_info.reduction())
        if len(channels) < 2:
            raise ValueError("PixNet needs at least two backbone levels (out_indices)")
        dim = config.decoder_dim
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)
        ups: list[nn.Module] = []
        for fine, coarse in itertools.pairwise(reductions):
            ratio = max(1, round(coarse / fine))
            if ratio == 1:
                ups.append(nn.Conv2d(dim, dim, 1))
            elif config.upsample == "bilinear":
                ups.append(ResizeConv(dim, ratio))
            else:
                ups.append(nn.ConvTranspose2d(dim, dim, ratio, stride=ratio))
        # index k fuses level k (fine to coarse), used from the coarse end
        self.up = nn.ModuleList(ups)
        self.delta = nn.Parameter(torch.full((len(channels) - 1,), float(config.delta_init)))
        self.ffn = nn.ModuleList(DFFN(dim, config.ffn_expansion) for _ in ups)
        self.head = nn.Conv2d(dim, config.n_genes, 1)
        if config.head == "text":  # columns from the genes' description embeddings
            assert config.gene_dim is not None
            self.register_buffer("gene_vectors", torch.zeros(config.n_genes, config.gene_dim))
            self.text_head = nn.Linear(config.gene_dim, dim + 1)
            self.head.requires_grad_(False)  # unused: the text head gives the columns
        self.output_stride = int(reductions[0])
        # windows must sit on the grid of the encoder's total downsampling (and the stride)
        self.input_multiple = math.lcm(int(max(reductions)), self.output_stride)
        self.register_buffer(
            "input_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "input_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | PixNetConfig) -> PixNet:
        if not isinstance(config, PixNetConfig):
            config = PixNetConfig.from_dict(config)
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def settings_of(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """``PixNetConfig.from_dict(config).to_dict()`` (no network built)."""
        return PixNetConfig.from_dict(config).to_dict()

    @classmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny PixNet for the model contract test: ResNet18 levels 1–2, 8 channels."""
        return {"n_genes": 3, "backbone": "resnet18", "out_indices": [1, 2], "decoder_dim": 8}

    def input_spec(self) -> InputSpec:
        """RGB in [0, 1] (normalised inside with the config's mean/std), stride
        ``output_stride``, windows a multiple of ``input_multiple`` (the encoder's largest
        reduction); no declared receptive field (tiling uses its default halo)."""
        mean, std = self.config.mean, self.config.std
        assert mean is not None and std is not None  # filled in by PixNetConfig
        return InputSpec(
            mpp=self.working_mpp,
            mean=mean,
            std=std,
            normalizes_input=True,
            stride=self.output_stride,
            input_multiple=self.input_multiple,
            stain=None if self.stain is None else dict(self.stain),
        )

    @property
    def feature_stride(self) -> int:
        """Input pixels per feature-map pixel (= ``output_stride``)."""
        return self.output_stride

    @property
    def n_genes(self) -> int:
        return self.config.n_genes

    @property
    def feature_dim(self) -> int:
        return self.config.decoder_dim

    @property
    def zero_shot(self) -> bool:  # type: ignore[override]
        """True with the text head (``head="text"``): new genes from their descriptions."""
        return self.config.head == "text"

    def _head_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head as ``(weight (G, C), bias (G,))`` tensors (differentiable): the 1×1 conv's,
        or the text head's projection of the gene vectors."""
        if self.config.head == "text":
            out = self.text_head(self.gene_vectors)
            return out[:, :-1], out[:, -1]
        bias = self.head.bias
        assert bias is not None  # the head is built with bias=True
        return self.head.weight[:, :, 0, 0], bias

    @property
    def _head_bias(self) -> torch.Tensor:
        return self._head_tensors()[1]

    @torch.no_grad()
    def init_head_bias(self, gene_means: torch.Tensor | np.ndarray) -> None:
        """Start from the training mean of each gene (zero-weight head is not forced). With
        the text head: its bias row is fitted to the means by ridge least squares on the
        gene vectors (set them first, :meth:`set_gene_vectors`)."""
        means = torch.as_tensor(np.asarray(gene_means), dtype=torch.float32)
        if self.config.head != "text":
            bias = self.head.bias
            assert bias is not None
            bias.copy_(means.to(bias.dtype))
            return
        V = self.gene_vectors.double().cpu()
        c = float(means.mean())
        A = V.T @ V + 1e-2 * torch.eye(V.shape[1], dtype=torch.float64)
        u = torch.linalg.solve(A, V.T @ (means.double() - c))
        self.text_head.weight[-1].copy_(u.float())
        self.text_head.bias[-1].fill_(c)

    def set_gene_vectors(self, vectors: np.ndarray, learned: np.ndarray | None = None) -> None:
        """The text head's gene memory ``(G, gene_dim)`` (``learned`` is not supported: a
        gene without a description has no column)."""
        if self.config.head != "text":
            raise TypeError("set_gene_vectors needs PixNet's text head (head='text')")
        if learned is not None and np.asarray(learned, bool).any():
            raise ValueError("PixNet's text head needs a description of every gene")
        copy_gene_vectors(self.gene_vectors, vectors)

    def unseen_gene_head(
        self,
        genes: Sequence[str],
        *,
        nodes: Any = None,
        state: Mapping[str, np.ndarray] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Zero-shot columns of the text head: ``[w; b] = P·e + c`` of the genes'
        description embeddings (the table's, or ``descriptions``); the same for every
        slide. ``TypeError`` with the linear head."""
        if self.config.head != "text":
            return super().unseen_gene_head(genes, descriptions=descriptions)
        from .gene_knowledge.described_genes import description_vectors

        vectors = description_vectors(
            self.config.gene_encoder, genes, descriptions, who="PixNet's text head"
        )
        with torch.no_grad():
            v = torch.as_tensor(vectors, dtype=torch.float32, device=self.gene_vectors.device)
            out = self.text_head(v).double().cpu().numpy()
        return out[:, :-1].T.copy(), out[:, -1].copy()

    # ------------------------------------------------------------------ dense maps
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder map ``D_{L−1}``: ``(B, C, ceil(H/s), ceil(W/s))`` with s = output_stride."""
        x = (x - self.input_mean) / self.input_std
        pyramid = self.encoder(x)
        d = self.proj[-1](pyramid[-1])
        for k in range(len(pyramid) - 2, -1, -1):
            skip = self.proj[k](pyramid[k])
            d = self.up[k](d)
            if d.shape[-2:] != skip.shape[-2:]:
                d = F.interpolate(d, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            d = self.ffn[k](d + self.delta[k] * skip)
        return d

    def gene_maps(
        self, features: torch.Tensor, out_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``Resize(Linear(features))``: ``(B, n_genes, *out_size)``; no resize if ``None``."""
        weight, bias = self._head_tensors()
        g = F.conv2d(features, weight[:, :, None, None].to(features.dtype), bias.to(features.dtype))
        if out_size is not None and tuple(out_size) != tuple(g.shape[-2:]):
            g = F.interpolate(g, size=tuple(out_size), mode="bilinear", align_corners=False)
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gene map ``G`` at the input size, ``(B, n_genes, H, W)`` (paper Eq. 4)."""
        return self.gene_maps(self.features(x), out_size=x.shape[-2:])

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (C, G), b (G,))`` float64 of the 1×1 head, for numpy aggregation."""
        weight, bias = self._head_tensors()
        w = weight.detach().double().cpu().numpy().T
        b = bias.detach().double().cpu().numpy()
        return check_gene_head(w, b, self.feature_dim, self.config.n_genes, who="PixNet")

    def apply_head(
        self, pooled: np.ndarray, area: np.ndarray | None = None, reduce: str | None = None
    ) -> np.ndarray:
        """Genes from aggregated features (numpy): ``pooled @ W + b`` (``+ b·area`` for sum)."""
        reduce = reduce or self.config.aggregation
        w, b = self.gene_head()
        out = np.asarray(pooled, dtype=np.float64) @ w
        if reduce == "sum":
            if area is None:
                raise ValueError("reduce='sum' needs the area of each circle")
            return out + np.asarray(area, dtype=np.float64)[:, None] * b
        return out + b

    # ------------------------------------------------------------------ spots
    def spot_predictions(
        self,
        features: torch.Tensor,
        centres_xy: torch.Tensor | np.ndarray,
        radii: torch.Tensor | np.ndarray | float,
        image_size: Sequence[int],
        *,
        batch_index: torch.Tensor | np.ndarray | None = None,
        reduce: str | None = None,
    ) -> torch.Tensor:
        """Aggregate ``G`` inside spot disks: ``(N, n_genes)``, differentiable.

        Args:
            features: ``(B, C, h, w)`` from :meth:`features`.
            centres_xy: ``(N, 2)`` spot centres ``(x, y)`` in input-image pixels (pixel
                centres at integers, see :mod:`napari_histoexpress.geometry`).
            radii: ``(N,)`` or scalar, input-image pixels.
            image_size: ``(H, W)`` of the input image (the size ``G`` is resized to).
            batch_index: ``(N,)`` image of each spot; may be omitted when B == 1.
            reduce: ``"mean"``/``"sum"``; default ``config.aggregation``.

        Exact: every input pixel is weighted by its overlap area with the disk, and the
        aggregation of the bilinearly resized map is folded into fixed weights on the
        ``h × w`` feature grid (:func:`spot_weight_matrix`), so this equals aggregating
        ``gene_maps(features, image_size)`` (tested) at a fraction of the cost. A spot with
        no area inside the image raises ``ValueError``; partially outside spots are
        averaged over their inside part.
        """
        reduce = reduce or self.config.aggregation
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        pooled, area_t = self.spot_feature_sums(
            features, centres_xy, radii, image_size, batch_index=batch_index
        )
        weight, head_bias = self._head_tensors()
        bias = head_bias[None, :]
        lin = pooled @ weight.T
        if reduce == "mean":
            return lin / area_t[:, None] + bias
        return lin + area_t[:, None] * bias

    def spot_feature_sums(
        self,
        features: torch.Tensor,
        centres_xy: torch.Tensor | np.ndarray,
        radii: torch.Tensor | np.ndarray | float,
        image_size: Sequence[int],
        *,
        batch_index: torch.Tensor | np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums (N, C), area (N,))``: the feature channels summed inside each spot disk
        of the resized map (exact pixel weights, see :meth:`spot_predictions`, which is
        ``sums @ Wᵀ`` over the area for the mean) and the disks' areas inside the image."""
        b, c, h, w = features.shape
        if batch_index is None and b != 1:
            raise ValueError("batch_index is required when the batch has several images")
        img_h, img_w = (int(s) for s in image_size)
        weights, area = spot_weight_matrix(
            _to_numpy(centres_xy),
            _to_numpy(radii),
            (img_h, img_w),
            (h, w),
            batch_index=None if batch_index is None else _to_numpy(batch_index),
            n_batch=b,
        )
        if np.any(area <= 0):
            bad = np.flatnonzero(area <= 0)[:5].tolist()
            raise ValueError(f"spots {bad} do not overlap the image")
        weights = weights.to(device=features.device, dtype=features.dtype)
        flat = features.permute(0, 2, 3, 1).reshape(b * h * w, c)
        pooled = torch.sparse.mm(weights, flat)  # (N, C)
        area_t = torch.as_tensor(area, dtype=features.dtype, device=features.device)
        return pooled, area_t


# ---------------------------------------------------------------------- helpers
def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _linear_resize_taps(out_size: int, in_size: int) -> tuple[np.ndarray, ...]:
    """Source indices and weights of PyTorch's 1-D linear resize (``align_corners=False``).

    Output pixel ``i`` = ``w0[i]·in[i0[i]] + w1[i]·in[i1[i]]`` (``w0 + w1 = 1``).
    """
    scale = in_size / out_size
    src = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def spot_weight_matrix(
    centres_xy: np.ndarray,
    radii: np.ndarray | float,
    image_size: tuple[int, int],
    feature_size: tuple[int, int],
    *,
    batch_index: np.ndarray | None = None,
    n_batch: int = 1,
) -> tuple[torch.Tensor, np.ndarray]:
    """Sparse ``(N, n_batch·h·w)`` weights ``M`` and ``(N,)`` disk areas inside the image.

    ``M @ features_flat`` = Σ over the disk of the bilinearly resized feature map, each
    input pixel weighted by its exact overlap area (float64 geometry, then the separable
    bilinear taps). Rows sum to the area. Depends only on geometry: a data loader may
    precompute it.
    """
    centres = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (n,))
    bidx = np.zeros(n, np.int64) if batch_index is None else np.asarray(batch_index, np.int64)
    if bidx.shape != (n,) or (n and (bidx.min() < 0 or bidx.max() >= n_batch)):
        raise ValueError("batch_index must be (N,) with values in [0, n_batch)")
    hh, ww = image_size
    h, w = feature_size
    ry = _linear_resize_taps(hh, h)
    rx = _linear_resize_taps(ww, w)
    rows_out, cols_out, vals_out = [], [], []
    area = np.zeros(n)
    for k in range(n):
        rows, cols, wgt = circle_pixel_weights(centres[k, 0], centres[k, 1], radii[k], (hh, ww))
        area[k] = wgt.sum()
        base = bidx[k] * h * w
        for ya, wy in ((ry[0], ry[2]), (ry[1], ry[3])):
            for xa, wx in ((rx[0], rx[2]), (rx[1], rx[3])):
                v = wgt * wy[rows] * wx[cols]
                keep = v != 0
                cols_out.append(base + ya[rows[keep]] * w + xa[cols[keep]])
                vals_out.append(v[keep])
                rows_out.append(np.full(int(keep.sum()), k, np.int64))
    if n:
        idx = np.stack([np.concatenate(rows_out), np.concatenate(cols_out)])
        vals = np.concatenate(vals_out)
    else:
        idx, vals = np.zeros((2, 0), np.int64), np.zeros(0)
    mat = torch.sparse_coo_tensor(
        torch.from_numpy(idx),
        torch.from_numpy(vals),
        size=(n, n_batch * h * w),
        check_invariants=True,
    ).coalesce()
    return mat, area
