"""HAGE: gene embeddings cross-attended into frozen image features (MICCAI 2025).

The paper (``../shared/seeds/hage_miccai2025.txt``; design notes *spot-models* §1): a frozen
patch feature ``x`` per spot; **GE** (§2.2) projects it to a query ``q = W_x·x`` that attends
over the gene embeddings ``K = V = W_g·G`` (one token per gene), ``z^i = f_MLP(Attn(q, K, V)
+ q)``; an **expression encoder** EE embeds the measured expression as ``z^e`` (training
only); CyCLIP + CLIP align ``z^i`` with ``z^e`` per spot and on **hierarchical** k-means
centroids (HA, §2.3; :mod:`napari_histoexpress.training.hierarchical_clusters`); ``f_Pred``
maps ``z^i`` to the expression, trained with a PCC loss. At inference
``ŷ = f_Pred(f_GE(x, G))``. The losses and their weights are the training task's
(:mod:`napari_histoexpress.training.tasks.hage`); the settings are all here
(:class:`HageConfig`) so that a run records them.

What the paper leaves open, and what this implementation chose (all :class:`HageConfig`
fields; the spec's recommendations unless said otherwise):

* **Image features** (paper: frozen UNI, 1024-d, 224 native px ≈ 166 µm on her2st; UNI is
  not obtainable offline): the ridge baseline's frozen encoder and patch
  (:class:`~.feature_cache.FrozenEncoder` defaults: ImageNet EfficientNet-Lite0 from the
  offline wheel, every stage mean-pooled and concatenated, 512-d, a 331.5 µm patch resampled
  to 224 px), the best offline encoder of README *Results* — and the same features as the
  ridge baseline, so the two compare on equal footing (the issue's goal) and share one
  feature cache. ``patch_um``/``input_px``/``backbone`` change it. The features are
  standardised with the training spots' mean and standard deviation (``standardize``; kept
  as buffers), as the ridge baseline's scaler does: pooled CNN features have per-channel
  scales over orders of magnitude.
* **Gene vectors** (paper: Gene2Vec, 200-d; not obtainable offline): the all-MiniLM-L6-v2
  embeddings (384-d) of the bundled gene descriptions
  (:mod:`~.gene_knowledge`; ``gene_encoder="minilm"``). A Gene2Vec text file (``SYMBOL v1 …
  vN``), a ``.npy``/``.safetensors`` file or another text model is ``gene_encoder``
  (``file:PATH``, ``hf:ORG/NAME``). A gene without a vector follows ``gene_missing``:
  ``"error"`` (default: the paper drops such genes from its panel; we say so instead of
  silently changing the panel), ``"learned"`` (a trainable vector, zero at start) or
  ``"zero"``. The vectors are a buffer of the model, saved in its checkpoint: a trained run
  predicts without the text encoder.
* **GE block**: ``d = dim`` = 1024 (paper); pre-LayerNorm on the query and on the gene
  tokens, ``heads`` = 8, dropout 0.1; ``f_MLP`` = a pre-LayerNorm residual MLP (4·d, GELU):
  ``z = h + MLP(LN(h))``, ``h = Attn(LN(q), LN(K), LN(V)) + q``. ``use_ge=False`` is the
  paper's "without GE" ablation: ``h = q`` (the same MLP, no gene memory).
* **f_Pred**: ``Linear(d, d)–GELU–Linear(d, C)–GELU–Linear(C, |G|)``, ``C = head_dim`` =
  256, the last layer linear. **EE**: ``Linear(|G|, d)–GELU–Linear(d, d)–GELU–Linear(d,
  d)`` on the normalised expression.
* Loss weights (λ = 10, 1, 1, 10), τ = 0.07 fixed, k₁ = 30, k₂ = 2, and the centroid rules
  (sub-clusters with ≥ 4 members in the batch, the term skipped under 8): see the task.

The model interface (:class:`~.base.SpotModel`)
-------------------------------------------------
* **Features** (``C = head_dim``): the output of ``f_Pred``'s second GELU; the **gene head**
  is ``f_Pred``'s last Linear, so ``features @ W + b`` is the model's prediction exactly
  (the contract test checks it), and the dense-map store keeps ``C`` channels.
* :meth:`HAGE.encode_spots` takes the frozen encoder's pooled features (``spots.features``,
  e.g. from the feature cache) or patches (``spots.images``, RGB in [0, 1], encoded by the
  frozen encoder, which is a sub-module saved in the checkpoint so that a random-init
  encoder is restored exactly).
* Whole slides: the lattice predictor (:mod:`napari_histoexpress.inference.predict_lattice`)
  encodes a patch centred on every lattice node — the spec's sliding-window adapter.
  Zero-shot: no (the genes are a fixed memory and the head has weights per gene).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import SpotInputs, check_gene_head
from .frozen_spot import FrozenPatchModel, FrozenPatchSettings
from .registry import register_model

__all__ = ["HAGE", "GeneEmbeddingAttention", "HageConfig", "image_feature_dim"]


def image_feature_dim(
    backbone: str,
    out_indices: Sequence[int] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """``D``: width of the frozen encoder's pooled, concatenated levels (built once per
    process, without weights, to read its channels)."""
    from .feature_cache import encoder_channels

    return sum(encoder_channels(backbone, out_indices, backbone_kwargs))


@dataclass
class HageConfig(FrozenPatchSettings):
    """Settings of :class:`HAGE` (the module docstring explains each choice).

    ``n_genes``, ``image_dim`` and ``gene_dim`` size the model: training sets ``n_genes``;
    ``image_dim`` (``None``: the encoder's pooled width) and ``gene_dim`` (``None``: the gene
    encoder's width) are resolved when the config is made, so a run records them.
    """

    dim: int = 1024
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    head_dim: int = 256
    use_ge: bool = True
    # training (read by the task; recorded with the model)
    temperature: float = 0.07
    lambda_cyclip: float = 10.0
    lambda_local: float = 1.0
    lambda_global: float = 1.0
    lambda_pcc: float = 10.0
    k_expression: int = 30
    k_image: int = 2
    min_cluster_members: int = 4
    min_clusters: int = 8
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_genes", "dim", "heads", "head_dim", "input_px", "k_expression"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HAGE {name} must be at least 1, got {getattr(self, name)!r}")
        if self.dim % self.heads:
            raise ValueError(f"HAGE dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.temperature <= 0 or self.patch_um <= 0:
            raise ValueError("HAGE temperature and patch_um must be positive")

    def to_dict(self) -> dict[str, Any]:
        return self._tuples_as_lists(asdict(self))


class GeneEmbeddingAttention(nn.Module):
    """GE (paper §2.2): the image query attends over the gene tokens, then a residual MLP.

    ``forward(q (N, d), genes (G, d)) → z (N, d)``; :meth:`attention` is the attention term
    alone (multi-head ``Attn(LN(q), LN(K), LN(V))``, before the residual), which with one
    gene equals ``W_o·(W_v·LN(g) + b_v) + b_o`` whatever the query (tested). The gene keys
    and values are projected once per call and shared by every spot (``O(N·G·d)``, not
    ``O(N·G·d²)``).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, use_ge: bool):
        super().__init__()
        self.use_ge = use_ge
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        hidden = round(dim * mlp_ratio)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def attention(self, q: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        n, d = q.shape
        h, dh = self.heads, d // self.heads
        kv = self.norm_kv(genes)
        k = self.k_proj(kv).view(-1, h, dh).transpose(0, 1)  # (h, G, dh)
        v = self.v_proj(kv).view(-1, h, dh).transpose(0, 1)
        query = self.q_proj(self.norm_q(q)).view(n, h, dh).transpose(0, 1)  # (h, N, dh)
        weights = torch.softmax(query @ k.transpose(1, 2) / dh**0.5, dim=-1)  # (h, N, G)
        out = self.attn_drop(weights) @ v  # (h, N, dh)
        return self.out_proj(out.transpose(0, 1).reshape(n, d))

    def forward(self, q: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        h = self.attention(q, genes) + q if self.use_ge else q
        return h + self.mlp(self.norm_mlp(h))


def _mlp3(n_in: int, dim: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n_out)
    )


@register_model("hage")
class HAGE(FrozenPatchModel):
    """HAGE — gene embeddings cross-attended into frozen image features (MICCAI 2025)."""

    config_class = HageConfig
    display_name = "HAGE"

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    gene_vectors: torch.Tensor
    gene_learned: torch.Tensor

    def __init__(self, config: HageConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or HageConfig()
        assert cfg.image_dim is not None and cfg.gene_dim is not None
        self.genes: list[str] = []
        self._precision = "fp32"
        self.encoder = self.frozen_encoder().build()
        D, dg, d, G = int(cfg.image_dim), int(cfg.gene_dim), cfg.dim, cfg.n_genes
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))
        self.register_buffer("gene_vectors", torch.zeros(G, dg))
        self.register_buffer("gene_learned", torch.zeros(G, dtype=torch.bool))
        #: trainable offsets of the ``learned`` genes' vectors (zero elsewhere, masked)
        self.gene_offsets = nn.Parameter(torch.zeros(G, dg))
        self.image_proj = nn.Linear(D, d)  # W_x
        self.gene_proj = nn.Linear(dg, d)  # W_g
        self.ge = GeneEmbeddingAttention(d, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.use_ge)
        self.pred_trunk = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.head_dim), nn.GELU()
        )
        self.head = nn.Linear(cfg.head_dim, G)
        self.expression_encoder = _mlp3(G, d, d)  # EE (training only)

    # ------------------------------------------------------------------ construction
    @classmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny HAGE: ResNet18 levels 1–2 on 32 px patches, d = 16, 2 heads, C = 8, three
        genes with 6-d vectors from a file (set by :meth:`contract_instance`)."""
        return {
            "backbone": "resnet18",
            "pretrained": None,
            "out_indices": [1, 2],
            "patch_um": 64.0,
            "input_px": 32,
            "n_genes": 3,
            "gene_dim": 6,
            "dim": 16,
            "heads": 2,
            "head_dim": 8,
            "dropout": 0.0,
        }

    def set_feature_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """The standardisation of the frozen features (the training spots' statistics)."""
        if not self.config.standardize:
            return
        std = np.where(np.asarray(std) > 1e-6, std, 1.0)
        self.feature_mean.copy_(torch.as_tensor(np.asarray(mean, np.float32)))
        self.feature_std.copy_(torch.as_tensor(np.asarray(std, np.float32)))

    # ------------------------------------------------------------------ interface
    @property
    def feature_dim(self) -> int:
        return int(self.config.head_dim)

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        W = self.head.weight.detach().double().cpu().numpy().T
        b = self.head.bias.detach().double().cpu().numpy()
        return check_gene_head(W, b, self.feature_dim, self.config.n_genes, who="HAGE")

    # ------------------------------------------------------------------ forward
    def gene_tokens(self) -> torch.Tensor:
        """``(G, d)``: ``W_g`` of the gene vectors (learned rows with their offsets)."""
        vectors = self.gene_vectors + self.gene_offsets * self.gene_learned[:, None]
        return self.gene_proj(vectors)

    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """``z^i (N, d)`` of raw frozen features ``x (N, D)`` (unnormalised)."""
        x = (x.float() - self.feature_mean) / self.feature_std
        return self.ge(self.image_proj(x), self.gene_tokens())

    def expression_embedding(self, y: torch.Tensor) -> torch.Tensor:
        """``z^e (N, d)`` of normalised expression ``y (N, G)`` (EE; training only)."""
        return self.expression_encoder(y.float())

    def features_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, C)``: ``f_Pred`` up to its last Linear (what the gene head reads)."""
        return self.pred_trunk(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``ŷ (N, G)`` of raw frozen features ``x (N, D)``: ``f_Pred(f_GE(x, G))``."""
        return self.head(self.features_from_embedding(self.image_embedding(x)))

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        """``(N, C)`` features from ``spots.features`` (raw frozen-encoder features) when
        given, else from ``spots.images`` (``(N, 3, p, p)`` RGB in [0, 1]) through the frozen
        encoder."""
        if spots.features is not None:
            raw = torch.as_tensor(spots.features).to(self.head.weight.device)
        elif spots.images is not None:
            raw = self.encode_images(torch.as_tensor(spots.images))
        else:
            raise ValueError("encode_spots needs images or features")
        return self.features_from_embedding(self.image_embedding(raw))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen encoder (and ``gene_offsets`` when no gene is learned)."""
        learned = bool(self.gene_learned.any())
        return [
            p
            for name, p in self.named_parameters()
            if not name.startswith("encoder.") and (name != "gene_offsets" or learned)
        ]
