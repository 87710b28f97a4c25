"""HAGE's hierarchical k-means (k1 on expression, k2 on image features inside each) and the
per-batch sub-cluster means, on synthetic blobs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histoexpress.training.hierarchical_clusters import (
    hierarchical_kmeans,
    subcluster_means,
)


def _blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 spots: 2 expression blobs × 2 image blobs (10 each), tight and far apart; returns
    (expression, image, true sub-cluster 0..3)."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 10)
    e_centre = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])[truth // 2]
    i_centre = np.array([[0.0, 0.0], [5.0, -5.0]])[truth % 2]
    expression = e_centre + rng.normal(scale=0.1, size=e_centre.shape)
    image = i_centre + rng.normal(scale=0.1, size=i_centre.shape) + 100.0 * (truth // 2)[:, None]
    order = rng.permutation(40)
    return expression[order], image[order], truth[order]


def test_two_by_two_blobs_give_exactly_the_four_known_subclusters() -> None:
    expression, image, truth = _blobs()
    clusters = hierarchical_kmeans(expression, image, k1=2, k2=2, seed=0)
    assert clusters.k1 == 2 and clusters.k2 == 2 and clusters.n_subclusters == 4
    labels = clusters.labels
    assert len(np.unique(labels)) == 4
    # the same partition as the truth (labels are a permutation of it)
    for t in range(4):
        assert len(np.unique(labels[truth == t])) == 1
    # expression clusters group the sub-clusters: c1 = label // k2
    assert np.array_equal(clusters.expression, labels // 2)
    assert len(np.unique(clusters.expression[truth // 2 == 0])) == 1


def test_subcluster_means_equal_hand_means_and_respect_the_minimums() -> None:
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [0.0, 6.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 2, 2, 2, 3])
    got = subcluster_means(z, labels, 4, min_members=2, min_clusters=2)
    assert got is not None
    means, kept = got
    assert kept.tolist() == [0, 2]  # cluster 3 has one member, cluster 1 none
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    assert subcluster_means(z, labels, 4, min_members=2, min_clusters=3) is None
    assert subcluster_means(z, labels, 4, min_members=4, min_clusters=1) is None


def test_small_clusters_and_k_larger_than_the_spots() -> None:
    expression = np.array([[0.0], [0.0], [5.0]])
    image = np.array([[1.0], [2.0], [3.0]])
    clusters = hierarchical_kmeans(expression, image, k1=30, k2=2)
    assert clusters.k1 == 2  # only two distinct expression profiles
    # the one-spot cluster keeps a single sub-cluster; the other splits in two
    assert len(np.unique(clusters.labels)) == 3
    with pytest.raises(ValueError, match="as many spots"):
        hierarchical_kmeans(expression, image[:2])
