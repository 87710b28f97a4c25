"""DKAN: gene-semantic, multi-level image embedding and dual-path contrastive alignment (AAAI).

The paper (``../shared/seeds/dkan_aaai.txt``; design notes *spot-models* §2, which also
describe the released code): a spot is seen at three levels — its **patch** (tokens of a CNN
map), its **region** (the 5 × 5 contiguous patches around it, with a mask for patches off
the tissue and a relative-position bias) and the **slide** (a global encoder over every
patch of the section, with a PEG-style depthwise convolution over the patch lattice). The
slide-level token queries the patch and region tokens through one shared cross-attention
block; their sum (layer-normalised) is ``f^img``. Gene **semantics**: the text embeddings
of the genes' descriptions go through a small transformer over the ``G`` gene tokens
(``f^text``). **Image path**: the gene tokens query the image embedding → ``e^ti (B, G, d)``,
and ``Ŷ = Linear(d, 1)(e^ti)`` per gene; **expression path** (training only): the measured
expression embedded per gene → ``e^te``; InfoNCE aligns ``e^ti`` with ``e^te``. Side heads
predict from ``f^img``, the mean patch token, the mean region token and the slide token and
are distilled towards ``Ŷ`` (the task: :mod:`napari_histoexpress.training.tasks.dkan`).

The section is one **patch lattice** — the lattice the whole-slide predictor lays
(:func:`~napari_histoexpress.geometry.lattice_grid`; nodes ``pitch_um``
apart, default half the patch side), so training and prediction see the same geometry: the
region of a spot is the 5 × 5 nodes ``step = round(patch_um / pitch_um)`` nodes apart around
the node holding it (contiguous, non-overlapping patches, as the paper's 1,120 px region of
224 px patches), and the slide level is the global encoder over the section's tissue nodes.

What the paper leaves open, and what this implementation chose (all :class:`DkanConfig`
fields):

* **Frozen features** (paper: a trainable ResNet18 on 224 px for the patch tokens, frozen
  UNI for region and slide; neither is obtainable offline, and training a CNN end to end is
  not CPU-sized): one frozen encoder for every level, the ridge baseline's and HAGE's
  (ImageNet EfficientNet-Lite0 from the offline wheel, 331.5 µm patches at 224 px), pooled
  as ``"mean+tokens{token_grid}"`` (:mod:`.feature_cache`): the mean-pooled levels (512-d,
  region and slide tokens) and the last level's map pooled to ``token_grid`` ×
  ``token_grid`` patch tokens (320-d each; ``token_grid`` = 3 → 9 tokens, a memory-sized
  default: the paper's ResNet18 gives 7 × 7 = 49, ``token_grid=7``). Trainable linear
  projections to ``d`` sit on top; features are standardised with the training statistics
  (buffers), as for HAGE.
* **Sizes** (paper, her2st: d = 1024, region 4 layers, global 1 + 4 layers, text 3 layers,
  image path 4 layers, expression path 3 layers, dropout 0.3 / 0.4): CPU-sized defaults
  ``dim`` = 128, 4 heads, ``region_layers`` 2, ``global_layers`` (1, 1), ``text_layers`` 1,
  ``image_path_layers`` 1, ``expression_layers`` 1, ``mlp_ratio`` 2, dropout 0.1; the
  paper's are one ``--model-config`` away (README). Blocks are pre-LayerNorm.
* **Attention of the image path**: ``kv="tokens"`` (default) — the gene queries attend over
  ``[f^img; patch tokens; region tokens]``, what the paper's text describes (attention over
  the image's parts); ``kv="fused"`` reproduces the released code, whose key/value is the
  single token ``f^img`` — the softmax over one key is 1, so the "attention" adds the same
  ``W_o·W_v·LN(f^img)`` to every gene token whatever the query (tested).
* **Expression embedding**: ``P·y_g + f^text_g`` per gene (the scalar expression projected
  to ``d`` plus the gene's text token, so the expression path knows which gene a value
  belongs to), then ``f^exp = LN(Py + Drop(W·GELU(Py)))`` as the paper, and
  ``expression_layers`` self-attention blocks over the genes.
* **Output**: ``Linear(d, 1)`` shared across genes (paper) plus a per-gene bias initialised
  to the training mean (so training starts at the mean).
* ``use_text=False`` (the "without text" ablation): learned gene tokens instead of the
  description embeddings.
* Gene vectors: ``gene_encoder`` (default the MiniLM embeddings of the bundled descriptions;
  ``file:PATH``/``hf:ORG/NAME`` as for HAGE), ``gene_missing`` as for HAGE; kept as a buffer.

The model interface (:class:`~.base.SpotModel`, slide context)
----------------------------------------------------------------
DKAN needs the whole section, so it is a two-pass model (:attr:`needs_slide_context`):
pass 1 :meth:`encode_spots` returns a node's raw frozen features (pooled + tokens,
``node_feature_dim``), pass 2 :meth:`slide_context` runs the global encoder over the
section's tissue nodes (:attr:`~.base.LatticeNodes.tissue`) and the rest per node, in
chunks of ``inference_chunk`` nodes (the global attention in query blocks), so memory is
the nodes' features plus one chunk. ``Ŷ`` is nonlinear per gene, so no factorisation with
``C < G`` exists: the store keeps ``C = G`` channels with the identity head (``store=
"genes"``, default); ``store="image_head"`` keeps ``f^img`` (``C = d``) with the linear
``Ŷ_img`` head instead (cheaper, the side head's accuracy). Zero-shot: not claimed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import LatticeNodes, SpotInputs, check_gene_head
from .frozen_spot import FrozenPatchModel, FrozenPatchSettings
from .registry import register_model
from .transformer_blocks import Block as _Block
from .transformer_blocks import attention

__all__ = [
    "DKAN",
    "DkanConfig",
    "PositionalConv",
    "SectionContext",
    "attention",
]

KV_MODES = ("tokens", "fused")
STORE_MODES = ("genes", "image_head")
#: InfoNCE modes (``training.contrastive_losses.info_nce``) for ``(B, G, d)`` embeddings
CONTRASTIVE_MODES = ("across_spots", "per_gene", "flat")
#: attention logits per block of queries at inference (values): 16 M floats
_ATTENTION_BLOCK = 1 << 24


@dataclass
class DkanConfig(FrozenPatchSettings):
    """Settings of :class:`DKAN` (the module docstring explains each choice)."""

    token_grid: int = 3
    # lattice
    pitch_um: float | None = None
    region_size: int = 5
    # genes
    use_text: bool = True
    # sizes (None: resolved from the encoder)
    token_dim: int | None = None
    dim: int = 128
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    region_layers: int = 2
    global_layers: tuple[int, int] = (1, 1)
    text_layers: int = 1
    image_path_layers: int = 1
    expression_layers: int = 1
    kv: str = "tokens"
    store: str = "genes"
    inference_chunk: int = 256
    # training (read by the task; recorded with the model)
    temperature: float = 0.1
    contrastive: str = "across_spots"
    use_contrastive: bool = True
    lambda_distill: float = 0.3
    contrastive_ratio: float = 3.0
    adaptive_weights: bool = True
    smooth_targets: bool = False
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        from .feature_cache import encoder_channels

        super().__post_init__()
        self.global_layers = (int(self.global_layers[0]), int(self.global_layers[1]))
        if self.pitch_um is None:
            self.pitch_um = float(self.patch_um) / 2.0
        self.pitch_um = float(self.pitch_um)
        for name, allowed in (("kv", KV_MODES), ("store", STORE_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"DKAN {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.contrastive not in CONTRASTIVE_MODES:
            raise ValueError(
                f"DKAN contrastive must be one of {CONTRASTIVE_MODES}, got {self.contrastive!r}"
            )
        for name in ("n_genes", "dim", "heads", "input_px", "token_grid", "inference_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DKAN {name} must be at least 1, got {getattr(self, name)!r}")
        if self.region_size < 1 or self.region_size % 2 == 0:
            raise ValueError(f"DKAN region_size must be odd and positive, got {self.region_size}")
        if self.dim % self.heads:
            raise ValueError(f"DKAN dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if not (self.temperature > 0 and self.patch_um > 0 and self.pitch_um > 0):
            raise ValueError("DKAN temperature, patch_um and pitch_um must be positive")
        if not 0.0 <= self.lambda_distill <= 1.0:
            raise ValueError(f"DKAN lambda_distill must be in [0, 1], got {self.lambda_distill}")
        if self.token_dim is None:
            channels = encoder_channels(self.backbone, self.out_indices, self.backbone_kwargs)
            self.token_dim = int(channels[-1])

    @property
    def region_step(self) -> int:
        """Lattice nodes between neighbouring region patches: ``round(patch_um / pitch_um)``."""
        assert self.pitch_um is not None
        return max(1, round(self.patch_um / self.pitch_um))

    @property
    def n_tokens(self) -> int:
        return self.token_grid**2

    @property
    def node_dim(self) -> int:
        """Raw frozen features of a node: pooled levels + ``token_grid²`` tokens."""
        assert self.image_dim is not None and self.token_dim is not None
        return int(self.image_dim) + self.n_tokens * int(self.token_dim)

    def to_dict(self) -> dict[str, Any]:
        return self._tuples_as_lists(asdict(self), "global_layers")


class PositionalConv(nn.Module):
    """PEGH: a depthwise 3 × 3 convolution over the lattice, residual: node tokens are
    scattered onto their ``(row, col)`` (shifted so the smallest is 0: a shifted lattice
    gives the same output), convolved, gathered back and added. A zero kernel (and bias)
    is the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(
        self, x: torch.Tensor, rc: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x (N, d)`` tokens at lattice cells ``rc (N, 2)``; ``keep (N,)``: the tokens the
        convolution reads (the others are zeros on the grid: nothing leaks from them)."""
        rc = rc.to(x.device).long()
        rc = rc - rc.min(dim=0).values
        rows, cols = int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1
        grid = x.new_zeros(rows * cols, x.shape[1])
        flat = rc[:, 0] * cols + rc[:, 1]
        grid = grid.index_copy(0, flat, x if keep is None else x * keep[:, None].to(x.dtype))
        grid = grid.T.reshape(1, x.shape[1], rows, cols)
        out = self.conv(grid).reshape(x.shape[1], rows * cols).T
        return x + out[flat]


@dataclass
class SectionContext:
    """What the slide level gives every spot of one section (:meth:`DKAN.section_context`).

    ``global_tokens (N, d)``: the global encoder's row of each node; ``region_tokens (N,
    d)``: each node's projected pooled feature (a region token); ``tissue (N,)``; ``index``
    ``(rows, cols)`` int64: the node at each lattice cell of the nodes' bounding box (-1:
    none), ``origin`` ``(2,)``: the box's first ``(row, col)``."""

    global_tokens: torch.Tensor
    region_tokens: torch.Tensor
    tissue: torch.Tensor
    index: torch.Tensor
    origin: torch.Tensor

    def nodes_at(self, rc: torch.Tensor) -> torch.Tensor:
        """Node indices at lattice cells ``rc (…, 2)`` (-1 off the box or without a node)."""
        local = rc.long() - self.origin
        rows, cols = self.index.shape
        inside = (local[..., 0] >= 0) & (local[..., 1] >= 0)
        inside &= (local[..., 0] < rows) & (local[..., 1] < cols)
        flat = local[..., 0].clamp(0, rows - 1) * cols + local[..., 1].clamp(0, cols - 1)
        found = self.index.reshape(-1)[flat]
        return torch.where(inside, found, torch.full_like(found, -1))


@register_model("dkan")
class DKAN(FrozenPatchModel):
    """DKAN — dual-path knowledge-augmented contrastive alignment (AAAI)."""

    config_class = DkanConfig
    display_name = "DKAN"
    input_context = "section"

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    token_mean: torch.Tensor
    token_std: torch.Tensor
    gene_vectors: torch.Tensor
    gene_learned: torch.Tensor
    region_offsets: torch.Tensor
    region_rel: torch.Tensor

    def __init__(self, config: DkanConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DkanConfig()
        assert cfg.image_dim is not None and cfg.token_dim is not None and cfg.gene_dim is not None
        self.genes: list[str] = []
        self._precision = "fp32"
        self.encoder = self.frozen_encoder().build()
        D, Dt, dg, d, G = (
            int(cfg.image_dim),
            int(cfg.token_dim),
            int(cfg.gene_dim),
            cfg.dim,
            cfg.n_genes,
        )
        blk = (cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))
        self.register_buffer("token_mean", torch.zeros(Dt))
        self.register_buffer("token_std", torch.ones(Dt))
        self.register_buffer("gene_vectors", torch.zeros(G, dg))
        self.register_buffer("gene_learned", torch.zeros(G, dtype=torch.bool))
        self.gene_offsets = nn.Parameter(torch.zeros(G, dg))
        # image levels
        self.patch_proj = nn.Linear(Dt, d)
        self.region_proj = nn.Linear(D, d)
        self.global_proj = nn.Linear(D, d)
        R = cfg.region_size
        self.region_bias = nn.Parameter(torch.zeros(cfg.heads, (2 * R - 1) ** 2))
        self.region_encoder = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.region_layers))
        self.global_pre = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.global_layers[0]))
        self.peg = PositionalConv(d)
        self.global_post = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.global_layers[1]))
        self.global_norm = nn.LayerNorm(d)
        self.fusion = _Block(d, *blk)  # one shared CrossEncoder
        self.fusion_norm = nn.LayerNorm(d)
        # side heads
        self.head_img = nn.Linear(d, G)
        self.head_patch = nn.Linear(d, G)
        self.head_region = nn.Linear(d, G)
        self.head_global = nn.Linear(d, G)
        # genes
        self.text_proj = nn.Linear(dg, d)
        self.gene_tokens_learned = nn.Parameter(torch.randn(G, d) * 0.02)
        self.text_encoder = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.text_layers))
        self.image_path = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.image_path_layers))
        self.expr_in = nn.Linear(1, d)
        self.expr_mlp = nn.Linear(d, d)
        self.expr_drop = nn.Dropout(cfg.dropout)
        self.expr_norm = nn.LayerNorm(d)
        self.expression_path = nn.ModuleList(_Block(d, *blk) for _ in range(cfg.expression_layers))
        self.out = nn.Linear(d, 1)
        self.gene_bias = nn.Parameter(torch.zeros(G))
        offs = torch.arange(R) - R // 2
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        self.register_buffer(
            "region_offsets", torch.stack([oy.ravel(), ox.ravel()], 1), persistent=False
        )
        rel = self.region_offsets[:, None, :] - self.region_offsets[None, :, :] + (R - 1)
        self.register_buffer(
            "region_rel", rel[..., 0] * (2 * R - 1) + rel[..., 1], persistent=False
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny DKAN: ResNet18 levels 1–2 on 32 px patches, 2 × 2 tokens, d = 16, three
        genes with 6-d vectors (set by :meth:`contract_instance`)."""
        return {
            "backbone": "resnet18",
            "pretrained": None,
            "out_indices": [1, 2],
            "patch_um": 64.0,
            "input_px": 32,
            "token_grid": 2,
            "region_size": 3,
            "n_genes": 3,
            "gene_dim": 6,
            "dim": 16,
            "heads": 2,
            "dropout": 0.0,
        }

    def set_feature_statistics(self, features: np.ndarray) -> None:
        """Standardisation of the raw node features ``(N, node_dim)`` of the training
        sections: per channel of the pooled part, per channel of the tokens."""
        if not self.config.standardize:
            return
        D, Dt = int(self.config.image_dim or 0), int(self.config.token_dim or 0)
        pooled = features[:, :D]
        tokens = features[:, D:].reshape(-1, Dt)

        def put(mean: torch.Tensor, std: torch.Tensor, x: np.ndarray) -> None:
            s = x.std(axis=0)
            mean.copy_(torch.as_tensor(x.mean(axis=0), dtype=torch.float32))
            std.copy_(torch.as_tensor(np.where(s > 1e-6, s, 1.0), dtype=torch.float32))

        put(self.feature_mean, self.feature_std, pooled)
        put(self.token_mean, self.token_std, tokens)

    # ------------------------------------------------------------------ interface
    @property
    def feature_dim(self) -> int:
        return self.config.n_genes if self.config.store == "genes" else self.config.dim

    @property
    def needs_slide_context(self) -> bool:
        return True

    @property
    def node_feature_dim(self) -> int:
        return self.config.node_dim

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        G = self.config.n_genes
        if self.config.store == "genes":
            W, b = np.eye(G), np.zeros(G)
        else:
            W = self.head_img.weight.detach().double().cpu().numpy().T
            b = self.head_img.bias.detach().double().cpu().numpy()
        return check_gene_head(W, b, self.feature_dim, G, who="DKAN")

    # ------------------------------------------------------------------ frozen encoder
    @property
    def pooling(self) -> str:
        """Pooled levels + the last level's ``token_grid²`` tokens (``"mean+tokensT"``)."""
        return f"mean+tokens{self.config.token_grid}"

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        """Pass 1: ``(N, node_dim)`` raw frozen features of the patches (``spots.features``
        passed through, else ``spots.images`` encoded)."""
        if spots.features is not None:
            return torch.as_tensor(spots.features).to(self.feature_mean.device).float()
        if spots.images is None:
            raise ValueError("encode_spots needs images or features")
        return self.encode_images(torch.as_tensor(spots.images))

    # ------------------------------------------------------------------ levels
    def _pooled(self, raw: torch.Tensor) -> torch.Tensor:
        D = int(self.config.image_dim or 0)
        return (raw[:, :D].float() - self.feature_mean) / self.feature_std

    def patch_tokens(self, raw: torch.Tensor) -> torch.Tensor:
        """``(M, T, d)`` projected patch tokens of raw node features ``(M, node_dim)``."""
        D, Dt = int(self.config.image_dim or 0), int(self.config.token_dim or 0)
        tok = raw[:, D:].float().reshape(raw.shape[0], self.config.n_tokens, Dt)
        return self.patch_proj((tok - self.token_mean) / self.token_std)

    def section_context(self, nodes: LatticeNodes, *, block: int | None = None) -> SectionContext:
        """The slide level of one section: the global encoder over its tissue nodes (every
        node a query; non-tissue nodes are no keys), and the nodes' region tokens."""
        pooled = self._pooled(nodes.features)
        n = pooled.shape[0]
        tissue = (
            torch.ones(n, dtype=torch.bool, device=pooled.device)
            if nodes.tissue is None
            else nodes.tissue.to(pooled.device).bool()
        )
        mask = tissue if not bool(tissue.all()) else None
        x = self.global_proj(pooled)
        if mask is not None:  # off-tissue nodes are queries only: their features reach nothing
            x = x * mask[:, None]
        rc = nodes.grid_rc.to(pooled.device).long()
        for layer in self.global_pre:
            x = layer(x, key_mask=mask, block=block)
        x = self.peg(x, rc, mask)
        for layer in self.global_post:
            x = layer(x, key_mask=mask, block=block)
        origin = rc.min(dim=0).values
        local = rc - origin
        rows, cols = int(local[:, 0].max()) + 1, int(local[:, 1].max()) + 1
        index = torch.full((rows * cols,), -1, dtype=torch.long, device=rc.device)
        index[local[:, 0] * cols + local[:, 1]] = torch.arange(n, device=rc.device)
        return SectionContext(
            global_tokens=self.global_norm(x),
            region_tokens=self.region_proj(pooled),
            tissue=tissue,
            index=index.reshape(rows, cols),
            origin=origin,
        )

    def spot_levels(
        self, raw: torch.Tensor, rc: torch.Tensor, ctx: SectionContext
    ) -> dict[str, torch.Tensor]:
        """The image embedding of ``M`` spots: raw features ``(M, node_dim)`` of their own
        patches and the lattice cells ``rc (M, 2)`` holding them in ``ctx``'s section.

        Returns ``f_img (M, d)``, the side heads ``y_img``, ``y_patch``, ``y_region``,
        ``y_global`` ``(M, G)``, and ``patch (M, T, d)``, ``region (M, R², d)``,
        ``region_mask (M, R²)`` for the image path."""
        cfg = self.config
        rc = rc.to(raw.device).long()
        node = ctx.nodes_at(rc)  # (M,)
        cells = rc[:, None, :] + self.region_offsets[None] * cfg.region_step  # (M, R², 2)
        idx = ctx.nodes_at(cells)
        valid = idx >= 0
        valid &= ctx.tissue[idx.clamp(min=0)]
        centre = (cfg.region_size**2) // 2
        valid[:, centre] = True  # the spot's own patch always counts
        own = self._pooled(raw)
        region = ctx.region_tokens[idx.clamp(min=0)]
        region[:, centre] = self.region_proj(own)
        region = region * valid[..., None]  # masked tokens carry nothing (and are no keys)
        bias = self.region_bias[:, self.region_rel]  # (h, R², R²)
        for layer in self.region_encoder:
            region = layer(region, key_mask=valid, bias=bias)
        has = node >= 0
        glob = torch.where(
            has[:, None], ctx.global_tokens[node.clamp(min=0)], ctx.global_tokens.mean(0)
        )
        patch = self.patch_tokens(raw)
        q = glob[:, None, :]
        fused_p = self.fusion(q, patch)[:, 0]
        fused_r = self.fusion(q, region, key_mask=valid)[:, 0]
        f_img = self.fusion_norm(fused_p + fused_r)
        w = valid.float()[..., None]
        region_mean = (region * w).sum(1) / w.sum(1)
        return {
            "f_img": f_img,
            "y_img": self.head_img(f_img),
            "y_patch": self.head_patch(patch.mean(1)),
            "y_region": self.head_region(region_mean),
            "y_global": self.head_global(glob),
            "patch": patch,
            "region": region,
            "region_mask": valid,
        }

    # ------------------------------------------------------------------ genes
    def text_tokens(self) -> torch.Tensor:
        """``f^text (G, d)``: the gene tokens after the text transformer."""
        if self.config.use_text:
            vectors = self.gene_vectors + self.gene_offsets * self.gene_learned[:, None]
            x = self.text_proj(vectors)
        else:
            x = self.gene_tokens_learned
        for layer in self.text_encoder:
            x = layer(x)
        return x

    def image_embedding(
        self, levels: Mapping[str, torch.Tensor], text: torch.Tensor
    ) -> torch.Tensor:
        """``e^ti (M, G, d)``: the gene tokens query the image (see ``kv``)."""
        f_img = levels["f_img"][:, None, :]
        m = f_img.shape[0]
        if self.config.kv == "fused":
            kv, mask = f_img, None
        else:
            kv = torch.cat([f_img, levels["patch"], levels["region"]], dim=1)
            ones = torch.ones(m, 1 + levels["patch"].shape[1], dtype=torch.bool, device=kv.device)
            mask = torch.cat([ones, levels["region_mask"]], dim=1)
        x = text[None].expand(m, -1, -1)
        for layer in self.image_path:
            x = layer(x, kv, key_mask=mask)
        return x

    def expression_embedding(self, y: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``e^te (M, G, d)`` of normalised expression ``y (M, G)`` (training only)."""
        py = self.expr_in(y.float()[..., None]) + text[None]
        x = self.expr_norm(py + self.expr_drop(self.expr_mlp(F.gelu(py))))
        for layer in self.expression_path:
            x = layer(x)
        return x

    def predict(self, e_ti: torch.Tensor) -> torch.Tensor:
        """``Ŷ (M, G)`` = ``Linear(d, 1)(e^ti)`` + the gene's bias."""
        return self.out(e_ti).squeeze(-1) + self.gene_bias

    # ------------------------------------------------------------------ pass 2
    @property
    def lattice_pitch_um(self) -> float:
        assert self.config.pitch_um is not None
        return float(self.config.pitch_um)

    def slide_context(self, nodes: LatticeNodes) -> torch.Tensor:
        """Pass 2: ``(N, C)`` store features of every node (``Ŷ`` for ``store="genes"``,
        ``f^img`` for ``"image_head"``), in chunks of ``inference_chunk`` nodes."""
        return self.spot_context(nodes.features, nodes.grid_rc, nodes)

    def spot_context(
        self, features: torch.Tensor, grid_rc: torch.Tensor, nodes: LatticeNodes
    ) -> torch.Tensor:
        """``(M, C)`` store features of spots with raw features ``(M, node_dim)`` in lattice
        cells ``grid_rc`` of the section whose ``nodes`` are given (chunked as
        :meth:`slide_context`)."""
        ctx = self.section_context(nodes, block=_ATTENTION_BLOCK)
        text = self.text_tokens() if self.config.store == "genes" else None
        raw = features.to(ctx.global_tokens.device)
        rc = grid_rc.to(raw.device)
        out = []
        step = int(self.config.inference_chunk)
        for i in range(0, len(raw), step):
            levels = self.spot_levels(raw[i : i + step], rc[i : i + step], ctx)
            if text is None:
                out.append(levels["f_img"].float())
            else:
                out.append(self.predict(self.image_embedding(levels, text)).float())
        return torch.cat(out)

    # ------------------------------------------------------------------ housekeeping
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen encoder (gene offsets only when a gene is learned, the
        learned gene tokens only without text)."""
        if self.config.use_text:
            skip = {"gene_tokens_learned"}
            if not bool(self.gene_learned.any()):
                skip.add("gene_offsets")
        else:
            skip = {"text_proj.weight", "text_proj.bias", "gene_offsets"}
        return [
            p
            for name, p in self.named_parameters()
            if not name.startswith("encoder.") and name not in skip
        ]

    def section_nodes(
        self,
        features: Sequence[np.ndarray] | np.ndarray,
        grid_rc: np.ndarray,
        tissue: np.ndarray | None = None,
    ) -> LatticeNodes:
        """:class:`~.base.LatticeNodes` of raw node features (positions unused by DKAN)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        rc = torch.as_tensor(np.asarray(grid_rc, dtype=np.int64))
        return LatticeNodes(
            features=x.to(self.feature_mean.device),
            positions_um=rc.double(),
            grid_rc=rc,
            lattice_shape=(int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1),
            pitch_um=float(self.config.pitch_um or 0.0),
            tissue=None if tissue is None else torch.as_tensor(np.asarray(tissue, bool)),
        )
