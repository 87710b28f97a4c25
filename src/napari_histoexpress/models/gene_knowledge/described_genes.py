"""Genes described for zero-shot prediction: the description table with the user's texts on
top, and the vectors or token sequences a zero-shot model reads.

A zero-shot model (ALIGN-ST, PixNet's text head) predicts a gene from its description: the
bundled table's (:func:`~.descriptions.load_descriptions`) unless the user gives one
(``descriptions``: symbol → text, which win). A gene with neither cannot be predicted:
:class:`UndescribedGeneError` names it and says how to give one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import HistoExpressError

__all__ = [
    "UndescribedGeneError",
    "description_table",
    "description_tokens",
    "description_vectors",
]


class UndescribedGeneError(HistoExpressError, ValueError):
    """A gene to predict zero-shot has no description (in the table, nor given)."""


def description_table(descriptions: Mapping[str, str] | None = None):  # type: ignore[no-untyped-def]
    """The gene-knowledge table with ``descriptions`` (symbol → text) on top, or ``None``
    (the encoders' default table) when none is given; empty texts raise ``ValueError``."""
    from .descriptions import DescriptionTable, GeneDescription, load_descriptions

    given = {str(k).strip(): str(v).strip() for k, v in (descriptions or {}).items()}
    if not given:
        return None
    empty = sorted(k for k, v in given.items() if not v)
    if empty:
        raise ValueError(f"empty description for {empty}")
    rows = [GeneDescription(k, "", v, "given") for k, v in given.items()]
    return load_descriptions().updated(DescriptionTable(rows, origin="given text"))


def _encoder(gene_encoder: str, descriptions: Mapping[str, str] | None):  # type: ignore[no-untyped-def]
    from .gene_embeddings import create_gene_encoder

    return create_gene_encoder(gene_encoder, descriptions=description_table(descriptions))


def _undescribed(exc: Exception, who: str) -> UndescribedGeneError:
    return UndescribedGeneError(
        f"{who} needs a description of every gene it predicts zero-shot: {exc} "
        "(give one: a description text)"
    )


def description_vectors(
    gene_encoder: str,
    genes: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    *,
    who: str = "the model",
) -> np.ndarray:
    """``(len(genes), D)`` float32 pooled description embeddings by ``gene_encoder``."""
    try:
        return _encoder(gene_encoder, descriptions).embed(list(genes), missing="error").vectors
    except (KeyError, ValueError) as exc:
        raise _undescribed(exc, who) from exc


def description_tokens(
    gene_encoder: str,
    genes: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    *,
    max_tokens: int,
    who: str = "the model",
) -> tuple[list[np.ndarray], int]:
    """Each gene's description token sequence (float16 ``(L, D)``, ``L ≤ max_tokens``) by
    ``gene_encoder``, and ``D``."""
    try:
        seqs = _encoder(gene_encoder, descriptions).embed_tokens(
            list(genes), missing="error", max_tokens=max_tokens
        )
    except (KeyError, ValueError) as exc:
        raise _undescribed(exc, who) from exc
    return list(seqs.sequences), int(seqs.dim)
