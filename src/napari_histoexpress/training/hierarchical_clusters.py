"""HAGE's hierarchical alignment clusters (paper §2.3; design *spot-models* §1).

Spots are clustered twice: k-means with ``k1`` (30) clusters on their normalised
expression, then, inside each expression cluster, k-means with ``k2`` (2) clusters on their
frozen image features. Each spot gets one **sub-cluster** label ``c1 · k2 + c2``. The global
alignment term compares, per sub-cluster, the mean image embedding with the mean expression
embedding (:func:`subcluster_means`).

Choices (the paper is silent):

* Clusters are assigned **once per training run** (the image features are frozen and the
  expression is fixed), with scikit-learn's ``KMeans(n_init=10)`` seeded by the run's seed.
  A cluster with fewer spots than ``k2`` keeps one sub-cluster; ``k1`` larger than the
  number of distinct spots shrinks to it.
* Per batch, the members of each sub-cluster are averaged (a scatter mean); only
  sub-clusters with at least ``min_members`` (4) spots in the batch count, and the term is
  skipped (``None``) when fewer than ``min_clusters`` (8) remain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["HierarchicalClusters", "hierarchical_kmeans", "subcluster_means"]


@dataclass(frozen=True)
class HierarchicalClusters:
    """Sub-cluster labels of the training spots.

    Attributes:
        labels: ``(N,)`` int64 sub-cluster of each spot, ``c1 · k2 + c2``.
        expression: ``(N,)`` the expression cluster ``c1`` of each spot.
        k1, k2: the cluster counts used.
    """

    labels: np.ndarray
    expression: np.ndarray
    k1: int
    k2: int

    @property
    def n_subclusters(self) -> int:
        return int(self.k1 * self.k2)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    n_distinct = len(np.unique(x, axis=0))
    k = max(1, min(int(k), n_distinct))
    if k == 1:
        return np.zeros(len(x), np.int64)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)


def hierarchical_kmeans(
    expression: np.ndarray, image: np.ndarray, k1: int = 30, k2: int = 2, *, seed: int = 0
) -> HierarchicalClusters:
    """k-means with ``k1`` clusters on ``expression (N, G)``, then ``k2`` on ``image (N, D)``
    inside each (see the module docstring)."""
    expression = np.asarray(expression, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if len(expression) != len(image) or len(expression) == 0:
        raise ValueError(
            f"need as many spots of expression as of image features, got "
            f"{len(expression)} and {len(image)}"
        )
    c1 = _kmeans(expression, k1, seed)
    k1_used = int(c1.max()) + 1
    labels = np.zeros(len(c1), np.int64)
    for c in range(k1_used):
        idx = np.flatnonzero(c1 == c)
        labels[idx] = c * k2 + _kmeans(image[idx], k2, seed)
    return HierarchicalClusters(labels=labels, expression=c1, k1=k1_used, k2=int(k2))


def subcluster_means(
    z: torch.Tensor,
    labels: torch.Tensor,
    n_clusters: int,
    *,
    min_members: int = 4,
    min_clusters: int = 8,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(means (K, d), kept cluster ids (K,))``: the mean row of ``z (N, d)`` per
    sub-cluster with at least ``min_members`` rows, or ``None`` when fewer than
    ``min_clusters`` sub-clusters qualify."""
    labels = labels.to(z.device).long()
    counts = torch.bincount(labels, minlength=n_clusters)
    sums = torch.zeros(n_clusters, z.shape[1], dtype=z.dtype, device=z.device)
    sums = sums.index_add(0, labels, z)
    kept = torch.nonzero(counts >= min_members).flatten()
    if len(kept) < min_clusters:
        return None
    return sums[kept] / counts[kept, None].to(z.dtype), kept
