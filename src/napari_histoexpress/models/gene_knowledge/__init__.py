"""Gene knowledge: what each gene is (descriptions) and vectors for it (embeddings).

Used by the models that condition on genes (HAGE, DKAN, ALIGN-ST) and by zero-shot
prediction of genes a model was not trained on. The pieces, one module each:

* :mod:`.descriptions` — the bundled, versioned description table
  (``descriptions.tsv``: ``symbol, name, description, source``) and user tables (TSV or
  JSON) that add or override rows;
* :mod:`.ncbi` — NCBI Gene summaries (E-utilities esearch + esummary) for genes the tables
  lack, online only;
* :mod:`.symbol_index` — symbol lookup (case-insensitive, curated aliases such as HER2 ->
  ERBB2);
* :mod:`.text_encoders` — text -> vector or token sequence (offline default
  all-MiniLM-L6-v2; any Hugging Face text model);
* :mod:`.embedding_cache` — text embeddings cached on disk, keyed by encoder name, weights
  hash and the text's sha256;
* :mod:`.embedding_files` — precomputed embeddings (``.npy`` + symbol list,
  ``.safetensors``, Gene2Vec text), and writing computed ones;
* :mod:`.missing_genes` — the missing-gene policy (``error`` / ``learned`` / ``zero``);
* :mod:`.gene_embeddings` — :func:`create_gene_encoder`, :func:`embed_genes`,
  :func:`embed_gene_tokens`: the entry points.

Importing this package imports neither torch nor transformers (they load when a text
model first runs).
"""

from __future__ import annotations

from .descriptions import (
    BUNDLED_DESCRIPTIONS,
    DescriptionTable,
    GeneDescription,
    bundled_descriptions,
    load_descriptions,
    read_description_file,
)
from .embedding_cache import EmbeddingCache
from .embedding_files import EmbeddingFile, read_embedding_file
from .gene_embeddings import (
    DEFAULT_GENE_ENCODER,
    GENE_ENCODER_CHOICES,
    FileGeneEncoder,
    GeneEmbeddings,
    GeneEncoder,
    GeneTokenSequences,
    TextGeneEncoder,
    create_gene_encoder,
    embed_gene_tokens,
    embed_genes,
)
from .missing_genes import (
    MISSING_POLICIES,
    MissingGenePolicy,
    MissingGenesError,
    MissingGenesWarning,
)
from .ncbi import NcbiUnavailableWarning, fetch_ncbi_summaries, fill_missing_descriptions
from .symbol_index import SymbolIndex
from .text_encoders import (
    DEFAULT_TEXT_ENCODER,
    TextEncoder,
    TransformersTextEncoder,
    UnknownEncoderError,
    create_text_encoder,
)

__all__ = [
    "BUNDLED_DESCRIPTIONS",
    "DEFAULT_GENE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "GENE_ENCODER_CHOICES",
    "MISSING_POLICIES",
    "DescriptionTable",
    "EmbeddingCache",
    "EmbeddingFile",
    "FileGeneEncoder",
    "GeneDescription",
    "GeneEmbeddings",
    "GeneEncoder",
    "GeneTokenSequences",
    "MissingGenePolicy",
    "MissingGenesError",
    "MissingGenesWarning",
    "NcbiUnavailableWarning",
    "SymbolIndex",
    "TextEncoder",
    "TextGeneEncoder",
    "TransformersTextEncoder",
    "UnknownEncoderError",
    "bundled_descriptions",
    "create_gene_encoder",
    "create_text_encoder",
    "embed_gene_tokens",
    "embed_genes",
    "fetch_ncbi_summaries",
    "fill_missing_descriptions",
    "load_descriptions",
    "read_description_file",
    "read_embedding_file",
]
