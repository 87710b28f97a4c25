"""ALIGN-ST: nuclei-aware image features aligned with gene descriptions, for zero-shot genes.

The paper (MICCAI 2025, ``../shared/seeds/align-st_miccai2025.txt``; design notes
*spot-models* §3). A slide's N patches are one sample:

* **NDA-IFE** (Eqs. 1–2): image features ``h^g`` of each patch and a five-layer 3 × 3
  conv + BN + ReLU encoder of the patch's binary **nuclei mask** (``h^s``), fused by
  cross-attention with ``h^g`` as query and a residual: ``H = Attn(h^g, h^s, h^s) + h^g``.
* **PGGP** (Eqs. 3–5): an image transformer over ``[P^vis; H_1..H_N]`` and, per gene, a text
  transformer over ``[CLS; P^txt; Linear(T_c)]`` (``T_c``: the token sequence of the gene's
  description); before each text layer ``l`` the text prompts are the gated fusion
  ``P^txt_l = α·f_proj(P^vis_l) + (1 − α)·P^txt_{l−1}``, α = 0.2. The gene embedding ``G_c``
  is the final CLS token — it **depends on the slide** through the visual prompts.
* **ASIG** (Eqs. 6–8): ``Z = Linear(G)``; each gene keeps its top-k (k = 4) other genes by
  ``softmax(ZZᵀ/√D^e)``; ``β_ij = softmax_j(Σ_d Z_jd·tanh(Z_i + Z_j)_d)``; ``F^g_i =
  W_f[Z_i ‖ Σ_j β_ij Z_j]``.
* **Prediction** (Eq. 9): a graph over the patches (the 8 nearest by position ∪ the 8 most
  similar by feature cosine), two mean-aggregation GraphSAGE layers (``torch_geometric``'s
  ``SAGEConv``) → ``F^v``; ``ŷ_ic = F^v_i · F^g_c``. Loss MSE + PCC (the task,
  :mod:`napari_histoexpress.training.tasks.align_st`).

What the paper leaves open, and what this implementation chose (every choice an
:class:`AlignStConfig` field):

* **Frozen image features** (paper: a trainable ResNet-18; not CPU-sized): the frozen
  encoder HAGE and DKAN use (ImageNet EfficientNet-Lite0 from the offline wheel, 331.5 µm
  patches at 224 px, levels mean-pooled, standardised with the training statistics) and a
  trainable ``Linear`` to ``dim`` — ``h^g``.
* **Nuclei masks** (paper: Hover-net): :mod:`napari_histoexpress.nuclei`'s weight-free
  segmenter (``segmenter``, pluggable by name) on the same patch, summarised as the nuclear
  fraction of a ``nuclei_grid`` × ``nuclei_grid`` grid (32 × 32, ~10 µm cells: an
  area-averaged mask) and stored with the frozen features (pooling ``"mean+nucleiM"``, so the
  feature cache keeps it per section). ``F_conv``: five 3 × 3 conv + BN + ReLU with channels
  ``mask_channels`` + ``dim`` and ``mask_strides`` (1, 2, 2, 2, 1): a 4 × 4 map whose 16
  cells are the keys/values of Eq. 2 (Eq. 2 with a single vector key is degenerate: the
  softmax over one key is 1; the spec recommends the map's cells).
* **Widths** (spec: D^h = D^t = 512, D^e = 256, 8 heads, 4 + 4 layers): CPU-sized ``dim`` =
  128, ``embed_dim`` = 64, 4 heads, ``image_layers`` = ``text_layers`` = 2, pre-LayerNorm
  blocks, dropout 0.1. ``P^vis_l`` is the prompt part of the image stream **after** image
  layer ``l`` (so the first text layer already sees the slide); ``f_proj`` one ``Linear``
  shared by the layers; ``P^txt_0`` learnable.
* **Text**: the token sequences of the genes' descriptions from the gene-knowledge layer
  (offline: MiniLM's last hidden states, 384-d, float16, at most ``max_tokens`` = 64 tokens;
  any HF model by ``gene_encoder``), kept in the checkpoint as a buffer.
* **ASIG**: top-k excludes the gene itself, ``k = min(top_k, G − 1)``; the gene graph is over
  the genes being predicted; ``W_f`` without bias (Eq. 8). ``use_asig=False``: ``F^g = Z``.
* **Patch graph**: the feature neighbours by cosine of the standardised **frozen** features
  (fixed per section, so training caches the graph); edges point from neighbour to node;
  only tissue nodes send messages on a whole slide.
* **Head**: ``b = 0`` (Eq. 9 has no bias).
* **Genes per step** (``genes_per_step``, default ``None``: all): a training step may embed
  a random subset of the training genes (the loss and the gene graph over them) — the text
  stream's cost grows with the genes, and the zero-shot "rank" split trains on 750.
* **Ablations**: ``use_nuclei=False`` (no NDA-IFE nuclei stream: ``H = h^g``),
  ``use_prompts=False`` (no prompts in either stream), ``use_asig=False``; ``alpha=0`` keeps
  the prompts but cuts the image → text fusion (the paper's "V2T").

The model interface (:class:`~.base.SpotModel`)
-----------------------------------------------
The graph and the prompts need the whole slide: :attr:`needs_slide_context`. The slide's
nodes are its **measured spots** in training and spot evaluation (the paper's patches;
``InputSpec.context == "spots"``) and the **lattice nodes** of a whole-slide prediction, laid
at the training spots' pitch (``pitch_um``, set by the task from the training data) so the
graph has the geometry it was trained on. Pass 1 (:meth:`encode_spots`) gives each node's raw
frozen features + nuclei grid; pass 2 (:meth:`slide_context`) runs NDA-IFE, the image stream
(attention in query blocks of at most ``inference_block`` logits) and the graph → ``F^v``
(``C = embed_dim``); :meth:`slide_gene_head` gives that slide's head ``W = F^gᵀ``, ``b = 0``
(Eq. 9 *is* the store's linear head). A gene never trained on needs only its description:
text stream with the slide's prompts → ASIG → one more column (:meth:`gene_columns`).
"""

from __future__ import annotations

import itertools
import math
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
from .transformer_blocks import Block, MultiHead

__all__ = ["AlignST", "AlignStConfig", "SlideStream", "asig_aggregate", "gated_prompts"]


@dataclass
class AlignStConfig(FrozenPatchSettings):
    """Settings of :class:`AlignST` (the module docstring explains each choice)."""

    # nuclei stream
    use_nuclei: bool = True
    segmenter: str = "hed-watershed"
    nuclei_grid: int = 32
    mask_channels: tuple[int, ...] = (16, 32, 64, 64)
    mask_strides: tuple[int, ...] = (1, 2, 2, 2, 1)
    # widths
    dim: int = 128
    embed_dim: int = 64
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    image_layers: int = 2
    text_layers: int = 2
    # prompts
    use_prompts: bool = True
    n_prompts: int = 2
    alpha: float = 0.2
    # genes
    max_tokens: int = 64
    use_asig: bool = True
    top_k: int = 4
    # patch graph
    sage_layers: int = 2
    knn_spatial: int = 8
    knn_feature: int = 8
    # lattice of whole slides (None: the task sets the training spots' pitch)
    pitch_um: float | None = None
    inference_block: int = 1 << 24
    # training (read by the task; recorded with the model)
    pcc_weight: float = 1.0
    genes_per_step: int | None = None
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mask_channels = tuple(int(c) for c in self.mask_channels)
        self.mask_strides = tuple(int(s) for s in self.mask_strides)
        if len(self.mask_strides) != len(self.mask_channels) + 1:
            raise ValueError(
                "ALIGN-ST mask_strides needs one stride per conv layer: "
                f"{len(self.mask_channels) + 1} (mask_channels + the last to dim), "
                f"got {len(self.mask_strides)}"
            )
        for name in ("dim", "embed_dim", "heads", "nuclei_grid", "max_tokens", "n_prompts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ALIGN-ST {name} must be at least 1, got {getattr(self, name)}")
        for name in ("image_layers", "text_layers", "top_k", "knn_spatial", "knn_feature"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ALIGN-ST {name} must be >= 0, got {getattr(self, name)}")
        if self.sage_layers < 1:
            raise ValueError(f"ALIGN-ST sage_layers must be at least 1, got {self.sage_layers}")
        if self.dim % self.heads:
            raise ValueError(f"ALIGN-ST dim ({self.dim}) must be a multiple of heads")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ALIGN-ST alpha must be in [0, 1], got {self.alpha}")
        if self.genes_per_step is not None and int(self.genes_per_step) < 1:
            raise ValueError(f"ALIGN-ST genes_per_step must be >= 1, got {self.genes_per_step}")
        if self.pitch_um is not None:
            self.pitch_um = float(self.pitch_um)
            if not self.pitch_um > 0:
                raise ValueError(f"ALIGN-ST pitch_um must be positive, got {self.pitch_um}")

    @property
    def nuclei_dim(self) -> int:
        return self.nuclei_grid**2 if self.use_nuclei else 0

    @property
    def node_dim(self) -> int:
        """Raw features of a node: the pooled levels (+ the nuclei grid)."""
        assert self.image_dim is not None
        return int(self.image_dim) + self.nuclei_dim

    def to_dict(self) -> dict[str, Any]:
        return self._tuples_as_lists(asdict(self), "mask_channels", "mask_strides")


# ---------------------------------------------------------------------------- pieces
def gated_prompts(visual: torch.Tensor, previous: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 5: ``α·visual + (1 − α)·previous`` (``visual`` already projected to the text
    width)."""
    return alpha * visual + (1.0 - alpha) * previous


def asig_aggregate(z: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6–7 on ``Z (G, D^e)``: each gene's ``k = min(top_k, G − 1)`` neighbours by
    ``softmax(ZZᵀ/√D^e)`` (itself excluded) and their β-weighted sum ``Z^N (G, D^e)``;
    returns ``(Z^N, adjacency (G, G) bool)``. No neighbour (``G = 1`` or ``k = 0``): zeros."""
    G, De = z.shape
    k = min(int(top_k), G - 1)
    adjacency = torch.zeros(G, G, dtype=torch.bool, device=z.device)
    if k <= 0:
        return torch.zeros_like(z), adjacency
    logits = (z @ z.T) / math.sqrt(De)
    eye = torch.eye(G, dtype=torch.bool, device=z.device)
    affinity = torch.softmax(logits.masked_fill(eye, float("-inf")), dim=-1)
    nb = affinity.topk(k, dim=-1).indices  # (G, k)
    adjacency[torch.arange(G, device=z.device)[:, None], nb] = True
    zj = z[nb]  # (G, k, De)
    scores = (zj * torch.tanh(z[:, None, :] + zj)).sum(-1)  # (G, k)
    beta = torch.softmax(scores, dim=-1)
    return (beta[..., None] * zj).sum(1), adjacency


@dataclass
class SlideStream:
    """What the image stream of one slide gives: refined patch features ``V (N, dim)`` and
    the visual prompts after each image layer (``(n_prompts, dim)`` each; empty without
    prompts)."""

    V: torch.Tensor
    prompts: list[torch.Tensor]


def _knn_edges(
    x: torch.Tensor, k: int, *, cosine: bool, senders: torch.Tensor | None
) -> torch.Tensor:
    """``(2, E)`` edges ``(neighbour → node)`` to each node's ``k`` nearest senders
    (Euclidean, or cosine similarity), itself excluded; in row blocks."""
    n = x.shape[0]
    idx = torch.arange(n, device=x.device) if senders is None else torch.nonzero(senders).ravel()
    k = min(int(k), len(idx) - 1 if senders is None else len(idx))
    if k <= 0 or n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=x.device)
    ref = x[idx].double()
    if cosine:
        ref = F.normalize(ref, dim=1)
    rows = max(1, (1 << 24) // max(1, len(idx)))
    out = []
    for r0 in range(0, n, rows):
        q = x[r0 : r0 + rows].double()
        score = F.normalize(q, dim=1) @ ref.T if cosine else -torch.cdist(q, ref)
        mine = torch.arange(r0, r0 + len(q), device=x.device)
        score[idx[None, :] == mine[:, None]] = float("-inf")  # no self loops
        top = score.topk(k, dim=1).indices
        src = idx[top].ravel()
        dst = mine.repeat_interleave(k)
        keep = torch.isfinite(score.gather(1, top)).ravel()
        out.append(torch.stack([src[keep], dst[keep]]))
    return torch.cat(out, dim=1)


def _sage_conv() -> Any:
    """``torch_geometric.nn.SAGEConv``, imported on first use (a few seconds; its
    ``torch.jit.script`` deprecation warning is torch_geometric's, not the user's)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*jit.*")
        from torch_geometric.nn import SAGEConv
    return SAGEConv


def _version(t: Any) -> int | None:
    """A tensor's in-place version counter (``None`` for inference tensors, which keep none,
    and for ``None``)."""
    try:
        return None if t is None else int(t._version)
    except RuntimeError:
        return None


@register_model("align-st")
class AlignST(FrozenPatchModel):
    """ALIGN-ST — nuclei-aware, prompt-aligned, gene-graph zero-shot expression (MICCAI 2025)."""

    config_class = AlignStConfig
    display_name = "ALIGN-ST"
    input_context = "spots"

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    gene_tokens: torch.Tensor
    gene_token_mask: torch.Tensor
    gene_learned: torch.Tensor

    def __init__(self, config: AlignStConfig | None = None) -> None:
        SAGEConv = _sage_conv()
        super().__init__()
        self.config = cfg = config or AlignStConfig()
        assert cfg.image_dim is not None and cfg.gene_dim is not None
        self.genes: list[str] = []
        self._precision = "fp32"
        self._memo: tuple[Any, tuple[torch.Tensor, torch.Tensor, SlideStream], Any] | None = None
        self.encoder = self.frozen_encoder().build()
        D, dg, d, De, G, L = (
            int(cfg.image_dim),
            int(cfg.gene_dim),
            cfg.dim,
            cfg.embed_dim,
            cfg.n_genes,
            cfg.max_tokens,
        )
        blk = (cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))
        self.register_buffer("gene_tokens", torch.zeros(G, L, dg, dtype=torch.float16))
        self.register_buffer("gene_token_mask", torch.zeros(G, L, dtype=torch.bool))
        self.register_buffer("gene_learned", torch.zeros(G, dtype=torch.bool))
        self.gene_offsets = nn.Parameter(torch.zeros(G, d))  # learned genes' CLS offsets
        # NDA-IFE
        self.image_in = nn.Linear(D, d)
        layers: list[nn.Module] = []
        channels = (1, *cfg.mask_channels, d)
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], cfg.mask_strides, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.mask_encoder = nn.Sequential(*layers)
        self.nuclei_norm = nn.LayerNorm(d)
        self.nuclei_attention = MultiHead(d, cfg.heads, cfg.dropout)
        # PGGP
        self.visual_prompts = nn.Parameter(torch.randn(cfg.n_prompts, d) * 0.02)
        self.image_blocks = nn.ModuleList(Block(d, *blk) for _ in range(cfg.image_layers))
        self.image_norm = nn.LayerNorm(d)
        self.text_in = nn.Linear(dg, d)
        self.cls = nn.Parameter(torch.randn(1, d) * 0.02)
        self.text_prompts = nn.Parameter(torch.randn(cfg.n_prompts, d) * 0.02)
        self.prompt_proj = nn.Linear(d, d)  # f_proj
        self.text_blocks = nn.ModuleList(Block(d, *blk) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(d)
        # ASIG
        self.asig_in = nn.Linear(d, De)
        self.asig_out = nn.Linear(2 * De, De, bias=False)
        # prediction
        widths = [d] * cfg.sage_layers + [De]
        self.sage = nn.ModuleList(
            SAGEConv(a, b, aggr="mean") for a, b in itertools.pairwise(widths)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny ALIGN-ST: ResNet18 levels 1–2 on 32 px patches, an 8 × 8 nuclei grid,
        d = 16, three genes with 6-d token vectors (set by :meth:`contract_instance`)."""
        return {
            "backbone": "resnet18",
            "pretrained": None,
            "out_indices": [1, 2],
            "patch_um": 64.0,
            "input_px": 32,
            "nuclei_grid": 8,
            "mask_channels": [4, 4, 8, 8],
            "mask_strides": [1, 2, 1, 2, 1],
            "n_genes": 3,
            "gene_dim": 6,
            "max_tokens": 5,
            "dim": 16,
            "embed_dim": 8,
            "heads": 2,
            "dropout": 0.0,
            "top_k": 1,
            "knn_spatial": 2,
            "knn_feature": 2,
            "pitch_um": 100.0,
        }

    @classmethod
    def contract_instance(cls) -> AlignST:
        """:meth:`contract_config`'s model with seeded random token sequences."""
        model = cls.from_config(cls.contract_config())
        gen = torch.Generator().manual_seed(0)
        G, L, dg = model.gene_tokens.shape
        tokens = torch.randn(G, L, dg, generator=gen).numpy()
        lengths = [L, 2, 1][:G] + [L] * max(0, G - 3)
        model.set_gene_tokens([tokens[g, : lengths[g]] for g in range(G)])
        return model

    def set_gene_tokens(
        self, sequences: Sequence[np.ndarray], learned: np.ndarray | None = None
    ) -> None:
        """The gene memory: one ``(L_g, gene_dim)`` token sequence per gene (cut to
        ``max_tokens``); ``learned`` genes get a trainable CLS offset."""
        G = self.gene_tokens.shape[0]
        if len(sequences) != G:
            raise ValueError(f"ALIGN-ST needs {G} token sequences, got {len(sequences)}")
        tokens, mask = self.pad_tokens(sequences)
        self.gene_tokens.copy_(tokens.to(self.gene_tokens.device))
        self.gene_token_mask.copy_(mask.to(self.gene_token_mask.device))
        flags = np.zeros(G, bool) if learned is None else np.asarray(learned, bool)
        self.gene_learned.copy_(torch.as_tensor(flags))

    def pad_tokens(self, sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, max_tokens, gene_dim)`` float16 tokens and their ``(G, max_tokens)`` mask."""
        L, dg = self.config.max_tokens, int(self.config.gene_dim or 0)
        tokens = torch.zeros(len(sequences), L, dg, dtype=torch.float16)
        mask = torch.zeros(len(sequences), L, dtype=torch.bool)
        for g, seq in enumerate(sequences):
            arr = np.asarray(seq, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] != dg:
                raise ValueError(f"token sequence {g} must be (L, {dg}), got {arr.shape}")
            n = max(1, min(L, len(arr)))
            if len(arr):
                tokens[g, :n] = torch.from_numpy(arr[:n]).half()
            mask[g, :n] = True
        return tokens, mask

    def set_feature_statistics(self, features: np.ndarray) -> None:
        """Standardisation of the pooled part of raw node features ``(N, node_dim)``."""
        if not self.config.standardize:
            return
        pooled = np.asarray(features)[:, : int(self.config.image_dim or 0)]
        s = pooled.std(axis=0)
        self.feature_mean.copy_(torch.as_tensor(pooled.mean(axis=0), dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(np.where(s > 1e-6, s, 1.0), dtype=torch.float32))

    # ------------------------------------------------------------------ interface
    @property
    def feature_dim(self) -> int:
        return self.config.embed_dim

    @property
    def needs_slide_context(self) -> bool:
        return True

    @property
    def node_feature_dim(self) -> int:
        return self.config.node_dim

    @property
    def lattice_pitch_um(self) -> float:
        cfg = self.config
        return float(cfg.pitch_um) if cfg.pitch_um is not None else float(cfg.patch_um) / 2.0

    @property
    def pooling(self) -> str:
        """Pooled levels (+ the nuclei grid: ``"mean+nucleiM[:segmenter]"``)."""
        cfg = self.config
        if not cfg.use_nuclei:
            return "mean"
        from ..nuclei import DEFAULT_SEGMENTER

        name = "" if cfg.segmenter == DEFAULT_SEGMENTER else f":{cfg.segmenter}"
        return f"mean+nuclei{cfg.nuclei_grid}{name}"

    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The head of a slide without patches (the prompts of an empty image stream): the
        head a whole slide actually gets is :meth:`slide_gene_head`."""
        with torch.no_grad():
            fg = self.gene_embeddings(self.image_stream(self._empty_inputs()))
        W = fg.double().cpu().numpy().T
        return check_gene_head(W, np.zeros(W.shape[1]), self.feature_dim, self.config.n_genes)

    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        """Pass 1: ``(N, node_dim)`` raw frozen features (+ nuclei grid) of the patches
        (``spots.features`` passed through, else ``spots.images`` encoded and segmented)."""
        if spots.features is not None:
            return torch.as_tensor(spots.features).to(self.feature_mean.device).float()
        if spots.images is None:
            raise ValueError("encode_spots needs images or features")
        return self.encode_images(torch.as_tensor(spots.images))

    # ------------------------------------------------------------------ NDA-IFE
    def _empty_inputs(self) -> torch.Tensor:
        return torch.zeros(0, self.config.dim, device=self.feature_mean.device)

    def _standardised(self, raw: torch.Tensor) -> torch.Tensor:
        D = int(self.config.image_dim or 0)
        return (raw[:, :D].float() - self.feature_mean) / self.feature_std

    def node_inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """NDA-IFE: ``(N, dim)`` ``H`` of raw node features ``(N, node_dim)``."""
        cfg = self.config
        hg = self.image_in(self._standardised(raw))
        if not cfg.use_nuclei or raw.shape[0] == 0:
            return hg
        D, M = int(cfg.image_dim or 0), cfg.nuclei_grid
        masks = raw[:, D : D + M * M].float().reshape(-1, 1, M, M)
        hs = self.mask_encoder(masks).flatten(2).transpose(1, 2)  # (N, cells, dim)
        return self.nuclei_attention(hg[:, None, :], self.nuclei_norm(hs))[:, 0] + hg

    # ------------------------------------------------------------------ PGGP
    def image_stream(
        self, H: torch.Tensor, *, senders: torch.Tensor | None = None, block: int | None = None
    ) -> SlideStream:
        """Eq. 3: the image transformer over ``[P^vis; H]``; ``senders (N,)`` bool: the
        nodes others attend to (whole slides: the tissue nodes); prompts always attend."""
        cfg = self.config
        P = cfg.n_prompts if cfg.use_prompts else 0
        x = torch.cat([self.visual_prompts[:P].to(H.dtype), H])
        key_mask = None
        if senders is not None:
            key_mask = torch.cat([torch.ones(P, dtype=torch.bool, device=H.device), senders])
        prompts = []
        for blk in self.image_blocks:
            x = blk(x[None], key_mask=None if key_mask is None else key_mask[None], block=block)[0]
            if P:
                prompts.append(x[:P])
        return SlideStream(V=self.image_norm(x[P:]), prompts=prompts)

    def gene_embeddings(
        self,
        stream: SlideStream,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        asig_context: torch.Tensor | None = None,
        subset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``F^g (G, embed_dim)`` of genes with token sequences ``tokens (G, L, gene_dim)``
        and ``mask (G, L)`` (default: the model's own genes) on a slide's ``stream``:
        the text stream with that slide's prompts (Eqs. 4–5), then ASIG (Eqs. 6–8) over
        these genes — and ``asig_context`` ``Z`` rows of other genes the neighbours may come
        from (adding genes to a finished map). ``subset``: indices of the model's own genes
        to embed (training with ``genes_per_step``; the gene graph is then over them)."""
        own = tokens is None
        if tokens is None or mask is None:
            sel = slice(None) if subset is None else subset
            tokens, mask = self.gene_tokens[sel], self.gene_token_mask[sel]
        g = self.text_stream(stream, tokens, mask)
        if own and bool(self.gene_learned.any()):
            sel = slice(None) if subset is None else subset
            g = g + self.gene_offsets[sel] * self.gene_learned[sel][:, None]
        z = self.asig_in(g)
        if not self.config.use_asig:
            return z
        pool = z if asig_context is None else torch.cat([z, asig_context.to(z)])
        zn, _ = asig_aggregate(pool, self.config.top_k)
        return self.asig_out(torch.cat([z, zn[: len(z)]], dim=-1))

    def text_stream(
        self, stream: SlideStream, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``G_c (G, dim)``: the final CLS token of each gene's text transformer."""
        cfg = self.config
        G = tokens.shape[0]
        t = self.text_in(tokens.to(self.text_in.weight.dtype))
        P = cfg.n_prompts if cfg.use_prompts else 0
        cls = self.cls.expand(G, 1, -1)
        prompts = self.text_prompts[:P].expand(G, P, -1)
        m = mask.to(t.device)
        key_mask = torch.cat([torch.ones(G, 1 + P, dtype=torch.bool, device=t.device), m], 1)
        x = torch.cat([cls, prompts, t], dim=1)
        for layer, blk in enumerate(self.text_blocks):
            if P:
                visual = self.prompt_proj(stream.prompts[min(layer, len(stream.prompts) - 1)])
                fused = gated_prompts(visual[None].expand(G, -1, -1), x[:, 1 : 1 + P], cfg.alpha)
                x = torch.cat([x[:, :1], fused, x[:, 1 + P :]], dim=1)
            x = blk(x, key_mask=key_mask)
        return self.text_norm(x[:, 0])

    # ------------------------------------------------------------------ graph
    def patch_graph(
        self,
        raw: torch.Tensor,
        positions_um: torch.Tensor,
        senders: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(2, E)`` edges: each node's ``knn_spatial`` nearest by position ∪ its
        ``knn_feature`` most cosine-similar by standardised frozen features (duplicates
        removed; ``senders``: only those nodes send; ``groups (N,)``: edges only within a
        group — the offset lattices of a map finer than the training pitch)."""
        if groups is not None:
            parts = []
            for g in torch.unique(groups):
                idx = torch.nonzero(groups == g).ravel()
                sub = None if senders is None else senders[idx]
                e = self.patch_graph(raw[idx], positions_um[idx.to(positions_um.device)], sub)
                parts.append(idx.to(e.device)[e])
            edges = torch.cat(parts, dim=1) if parts else torch.zeros(2, 0, dtype=torch.long)
            return edges
        cfg = self.config
        x = self._standardised(raw)
        pos = positions_um.to(x.device).double()
        edges = torch.cat(
            [
                _knn_edges(pos, cfg.knn_spatial, cosine=False, senders=senders),
                _knn_edges(x, cfg.knn_feature, cosine=True, senders=senders),
            ],
            dim=1,
        )
        return torch.unique(edges, dim=1) if edges.shape[1] else edges

    def graph_features(self, V: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``F^v (N, embed_dim)``: GraphSAGE (mean) over the patch graph."""
        x = V
        for i, conv in enumerate(self.sage):
            x = conv(x, edges.to(x.device))
            if i < len(self.sage) - 1:
                x = F.relu(x)
        return x

    # ------------------------------------------------------------------ a slide
    def forward_slide(
        self,
        raw: torch.Tensor,
        positions_um: torch.Tensor,
        *,
        edges: torch.Tensor | None = None,
        senders: torch.Tensor | None = None,
        block: int | None = None,
        groups: torch.Tensor | None = None,
        subset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SlideStream]:
        """``(F^v (N, embed_dim), F^g (G, embed_dim), stream)`` of a slide's nodes; ``ŷ =
        F^v F^gᵀ``. ``edges``: a precomputed :meth:`patch_graph` (else built, within
        ``groups`` when given)."""
        raw = raw.to(self.feature_mean.device)
        H = self.node_inputs(raw)
        stream = self.image_stream(H, senders=senders, block=block)
        if edges is None:
            edges = self.patch_graph(raw, positions_um, senders, groups)
        fv = self.graph_features(stream.V, edges)
        return fv, self.gene_embeddings(stream, subset=subset), stream

    def _slide(self, nodes: LatticeNodes) -> tuple[torch.Tensor, torch.Tensor, SlideStream]:
        """``(F^v, F^g, stream)`` of a slide; without gradients the last slide's result is
        kept (the memo holds its tensors, so an identical call — :meth:`slide_context`, then
        :meth:`slide_gene_head` and :meth:`slide_state` on the same nodes — reuses it)."""
        grad = torch.is_grad_enabled()
        inputs = (nodes.features, nodes.positions_um, nodes.tissue, self.training)
        versions = tuple(_version(t) for t in inputs[:3])  # in-place edits invalidate
        cacheable = not grad and all(
            v is not None for v, t in zip(versions, inputs[:3], strict=True) if t is not None
        )
        memo = self._memo
        if (
            cacheable
            and memo is not None
            and all(a is b for a, b in zip(memo[0], inputs, strict=True))
            and memo[2] == versions
        ):
            return memo[1]
        senders = None if nodes.tissue is None else nodes.tissue.to(nodes.features.device)
        result = self.forward_slide(
            nodes.features,
            nodes.positions_um,
            senders=senders,
            block=None if grad else self.config.inference_block,
            groups=self.offset_lattices(nodes),
        )
        self._memo = (inputs, result, versions) if cacheable else None
        return result

    lattice_subdivisions = True

    def offset_lattices(self, nodes: LatticeNodes) -> torch.Tensor | None:
        """For a lattice ``K`` times finer than the training pitch (``K = round(pitch_um /
        nodes.pitch_um) > 1``): each node's offset lattice ``(row mod K)·K + col mod K`` —
        ``K²`` lattices at the training pitch, each its own patch graph (the geometry the
        model was trained on), all in one image stream (one set of prompts, one head).
        ``None`` at the training pitch."""
        if not nodes.pitch_um or len(nodes) == 0:
            return None
        k = round(self.lattice_pitch_um / float(nodes.pitch_um))
        if k <= 1:
            return None
        rc = nodes.grid_rc.long()
        return (rc[:, 0] % k) * k + rc[:, 1] % k

    def slide_context(self, nodes: LatticeNodes) -> torch.Tensor:
        """Pass 2: ``F^v (N, embed_dim)`` of every node of the slide."""
        return self._slide(nodes)[0]

    def slide_gene_head(self, nodes: LatticeNodes) -> tuple[np.ndarray, np.ndarray]:
        """This slide's head: ``W = F^gᵀ (embed_dim, G)``, ``b = 0``."""
        fg = self._slide(nodes)[1]
        W = fg.detach().double().cpu().numpy().T
        return check_gene_head(W, np.zeros(W.shape[1]), self.feature_dim, self.config.n_genes)

    def spot_context(
        self, features: torch.Tensor, grid_rc: torch.Tensor, nodes: LatticeNodes
    ) -> torch.Tensor:
        """The spots are the slide's nodes (ALIGN-ST's graph is over the patches given):
        ``F^v`` of ``features`` at the cells ``grid_rc`` of ``nodes``' lattice (positions
        from the cells; a spot in a cell ``nodes`` mark off the tissue sends no messages)."""
        tissue = None
        if nodes.tissue is not None:
            width = int(nodes.lattice_shape[1]) + 1
            off = {
                int(r) * width + int(c)
                for (r, c), t in zip(nodes.grid_rc.tolist(), nodes.tissue.tolist(), strict=True)
                if not t
            }
            keys = grid_rc[:, 0].long() * width + grid_rc[:, 1].long()
            tissue = torch.tensor([int(k) not in off for k in keys.tolist()], dtype=torch.bool)
        spots = LatticeNodes(
            features=features,
            positions_um=grid_rc.to(torch.float64).flip(-1) * float(nodes.pitch_um),
            grid_rc=grid_rc,
            lattice_shape=nodes.lattice_shape,
            pitch_um=nodes.pitch_um,
            tissue=tissue,
        )
        return self.slide_context(spots)

    zero_shot = True

    def gene_sequences(
        self, genes: Sequence[str], descriptions: Mapping[str, str] | None = None
    ) -> list[np.ndarray]:
        """The description token sequences of ``genes`` by the model's ``gene_encoder``
        (at most ``max_tokens``): the gene-knowledge table's descriptions, overridden by
        ``descriptions`` (symbol → text). A gene with neither raises ``ValueError``."""
        from .gene_knowledge.described_genes import description_tokens

        cfg = self.config
        seqs, dim = description_tokens(
            cfg.gene_encoder, genes, descriptions, max_tokens=cfg.max_tokens, who="ALIGN-ST"
        )
        if dim != cfg.gene_dim:
            raise ValueError(
                f"gene encoder {cfg.gene_encoder!r} gives {dim}-d tokens, "
                f"the model expects {cfg.gene_dim}"
            )
        return seqs

    def unseen_gene_head(
        self,
        genes: Sequence[str],
        *,
        nodes: LatticeNodes | None = None,
        state: Mapping[str, np.ndarray] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Zero-shot head columns on one slide — its ``nodes``, or the ``state`` its map
        kept (:meth:`slide_state`) — from the genes' description tokens
        (:meth:`gene_sequences`, :meth:`gene_columns`); ``b = 0``."""
        if state is None:
            if nodes is None:
                raise ValueError("ALIGN-ST's gene columns depend on the slide: give its nodes")
            state = self.slide_state(nodes)
        W = self.gene_columns(state, self.gene_sequences(genes, descriptions))
        return W, np.zeros(W.shape[1])

    def slide_state(self, nodes: LatticeNodes) -> dict[str, np.ndarray]:
        """What adding genes to this slide needs: the visual prompts after each image layer
        (``prompts (layers, n_prompts, dim)``; none without prompts) and the model's genes'
        ASIG vectors on this slide (``asig_z (G, embed_dim)``)."""
        with torch.no_grad():
            stream = self._slide(nodes)[2]  # pass 2's image stream, not a second one
            own = self.text_stream(stream, self.gene_tokens, self.gene_token_mask)
            if bool(self.gene_learned.any()):
                own = own + self.gene_offsets * self.gene_learned[:, None]
            z = self.asig_in(own)
        d = self.config.dim
        prompts = torch.stack(stream.prompts) if stream.prompts else torch.zeros(0, 0, d)
        return {
            "prompts": prompts.float().cpu().numpy(),
            "asig_z": z.float().cpu().numpy(),
        }

    def gene_columns(
        self, state: Mapping[str, np.ndarray], sequences: Sequence[np.ndarray]
    ) -> np.ndarray:
        """Zero-shot: head columns ``(embed_dim, k)`` of ``k`` genes given only their
        description token sequences, on the slide whose :meth:`slide_state` is ``state``
        (its prompts through the text stream, then ASIG with neighbours among these genes
        and the model's own genes). The model's own columns stay as they are (a new gene
        does not re-rank their neighbours), so adding genes to a finished map never changes
        its other genes."""
        tokens, mask = self.pad_tokens(sequences)
        device = self.feature_mean.device
        prompts = torch.as_tensor(np.asarray(state["prompts"]), dtype=torch.float32)
        stream = SlideStream(
            V=torch.zeros(0, self.config.dim, device=device),
            prompts=[p.to(device) for p in prompts] if prompts.numel() else [],
        )
        context = torch.as_tensor(np.asarray(state["asig_z"]), dtype=torch.float32).to(device)
        with torch.no_grad():
            fg = self.gene_embeddings(
                stream, tokens.to(device), mask.to(device), asig_context=context
            )
        return fg.double().cpu().numpy().T

    def predict_slide(self, nodes: LatticeNodes) -> torch.Tensor:
        """``ŷ (N, G) = F^v F^gᵀ`` (Eq. 9)."""
        fv, fg, _ = self._slide(nodes)
        return fv @ fg.T

    # ------------------------------------------------------------------ housekeeping
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen encoder (gene offsets only when a gene is learned; the
        nuclei stream only with ``use_nuclei``, the prompts only with ``use_prompts``)."""
        cfg = self.config
        skip_prefix = ["encoder."]
        if not cfg.use_nuclei:
            skip_prefix += ["mask_encoder.", "nuclei_attention.", "nuclei_norm."]
        skip = set()
        if not bool(self.gene_learned.any()):
            skip.add("gene_offsets")
        if not cfg.use_prompts:
            skip |= {"visual_prompts", "text_prompts", "prompt_proj.weight", "prompt_proj.bias"}
        if not cfg.use_asig:
            skip.add("asig_out.weight")
        return [
            p
            for name, p in self.named_parameters()
            if name not in skip and not any(name.startswith(s) for s in skip_prefix)
        ]
