"""Clustering indices on cases whose answers are known by construction."""

import math

import pytest
import torch

from sklearn.metrics import calinski_harabasz_score

from sae_ception.evaluation import clustering
from sae_ception.evaluation.clustering import calinski_harabasz, clustering_metrics


def test_well_separated_classes_are_recovered():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(30)
    x = centres[labels] + 0.1 * torch.randn(90, 2)
    m = clustering_metrics(x, labels, seed=0)
    assert m["ari_kmeans"] == pytest.approx(1.0)
    assert m["silhouette_labels"] > 0.9 and m["silhouette_kmeans"] > 0.9
    assert m["davies_bouldin"] < 0.1 and m["calinski_harabasz"] > 1000


def test_hand_computed_silhouette_and_davies_bouldin():
    # two tight pairs on a line: points 0, 1 (class 0) and 10, 11 (class 1)
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    labels = torch.tensor([0, 0, 1, 1])
    m = clustering_metrics(x, labels, seed=0)
    # point 0: a = 1, b = mean(10, 11) = 10.5 -> 1 - 1/10.5; point 1: b = mean(9, 10) = 9.5 -> 1 - 1/9.5;
    # the other pair mirrors these, so the mean is 1 - (1/10.5 + 1/9.5) / 2
    assert m["silhouette_labels"] == pytest.approx(1 - (1 / 10.5 + 1 / 9.5) / 2)
    # DB: scatter 0.5 per cluster, centroid distance 10 -> (0.5 + 0.5) / 10
    assert m["davies_bouldin"] == pytest.approx(0.1)
    assert m["ari_kmeans"] == pytest.approx(1.0)
    # CH: overall mean 5.5, class means 0.5 and 10.5: B = Σ n_k‖μ_k − μ‖² = 2·25 + 2·25 = 100; W = 4·0.25 = 1;
    # (B / (k − 1)) / (W / (N − k)) = 100 / 0.5 = 200
    assert m["calinski_harabasz"] == pytest.approx(200.0)


def test_calinski_harabasz_matches_scikit_learn():
    torch.manual_seed(0)
    x, labels = torch.randn(300, 7), torch.randint(0, 4, (300,)) * 3  # non-contiguous label values
    assert calinski_harabasz(x, labels) == pytest.approx(calinski_harabasz_score(x.numpy(), labels.numpy()), rel=1e-9)
    assert calinski_harabasz(torch.ones(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])) == 1.0


def test_sparse_codes_give_the_same_indices_as_dense(monkeypatch):
    torch.manual_seed(0)
    labels = torch.arange(400) % 4
    codes = torch.relu(torch.randn(400, 64) - 2.0) + 3.0 * torch.nn.functional.one_hot(labels * 5, 64)
    assert (codes != 0).float().mean() < clustering.SPARSE_DENSITY  # takes the CSR path
    sparse_result = clustering_metrics(codes, labels, seed=0)
    monkeypatch.setattr(clustering, "SPARSE_DENSITY", 0.0)  # force the dense path
    dense_result = clustering_metrics(codes, labels, seed=0)
    assert sparse_result == pytest.approx(dense_result, rel=1e-4)


def test_constant_codes_and_single_class_are_nan():
    constant = clustering_metrics(torch.ones(20, 5), torch.arange(20) % 2, seed=0)
    never_firing = clustering_metrics(torch.zeros(20, 5), torch.arange(20) % 2, seed=0)
    one_class = clustering_metrics(torch.randn(20, 5), torch.zeros(20, dtype=torch.long), seed=0)
    for m in (constant, never_firing, one_class):
        assert all(math.isnan(m[key]) for key in ("ari_kmeans", "silhouette_labels", "davies_bouldin", "calinski_harabasz"))


def test_silhouette_is_sampled_with_a_fixed_seed():
    torch.manual_seed(0)
    x, labels = torch.randn(600, 4), torch.arange(600) % 3
    a = clustering_metrics(x, labels, seed=1, silhouette_sample=200)
    b = clustering_metrics(x, labels, seed=1, silhouette_sample=200)
    assert a == b and a["silhouette_sample_size"] == 200
