"""Gene symbol -> embedding: the one entry point models (HAGE, DKAN, ALIGN-ST, zero-shot)
use for gene knowledge.

:func:`create_gene_encoder` (like :func:`~napari_histoexpress.models.backbones.create_backbone`
for images) turns an encoder name into a :class:`GeneEncoder`:

* a **text encoder** (``minilm``, the offline default; ``hf:ORG/NAME``; a model folder) ->
  :class:`TextGeneEncoder`: each gene's description (:mod:`.descriptions`, optionally
  filled from NCBI: :mod:`.ncbi`) is put into ``template`` (default ``"{description}"``;
  fields ``{symbol}``, ``{name}``, ``{description}``) and encoded, through the on-disk
  :class:`~.embedding_cache.EmbeddingCache`;
* an **embedding file** (``file:PATH`` or a path ending ``.npy``, ``.safetensors``,
  ``.txt``/``.vec``/``.w2v`` (Gene2Vec text)) -> :class:`FileGeneEncoder`: the file's rows.

Both give :class:`GeneEmbeddings` (one vector per gene, :meth:`GeneEncoder.embed`) or
:class:`GeneTokenSequences` (each gene's description as the last hidden states of its
tokens, for ALIGN-ST, :meth:`GeneEncoder.embed_tokens`) in the order asked, with the
missing-gene policy of :mod:`.missing_genes` applied: ``learned`` says which rows the model
must learn, ``missing`` which genes had nothing and why.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .descriptions import DescriptionTable, load_descriptions
from .embedding_cache import EmbeddingCache
from .embedding_files import (
    EmbeddingFile,
    is_embedding_file,
    read_embedding_file,
    write_embeddings,
    write_token_sequences,
)
from .missing_genes import MissingGenePolicy, check_policy, report_missing
from .text_encoders import (
    TEXT_ENCODER_CHOICES,
    TextEncoder,
    UnknownEncoderError,
    create_text_encoder,
)

__all__ = [
    "DEFAULT_GENE_ENCODER",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPLATE",
    "GENE_ENCODER_CHOICES",
    "FileGeneEncoder",
    "GeneEmbeddings",
    "GeneEncoder",
    "GeneTokenSequences",
    "TextGeneEncoder",
    "create_gene_encoder",
    "embed_gene_tokens",
    "embed_genes",
]

#: The default encoder: all-MiniLM-L6-v2 over the gene descriptions (offline).
DEFAULT_GENE_ENCODER = "minilm"
#: The text put through a text encoder for each gene.
DEFAULT_TEMPLATE = "{description}"
#: The default token cap of :meth:`GeneEncoder.embed_tokens`.
DEFAULT_MAX_TOKENS = 128
#: What an encoder name can be, for messages and help.
GENE_ENCODER_CHOICES: tuple[str, ...] = (
    *TEXT_ENCODER_CHOICES,
    "file:PATH or a PATH ending .npy (+ symbol list), .safetensors, or .txt/.vec/.w2v "
    "(Gene2Vec text)",
)


# ---------------------------------------------------------------------------- results
@dataclass
class GeneEmbeddings:
    """One vector per gene, in the order asked.

    Attributes:
        genes: the genes asked for.
        vectors: ``(G, D)`` float32; rows of missing genes are zeros.
        learned: ``(G,)`` bool, rows the model must make learned parameters (policy
            ``"learned"``; all ``False`` otherwise).
        missing: gene -> why it has no embedding (``"no description in ..."``, ``"not in
            the embedding file ..."``).
        matched: the symbol each gene was found under (``None`` when missing), e.g.
            ``"ERBB2"`` for ``"HER2"``.
        encoder, weights_hash: what made the vectors (``weights_hash`` ``""`` for files).
        policy: the missing-gene policy applied.
        sources: where each gene's text or vector came from (description source, file).
    """

    genes: list[str]
    vectors: np.ndarray
    learned: np.ndarray
    missing: dict[str, str]
    matched: list[str | None]
    encoder: str
    weights_hash: str = ""
    policy: str = "error"
    sources: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": "pooled",
            "encoder": self.encoder,
            "weights_hash": self.weights_hash,
            "policy": self.policy,
        }

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write to ``.safetensors`` (symbols, mask and provenance inside) or ``.npy`` +
        ``.txt`` (:func:`~.embedding_files.write_embeddings`)."""
        return write_embeddings(
            path,
            self.genes,
            self.vectors,
            learned=self.learned,
            missing=self.missing,
            metadata=self.metadata(),
        )


@dataclass
class GeneTokenSequences:
    """Each gene's description as token vectors (ALIGN-ST's text stream).

    Attributes:
        genes: the genes asked for.
        sequences: one float16 ``(L_i, D)`` array per gene, ``L_i <= max_tokens``; a
            missing gene gets one zero token (so attention over it is defined).
        learned, missing, matched, encoder, weights_hash, policy, sources: as in
            :class:`GeneEmbeddings`.
        max_tokens: the length cap.
    """

    genes: list[str]
    sequences: list[np.ndarray]
    learned: np.ndarray
    missing: dict[str, str]
    matched: list[str | None]
    encoder: str
    max_tokens: int
    weights_hash: str = ""
    policy: str = "error"
    sources: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.sequences[0].shape[1]) if self.sequences else 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(G, L, D)`` float16 zero-padded to the longest, and the ``(G, L)`` bool mask
        of real tokens."""
        longest = int(self.lengths.max()) if self.sequences else 0
        tokens = np.zeros((len(self.genes), longest, self.dim), np.float16)
        mask = np.zeros((len(self.genes), longest), bool)
        for i, seq in enumerate(self.sequences):
            tokens[i, : len(seq)] = seq
            mask[i, : len(seq)] = True
        return tokens, mask

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write to ``.safetensors`` (:func:`~.embedding_files.write_token_sequences`)."""
        meta = {
            "kind": "tokens",
            "encoder": self.encoder,
            "weights_hash": self.weights_hash,
            "policy": self.policy,
            "max_tokens": str(self.max_tokens),
        }
        return write_token_sequences(
            path,
            self.genes,
            self.sequences,
            learned=self.learned,
            missing=self.missing,
            metadata=meta,
        )


# ---------------------------------------------------------------------------- encoders
class GeneEncoder(ABC):
    """Gene symbols -> :class:`GeneEmbeddings` / :class:`GeneTokenSequences`."""

    name: str = "gene-encoder"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the vectors."""

    @property
    def weights_hash(self) -> str:
        """Identifies the model weights (``""`` for a file)."""
        return ""

    @abstractmethod
    def _lookup(self, genes: Sequence[str]) -> tuple[list[Any], dict[str, str], list[str]]:
        """Per gene: the item to embed (``None`` when missing) and the reasons and sources."""

    @abstractmethod
    def _vectors(self, items: Sequence[Any]) -> np.ndarray:
        """``(n, D)`` float32 of the found items."""

    @abstractmethod
    def _sequences(self, items: Sequence[Any], max_tokens: int) -> list[np.ndarray]:
        """One float16 ``(L, D)`` array per found item."""

    def _matched(self, items: Sequence[Any]) -> list[str | None]:
        return [None if it is None else str(it[0]) for it in items]

    def embed(
        self, genes: Sequence[str], *, missing: MissingGenePolicy = "error"
    ) -> GeneEmbeddings:
        """One vector per gene (see :class:`GeneEmbeddings`); ``missing``: the policy of
        :mod:`.missing_genes`."""
        policy = check_policy(missing)
        genes = [str(g) for g in genes]
        items, reasons, sources = self._lookup(genes)
        report_missing(reasons, len(genes), policy)
        found = [i for i, it in enumerate(items) if it is not None]
        vectors = np.zeros((len(genes), self.dim), np.float32)
        if found:
            vectors[found] = self._vectors([items[i] for i in found])
        learned = np.array([it is None for it in items], bool) & (policy == "learned")
        return GeneEmbeddings(
            genes=genes,
            vectors=vectors,
            learned=learned,
            missing=reasons,
            matched=self._matched(items),
            encoder=self.name,
            weights_hash=self.weights_hash,
            policy=policy,
            sources=sources,
        )

    def embed_tokens(
        self,
        genes: Sequence[str],
        *,
        missing: MissingGenePolicy = "error",
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> GeneTokenSequences:
        """Each gene's token vectors (see :class:`GeneTokenSequences`), at most
        ``max_tokens`` per gene."""
        policy = check_policy(missing)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        genes = [str(g) for g in genes]
        items, reasons, sources = self._lookup(genes)
        report_missing(reasons, len(genes), policy)
        found = [i for i, it in enumerate(items) if it is not None]
        got = self._sequences([items[i] for i in found], max_tokens) if found else []
        placeholder = np.zeros((1, self.dim), np.float16)
        sequences = [placeholder] * len(genes)
        for i, seq in zip(found, got, strict=True):
            sequences[i] = seq
        learned = np.array([it is None for it in items], bool) & (policy == "learned")
        return GeneTokenSequences(
            genes=genes,
            sequences=sequences,
            learned=learned,
            missing=reasons,
            matched=self._matched(items),
            encoder=self.name,
            max_tokens=int(max_tokens),
            weights_hash=self.weights_hash,
            policy=policy,
            sources=sources,
        )


class TextGeneEncoder(GeneEncoder):
    """Genes -> their descriptions -> a :class:`~.text_encoders.TextEncoder`.

    Args:
        text_encoder: the model.
        descriptions: the description table (default: :func:`~.descriptions.load_descriptions`,
            the bundled table overridden by ``$HISTOEXPRESS_GENE_DESCRIPTIONS``).
        cache: the on-disk cache (default: one under the user cache; ``None`` or an
            ``EmbeddingCache(enabled=False)`` computes every time).
        template: the text of a gene, formatted with ``symbol``, ``name`` and
            ``description`` (default ``"{description}"``).
        ncbi: fill the genes the table lacks from NCBI Gene summaries (online; offline it
            warns and carries on), with these ``ncbi_options`` for
            :func:`~.ncbi.fetch_ncbi_summaries`.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        descriptions: DescriptionTable | None = None,
        *,
        cache: EmbeddingCache | bool | None = True,
        template: str = DEFAULT_TEMPLATE,
        ncbi: bool = False,
        ncbi_options: dict[str, Any] | None = None,
    ) -> None:
        self.text_encoder = text_encoder
        self.name = text_encoder.name
        self._descriptions = descriptions
        if cache is True:
            cache = EmbeddingCache()
        self.cache = cache or None
        try:
            template.format(symbol="", name="", description="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template {template!r} may only use {{symbol}}, {{name}}, {{description}}"
            ) from exc
        self.template = template
        self.ncbi = ncbi
        self.ncbi_options = dict(ncbi_options or {})

    @property
    def descriptions(self) -> DescriptionTable:
        if self._descriptions is None:
            self._descriptions = load_descriptions()
        return self._descriptions

    @property
    def dim(self) -> int:
        return self.text_encoder.dim

    @property
    def weights_hash(self) -> str:
        return self.text_encoder.weights_hash

    def _lookup(self, genes: Sequence[str]) -> tuple[list[Any], dict[str, str], list[str]]:
        table = self.descriptions
        fetched = None
        if self.ncbi and table.missing(genes):
            from .ncbi import fill_missing_descriptions

            table, fetched = fill_missing_descriptions(table, genes, **self.ncbi_options)
        items: list[Any] = []
        reasons: dict[str, str] = {}
        sources: list[str] = []
        where = " + ".join(Path(p).name for p in table.origin.split(" + ") if p)
        for g in genes:
            entry = table.get(g)
            if entry is None:
                why = fetched.reason(g) if fetched is not None else None
                reason = f"no description in {where or 'the description table'}"
                reasons[g] = f"{reason}; {why}" if why else reason
                items.append(None)
                sources.append("")
                continue
            text = self.template.format(
                symbol=entry.symbol, name=entry.name, description=entry.description
            )
            items.append((entry.symbol, text))
            sources.append(entry.source)
        return items, reasons, sources

    def _vectors(self, items: Sequence[Any]) -> np.ndarray:
        texts = [text for _, text in items]
        if self.cache is not None:
            return self.cache.encode(self.text_encoder, texts)
        return self.text_encoder.encode(texts)

    def _sequences(self, items: Sequence[Any], max_tokens: int) -> list[np.ndarray]:
        texts = [text for _, text in items]
        if self.cache is not None:
            return self.cache.encode_tokens(self.text_encoder, texts, max_tokens=max_tokens)
        return self.text_encoder.encode_tokens(texts, max_tokens=max_tokens)


class FileGeneEncoder(GeneEncoder):
    """Genes -> rows of an embedding file (:mod:`.embedding_files`: ``.npy`` + symbol
    list, ``.safetensors``, Gene2Vec text).

    Args:
        path: the file; symbols: the symbol list of a ``.npy`` (default: beside it).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, symbols: str | os.PathLike[str] | None = None
    ) -> None:
        self.file: EmbeddingFile = read_embedding_file(path, symbols=symbols)
        self.path = self.file.path
        self.name = f"file:{self.path.name}"

    @property
    def dim(self) -> int:
        return self.file.dim

    @property
    def weights_hash(self) -> str:
        return self.file.metadata.get("weights_hash", "")

    def _lookup(self, genes: Sequence[str]) -> tuple[list[Any], dict[str, str], list[str]]:
        items: list[Any] = []
        reasons: dict[str, str] = {}
        sources: list[str] = []
        for g in genes:
            i = self.file.find(g)
            if i is None:
                sym = self.file.symbols[j] if (j := self.file.index.find(g)) is not None else g
                recorded = self.file.recorded_missing.get(sym)
                reason = f"not in the embedding file {self.path.name}"
                reasons[g] = f"{reason} (written as missing: {recorded})" if recorded else reason
                items.append(None)
                sources.append("")
            else:
                items.append((self.file.symbols[i], i))
                sources.append(str(self.path))
        return items, reasons, sources

    def _vectors(self, items: Sequence[Any]) -> np.ndarray:
        if self.file.vectors is None:
            from ...errors import InputFileError

            raise InputFileError(self.path, "holds token sequences, not one vector per gene")
        return self.file.vectors[[i for _, i in items]]

    def _sequences(self, items: Sequence[Any], max_tokens: int) -> list[np.ndarray]:
        if self.file.tokens is None:
            from ...errors import InputFileError

            raise InputFileError(
                self.path, "holds one vector per gene, not token sequences (ALIGN-ST needs them)"
            )
        return [self.file.tokens[i][:max_tokens].astype(np.float16) for _, i in items]


# ---------------------------------------------------------------------------- factory
def create_gene_encoder(
    name: str = DEFAULT_GENE_ENCODER,
    *,
    descriptions: DescriptionTable | None = None,
    cache: EmbeddingCache | bool | None = True,
    template: str = DEFAULT_TEMPLATE,
    ncbi: bool = False,
    ncbi_options: dict[str, Any] | None = None,
    symbols: str | os.PathLike[str] | None = None,
    **text_options: Any,
) -> GeneEncoder:
    """A :class:`GeneEncoder` by name (choices: :data:`GENE_ENCODER_CHOICES`).

    Args:
        name: ``minilm`` (default), ``hf:ORG/NAME``, a model folder, ``file:PATH`` or an
            embedding file's path.
        descriptions, cache, template, ncbi, ncbi_options: for text encoders
            (:class:`TextGeneEncoder`).
        symbols: the symbol list of a ``.npy`` file.
        text_options: for :class:`~.text_encoders.TransformersTextEncoder` (pooling,
            normalize, max_length, special_tokens, device, torch_dtype, batch_size,
            local_files_only, trust_remote_code).

    Raises:
        UnknownEncoderError: ``name`` is none of the choices (the message lists them).
    """
    text = str(name).strip()
    if text.lower().startswith("file:"):
        return FileGeneEncoder(text[5:].strip(), symbols=symbols)
    if is_embedding_file(text) and not Path(text).is_dir():
        return FileGeneEncoder(text, symbols=symbols)
    try:
        encoder = create_text_encoder(text, **text_options)
    except UnknownEncoderError:
        raise UnknownEncoderError(text, GENE_ENCODER_CHOICES) from None
    return TextGeneEncoder(
        encoder,
        descriptions,
        cache=cache,
        template=template,
        ncbi=ncbi,
        ncbi_options=ncbi_options,
    )


def embed_genes(
    genes: Sequence[str],
    encoder: str | GeneEncoder = DEFAULT_GENE_ENCODER,
    *,
    missing: MissingGenePolicy = "error",
    **options: Any,
) -> GeneEmbeddings:
    """``create_gene_encoder(encoder, **options).embed(genes, missing=missing)``."""
    enc = encoder if isinstance(encoder, GeneEncoder) else create_gene_encoder(encoder, **options)
    return enc.embed(genes, missing=missing)


def embed_gene_tokens(
    genes: Sequence[str],
    encoder: str | GeneEncoder = DEFAULT_GENE_ENCODER,
    *,
    missing: MissingGenePolicy = "error",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    **options: Any,
) -> GeneTokenSequences:
    """``create_gene_encoder(encoder, **options).embed_tokens(genes, ...)``."""
    enc = encoder if isinstance(encoder, GeneEncoder) else create_gene_encoder(encoder, **options)
    return enc.embed_tokens(genes, missing=missing, max_tokens=max_tokens)
