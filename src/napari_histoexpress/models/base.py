"""The one model interface: what every registered model is, whatever it predicts from.

Every model in the registry (:mod:`.registry`) subclasses :class:`HistoModel` through one of
two shapes, and the rest of the package (training loop, evaluation, whole-slide prediction,
the dense-map store, the widgets) talks to models only through this interface:

* :class:`DenseModel` — maps an RGB tile to a **dense feature map** ``(B, C, h, w)`` at a
  fixed stride (PixNet): whole-slide prediction tiles the slide and stores the features.
* :class:`SpotModel` — encodes **spot/patch inputs** (and whatever context it needs:
  neighbours, a region, the whole section) into ``(N, C)`` features (the ridge baseline;
  HAGE, DKAN and ALIGN-ST): its predictions go into the same dense-map store on a patch
  lattice.

Both end in one **linear gene head** ``genes = features @ W + b`` with ``W (C, G)`` and
``b (G,)`` (:meth:`HistoModel.gene_head`; one layout only, float64 numpy), which is what lets
the store keep ``C`` feature channels instead of ``G`` gene maps, aggregate circles on the
features, and gain a gene later (zero-shot) by adding a column to ``W``.

Every model also declares:

* ``registry_name`` (set by :func:`~.registry.register_model`) and ``genes`` (the head's
  output names, in order; set by training and restored by :func:`~.checkpoint.load_checkpoint`);
* a config round trip: ``from_config(dict)`` ↔ ``config_dict()`` (JSON-able);
* an :class:`InputSpec`: the working µm/px, the RGB normalisation, and the input geometry
  (dense: stride, alignment, receptive field; spot: patch size);
* tensors for safetensors checkpoints: ``state_dict()`` / ``load_state_dict()`` (an
  ``nn.Module`` has them; non-torch models such as ridge provide them);
* a tiny instance for the **model contract** (``tests/models/test_contract.py``, run on
  every registered model): ``contract_config()`` gives a small JSON config, and
  ``contract_instance()`` a model ready to predict — by default ``from_config`` of that
  config; a model that must be fitted first (the ridge baseline) overrides it and fits on
  random data with a fixed seed. The contract checks the shapes, the gene head against the
  model's own prediction, gradients, the checkpoint round trip and the config round trip.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from .feature_cache import FrozenEncoder

__all__ = [
    "DenseModel",
    "HistoModel",
    "InputSpec",
    "LatticeNodes",
    "ModelKind",
    "SpotInputs",
    "SpotModel",
    "check_gene_head",
]

ModelKind = Literal["dense", "spot"]


@dataclass(frozen=True)
class InputSpec:
    """What a model expects of its input pixels.

    Attributes:
        mpp: working resolution in µm per pixel (``None`` until the model is trained or
            loaded from a run that records it).
        mean, std: RGB normalisation of inputs in [0, 1] (``(x - mean) / std``).
        normalizes_input: True when the model applies ``mean``/``std`` itself, so callers
            pass RGB in [0, 1]; False when callers must normalise first.
        stride: dense models: input pixels per feature pixel (1 for spot models).
        input_multiple: dense models: tile windows must be multiples of (and sit on a grid
            of) this many input pixels.
        receptive_field_px: dense models: the receptive field in input pixels (sets the
            tiling halo), ``None`` when unknown.
        patch_px: spot models: side of the square patch the encoder sees, in working pixels.
        context: spot models: what else :meth:`SpotModel.encode_spots` needs besides the
            patch (``"none"``, ``"neighbours"``, ``"region"``, ``"section"``).
        stain: the stain settings the model was trained with, as
            :meth:`napari_histoexpress.stain.StainConfig.to_dict` (the fitted normalisation
            reference included, no image); ``None`` (default, and every checkpoint saved
            before the field) = no stain handling. When its ``normalize`` is not ``"none"``,
            callers normalise the uint8 pixels with that reference before anything else
            (augmentation strengths are training-only and ignored there). Not hashed.
    """

    mpp: float | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalizes_input: bool = False
    stride: int = 1
    input_multiple: int = 1
    receptive_field_px: float | None = None
    patch_px: int | None = None
    context: str = "none"
    stain: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def patch_um(self) -> float | None:
        """Spot models: the patch side in µm (``patch_px · mpp``)."""
        if self.patch_px is None or self.mpp is None:
            return None
        return float(self.patch_px) * float(self.mpp)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        kw = dict(d)
        kw["mean"] = tuple(float(v) for v in kw["mean"])
        kw["std"] = tuple(float(v) for v in kw["std"])
        return cls(**kw)


@dataclass
class SpotInputs:
    """A batch of spots for :meth:`SpotModel.encode_spots`.

    Attributes:
        images: ``(N, 3, p, p)`` RGB in [0, 1] at the working µm/px, one patch per spot
            centred on it (``p = input_spec().patch_px``); ``None`` when the model encodes
            from cached ``features`` instead.
        positions_um: ``(N, 2)`` spot centres ``(x, y)`` in µm of the slide (for models with
            spatial context), or ``None``.
        features: ``(N, D)`` precomputed frozen-encoder features of the patches, when the
            model works from a feature cache, or ``None``.
        context: anything else the model's ``context`` needs (neighbour indices, region
            features, the section's lattice), by name.
    """

    images: torch.Tensor | None = None
    positions_um: torch.Tensor | None = None
    features: torch.Tensor | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        for value in (self.images, self.features, self.positions_um):
            if value is not None:
                return int(value.shape[0])
        return 0


@dataclass
class LatticeNodes:
    """Every tissue node of a slide's prediction lattice, for :meth:`SpotModel.slide_context`.

    Attributes:
        features: ``(N, D)`` float32 pass-1 features of the nodes (what
            :meth:`SpotModel.encode_spots` returned for the patch centred on each node).
        positions_um: ``(N, 2)`` node centres ``(x, y)`` in µm of the slide (napari's
            convention: slide pixel ``p`` at ``p · mpp``).
        grid_rc: ``(N, 2)`` int64 ``(row, col)`` of each node on the lattice.
        lattice_shape: ``(rows, cols)`` of the whole lattice.
        pitch_um: distance between neighbouring nodes in µm.
        tissue: ``(N,)`` bool, the nodes on tissue by the package's tissue detection (the
            predictor passes every node of the chunks that hold tissue, some of them on
            glass), or ``None`` when unknown (all count as tissue).
    """

    features: torch.Tensor
    positions_um: torch.Tensor
    grid_rc: torch.Tensor
    lattice_shape: tuple[int, int]
    pitch_um: float
    tissue: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def check_gene_head(
    W: np.ndarray, b: np.ndarray, feature_dim: int, n_genes: int, *, who: str = "model"
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` as float64 arrays, checked to be ``(C, G)`` and ``(G,)``; ``ValueError``
    naming ``who`` otherwise."""
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if W.shape != (feature_dim, n_genes) or b.shape != (n_genes,):
        raise ValueError(
            f"{who}: gene head must be W (C, G) = ({feature_dim}, {n_genes}) and b (G,) = "
            f"({n_genes},); got W {W.shape}, b {b.shape}"
        )
    return W, b


def copy_gene_vectors(buffer: torch.Tensor, vectors: np.ndarray) -> None:
    """Copy a gene memory ``vectors (G, gene_dim)`` into the model's ``buffer`` (same
    shape, else ``ValueError``; on the buffer's device)."""
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if tuple(v.shape) != tuple(buffer.shape):
        raise ValueError(f"gene vectors must be {tuple(buffer.shape)}, got {tuple(v.shape)}")
    buffer.copy_(v.to(buffer.device))


class HistoModel(abc.ABC):
    """Base of every registered model (see the module docstring).

    Subclasses that are also ``torch.nn.Module`` list ``nn.Module`` **first**
    (``class PixNet(nn.Module, DenseModel)``) so its ``state_dict``/``load_state_dict``
    implement the abstract ones here.
    """

    registry_name: ClassVar[str]
    kind: ClassVar[ModelKind]

    #: names of the head's outputs, in order (training sets them; checkpoints restore them)
    genes: list[str]
    #: working µm/px of the trained model (``None`` until known)
    working_mpp: float | None = None
    #: stain settings the model was trained with (``napari_histoexpress.stain.StainConfig``
    #: as a dict, with its fitted reference; ``None``: no stain normalisation). Training
    #: sets it, checkpoints restore it, and ``input_spec().stain`` reports it.
    stain: dict[str, Any] | None = None

    # ------------------------------------------------------------------ config
    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> HistoModel:
        """A model built from a plain (JSON) config dict."""

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The JSON-able config that :meth:`from_config` rebuilds the same model from."""

    @classmethod
    def settings_of(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The full :meth:`config_dict` that a model built from ``config`` records (every
        default resolved), without needing the built model. Cross-validation compares it
        with a finished fold's checkpoint, so a changed default retrains instead of reusing
        the fold. Default: ``from_config(config).config_dict()``; models whose construction
        is costly override it with their config class (the contract test checks that both
        agree)."""
        return cls.from_config(config).config_dict()

    # ------------------------------------------------------------------ shapes
    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """``C``: channels of the features the gene head reads."""

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @property
    def gene_names(self) -> list[str]:
        """``genes``, or ``gene_0 ...`` placeholders before training names them."""
        names = getattr(self, "genes", None)
        if names:
            return list(names)
        return [f"gene_{i}" for i in range(self._head_outputs())]

    def _head_outputs(self) -> int:
        return int(self.gene_head()[1].shape[0])

    @abc.abstractmethod
    def input_spec(self) -> InputSpec:
        """What the model expects of its input pixels."""

    @abc.abstractmethod
    def gene_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear head: ``W (C, G)`` and ``b (G,)`` float64, ``genes = feats @ W + b``."""

    def set_genes(self, genes: Sequence[str], working_mpp: float | None = None) -> None:
        """Name the head's outputs (and record the working µm/px) after training/loading."""
        genes = [str(g) for g in genes]
        n = self._head_outputs()
        if len(genes) != n:
            raise ValueError(f"the head predicts {n} genes but {len(genes)} names were given")
        self.genes = genes
        if working_mpp is not None:
            self.working_mpp = float(working_mpp)

    # ------------------------------------------------------------------ zero-shot
    #: True for models that predict genes they were never trained on from the genes'
    #: descriptions alone (:meth:`unseen_gene_head`; ALIGN-ST)
    zero_shot: ClassVar[bool] = False

    def unseen_gene_head(
        self,
        genes: Sequence[str],
        *,
        nodes: LatticeNodes | None = None,
        state: Mapping[str, np.ndarray] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Zero-shot: head columns ``W (C, k)``, ``b (k,)`` for ``k`` genes the model never
        saw, from their descriptions (the gene-knowledge table, or ``descriptions``:
        symbol → text, which win), for the features the model gives on one slide — models
        whose genes depend on the slide need its ``nodes`` or the ``state`` that
        :meth:`SpotModel.slide_state` kept in its map. Adding the columns to a map changes
        none of its other genes. Default: ``TypeError`` (the model is not zero-shot,
        :attr:`zero_shot`)."""
        raise TypeError(
            f"{type(self).__name__} predicts only the genes it was trained on (not zero-shot)"
        )

    # ------------------------------------------------------------------ contract test
    @classmethod
    @abc.abstractmethod
    def contract_config(cls) -> dict[str, Any]:
        """A tiny JSON config for the model contract test (small backbone, few genes)."""

    @classmethod
    def contract_instance(cls) -> HistoModel:
        """A small model ready to predict, for the contract test: ``from_config`` of
        :meth:`contract_config`. Models that must be fitted first override this (fit on random
        data with a fixed seed)."""
        return cls.from_config(cls.contract_config())

    # ------------------------------------------------------------------ tensors
    @abc.abstractmethod
    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """Every tensor needed to restore the model (saved as safetensors)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        """Inverse of :meth:`state_dict`."""


class DenseModel(HistoModel):
    """A model that maps an RGB tile to a dense feature map (see the module docstring)."""

    kind: ClassVar[ModelKind] = "dense"

    @property
    @abc.abstractmethod
    def feature_stride(self) -> int:
        """``s``: input pixels per feature pixel."""

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, n, n)`` input (see ``input_spec().normalizes_input``) →
        **exactly** ``(B, C, n / s, n / s)`` for ``n`` a multiple of ``input_multiple``."""


class SpotModel(HistoModel):
    """A model that encodes spots/patches (with their context) into ``(N, C)`` features."""

    kind: ClassVar[ModelKind] = "spot"

    @abc.abstractmethod
    def encode_spots(self, spots: SpotInputs) -> torch.Tensor:
        """``(N, C)`` float features of the spots; genes are ``features @ W + b``.

        Models with slide context (:attr:`needs_slide_context`) return their ``(N, D)``
        per-patch features here, and :meth:`slide_context` turns them into ``(N, C)``."""

    def frozen_encoder(self) -> FrozenEncoder | None:
        """The frozen patch encoder whose pooled features :meth:`encode_spots` also accepts
        as ``SpotInputs.features`` (models trained on cached frozen features: the ridge
        baseline, HAGE), or ``None`` (default). When it is not ``None`` the model also has
        ``loaded_encoder()`` (that encoder bound to the model's network and device), and
        evaluation reads the spots' features from the feature cache."""
        return None

    # ------------------------------------------------------------------ slide context
    @property
    def needs_slide_context(self) -> bool:
        """True when a whole-slide (lattice) prediction needs two passes: pass 1
        :meth:`encode_spots` on every tissue node, pass 2 :meth:`slide_context` on all of
        them at once. Default False: the features of a node depend on its patch only, and
        each lattice chunk is final as soon as it is encoded."""
        return False

    @property
    def node_feature_dim(self) -> int:
        """``D``: channels :meth:`encode_spots` returns for a lattice node, the input of
        :meth:`slide_context` (default :attr:`feature_dim`)."""
        return self.feature_dim

    def slide_context(self, nodes: LatticeNodes) -> torch.Tensor:
        """Pass 2 of lattice prediction: the ``(N, D)`` pass-1 features of every tissue node
        of the slide (with their positions) → ``(N, C)`` features the gene head reads.
        Called only when :attr:`needs_slide_context`; the default is the identity."""
        return nodes.features

    def slide_gene_head(self, nodes: LatticeNodes) -> tuple[np.ndarray, np.ndarray]:
        """The gene head of this slide, for models whose head depends on the slide (ALIGN-ST:
        its gene embeddings see the slide's visual prompts): ``W (C, G)``, ``b (G,)`` for
        the features :meth:`slide_context` gives for the same ``nodes``. Default:
        :meth:`gene_head` (the same head for every slide)."""
        return self.gene_head()

    def slide_state(self, nodes: LatticeNodes) -> dict[str, np.ndarray]:
        """What adding genes to this slide's finished map later needs (kept in the map by
        the predictor; ALIGN-ST: the slide's visual prompts and its genes' ASIG vectors).
        Default: nothing."""
        return {}

    def spot_context(
        self, features: torch.Tensor, grid_rc: torch.Tensor, nodes: LatticeNodes
    ) -> torch.Tensor:
        """Measured spots off the lattice (evaluation of a model with slide context): the
        spots' ``(M, D)`` pass-1 features and the lattice cells ``(M, 2)`` holding them,
        with the section's ``nodes`` → ``(M, C)`` features the gene head reads. A model
        without slide context (the default) has no use for the nodes: ``TypeError``."""
        raise TypeError(f"{type(self).__name__} has no slide context (needs_slide_context)")

    #: True when a lattice finer than :attr:`lattice_pitch_um` by a whole factor ``K``
    #: works too (the model splits it into ``K²`` offset lattices at its own pitch:
    #: ALIGN-ST); False (default): only the model's own pitch
    lattice_subdivisions: ClassVar[bool] = False

    @property
    def lattice_pitch_um(self) -> float | None:
        """The lattice pitch the model was trained on (models with slide context: their
        neighbours are lattice nodes), or ``None`` (default: any pitch works; the predictor
        uses half the patch side)."""
        return None
