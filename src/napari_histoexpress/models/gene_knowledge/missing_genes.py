"""What happens to a gene that has no embedding: one explicit, configurable policy.

A gene can lack an embedding because it has **no description** (text encoders: not in the
description table, nor filled from NCBI) or because it is **not in the embedding file**
(precomputed vectors such as Gene2Vec). The policy says what the caller gets:

* ``"error"`` (the default everywhere): :class:`MissingGenesError` listing every missing
  gene and why — nothing is silently made up;
* ``"learned"``: the gene's row is zeros *and* flagged in the result's ``learned`` mask:
  the model must make those rows learned parameters (HAGE's and DKAN's gene tokens can be
  learned embeddings where no prior exists);
* ``"zero"``: the row is zeros (a fixed "no knowledge" vector; note that it has norm 0,
  unlike the normalised text embeddings), and nothing is learned.

With ``"learned"`` and ``"zero"`` the missing genes are still reported: one
:class:`MissingGenesWarning` per call, and the result's ``missing`` mapping (gene -> reason).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal, get_args

from ...errors import HistoExpressError

__all__ = [
    "MISSING_POLICIES",
    "MissingGenePolicy",
    "MissingGenesError",
    "MissingGenesWarning",
    "check_policy",
    "describe_missing",
    "report_missing",
]

MissingGenePolicy = Literal["error", "learned", "zero"]
#: The policies, in the order they are offered.
MISSING_POLICIES: tuple[str, ...] = get_args(MissingGenePolicy)

#: How many genes a message names before "... and N more".
_SHOWN = 12


def check_policy(policy: str) -> MissingGenePolicy:
    """``policy`` if it is one of :data:`MISSING_POLICIES`, else ``ValueError`` listing them."""
    if policy not in MISSING_POLICIES:
        raise ValueError(
            f"unknown missing-gene policy {policy!r}; choose one of {', '.join(MISSING_POLICIES)}"
        )
    return policy  # type: ignore[return-value]


def describe_missing(missing: Mapping[str, str], n_genes: int) -> str:
    """``"3 of 250 genes have no embedding: A, B (no description in X); C (not in F)"``."""
    by_reason: dict[str, list[str]] = {}
    for gene, reason in missing.items():
        by_reason.setdefault(reason, []).append(gene)
    parts = []
    for reason, genes in by_reason.items():
        shown = ", ".join(genes[:_SHOWN])
        more = f" and {len(genes) - _SHOWN} more" if len(genes) > _SHOWN else ""
        parts.append(f"{shown}{more} ({reason})")
    return f"{len(missing)} of {n_genes} genes have no embedding: " + "; ".join(parts)


class MissingGenesError(HistoExpressError, ValueError):
    """Genes without an embedding under the ``"error"`` policy. ``missing`` maps each gene
    to the reason; the message lists them and the other policies."""

    def __init__(self, missing: Mapping[str, str], n_genes: int) -> None:
        self.missing = dict(missing)
        self.n_genes = n_genes
        super().__init__(
            f"{describe_missing(missing, n_genes)}. Describe them in a user table, or let "
            "the model learn their rows (missing-gene policy learned) or use zeros (zero)"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.missing, self.n_genes))


class MissingGenesWarning(UserWarning):
    """Genes without an embedding under the ``"learned"`` or ``"zero"`` policy (``missing``:
    gene -> reason; ``policy``)."""

    def __init__(self, missing: Mapping[str, str], n_genes: int, policy: str) -> None:
        self.missing = dict(missing)
        self.policy = policy
        what = "their rows must be learned" if policy == "learned" else "their rows are zeros"
        super().__init__(f"{describe_missing(missing, n_genes)} ({what}, policy {policy})")


def report_missing(
    missing: Mapping[str, str], n_genes: int, policy: MissingGenePolicy, *, stacklevel: int = 3
) -> None:
    """Apply ``policy`` to ``missing`` (gene -> reason): raise, warn once, or nothing when
    no gene is missing."""
    if not missing:
        return
    if policy == "error":
        raise MissingGenesError(missing, n_genes)
    warnings.warn(MissingGenesWarning(missing, n_genes, policy), stacklevel=stacklevel)
