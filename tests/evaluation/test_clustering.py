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


# --- tiny splits: every index is NaN where undefined, never an exception --------------------------------------
UNDEFINED_FOR_LABELS = ("silhouette_labels", "davies_bouldin", "calinski_harabasz")


@pytest.mark.parametrize("labels", [
    [0, 1],  # a 2-example test split of 2 classes: k = n
    [0, 1, 2],  # k = n
    [3, 7, 1, 0],  # k = n, non-contiguous labels
    [0],  # one example
    [0, 0],  # one class
])
@pytest.mark.parametrize("sparse_codes", [False, True])
def test_k_outside_2_to_n_minus_1_gives_nan_not_an_error(labels, sparse_codes):
    torch.manual_seed(0)
    x = torch.randn(len(labels), 40)
    if sparse_codes:
        x = torch.relu(x - 1.8)  # mostly zeros: the CSR path
        x[:, 0] = torch.arange(len(labels)).float() + 1  # distinct rows
    m = clustering_metrics(x, torch.tensor(labels), seed=0)
    assert all(math.isnan(m[key]) for key in ("ari_kmeans", *UNDEFINED_FOR_LABELS)), m
    assert m["silhouette_sample_size"] == len(labels)


def test_three_examples_two_classes_are_scored():
    """k = 2 <= n - 1 = 2: everything is defined, including a class with a single example."""
    x = torch.tensor([[0.0], [1.0], [10.0]])
    m = clustering_metrics(x, torch.tensor([0, 0, 1]), seed=0)
    assert not any(math.isnan(v) for v in m.values()), m
    assert m["ari_kmeans"] == pytest.approx(1.0)
    # silhouette: points 0, 1 have a = 1 and b = 10, 9; the lone point of class 1 scores 0 by definition
    assert m["silhouette_labels"] == pytest.approx(((1 - 1 / 10) + (1 - 1 / 9) + 0) / 3)


def test_k_means_with_every_point_its_own_cluster_has_no_kmeans_silhouette():
    """Two classes over three points, two of them identical: k-means finds 2 clusters, fine; but with the
    labels all different (k = n = 3) only the k-means silhouette (2 clusters) is defined."""
    x = torch.tensor([[0.0], [0.0], [5.0]])
    m = clustering_metrics(x, torch.tensor([0, 1, 2]), seed=0)
    assert all(math.isnan(m[key]) for key in UNDEFINED_FOR_LABELS)
    assert m["silhouette_kmeans"] == pytest.approx(2 / 3)  # the identical pair scores 1, the lone point 0
    assert m["ari_kmeans"] == pytest.approx(0.0)


def test_a_sample_holding_too_few_classes_gives_nan():
    """The silhouette's fixed-seed sample may miss a class (here the sample of 2 holds 2 classes: k = n)."""
    x, labels = torch.randn(50, 3), torch.arange(50) % 2
    m = clustering_metrics(x, labels, seed=0, silhouette_sample=2)
    assert math.isnan(m["silhouette_labels"]) and math.isnan(m["silhouette_kmeans"])
    assert not math.isnan(m["davies_bouldin"]) and m["silhouette_sample_size"] == 2


def test_calinski_harabasz_is_nan_outside_2_to_n_minus_1():
    assert math.isnan(calinski_harabasz(torch.randn(3, 2), torch.tensor([0, 1, 2])))
    assert math.isnan(calinski_harabasz(torch.randn(3, 2), torch.tensor([1, 1, 1])))


def test_no_features_or_no_examples_give_nan():
    for x, labels in ((torch.zeros(6, 0), torch.arange(6) % 2), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))):
        m = clustering_metrics(x, labels, seed=0)
        assert all(math.isnan(m[key]) for key in ("ari_kmeans", "silhouette_kmeans", *UNDEFINED_FOR_LABELS))


@pytest.mark.parametrize("rows,width,value", [(3, 12, 1.0), (7, 33, 0.3), (50, 129, -2.5)])
def test_identical_rows_are_one_point_however_blas_rounds(rows, width, value):
    """Every example at the same point: undefined. (A float projection could round identical rows apart.)"""
    x = torch.full((rows, width), value)
    m = clustering_metrics(x, torch.arange(rows) % 2, seed=0)
    assert all(math.isnan(m[key]) for key in ("ari_kmeans", "silhouette_kmeans", *UNDEFINED_FOR_LABELS)), m
    assert clustering.distinct_rows(x.numpy()) == 1


# --- the paper's ARI: clusters by argmax over units (METRICS_REFERENCE.md's worked example) ---------------------
ARGMAX_CODES = torch.tensor([
    [2.0, 0.0, 0.0],  # unit 0
    [1.0, 0.0, 0.0],  # unit 0
    [0.0, 3.0, 1.0],  # unit 1
    [0.0, 0.0, 0.0],  # no unit fires: unit 0, as numpy's argmax takes the first of tied units
    [0.0, 1.0, 2.0],  # unit 2
    [0.0, 2.0, 2.0],  # a tie between units 1 and 2: unit 1
])
ARGMAX_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_argmax_clusters_take_the_first_of_tied_units():
    assert clustering.argmax_clusters(ARGMAX_CODES.numpy()).tolist() == [0, 0, 1, 0, 2, 1]


def test_hand_computed_argmax_ari():
    # contingency (class x cluster): pairs within both = C(2, 2) = 1 (class 0 in cluster 0);
    # pairs within a class: 3 x C(2, 2) = 3; within a cluster: C(3, 2) + C(2, 2) + 0 = 4; all pairs C(6, 2) = 15
    # ARI = (1 − 3·4/15) / ((3 + 4)/2 − 3·4/15) = 0.2 / 2.7 = 2/27
    m = clustering_metrics(ARGMAX_CODES, ARGMAX_LABELS, seed=0)
    assert m["ari_argmax"] == pytest.approx(2 / 27)
    assert m["argmax_clusters"] == 3 and m["argmax_zero_rows"] == 1


def test_argmax_ari_is_1_for_one_unit_per_class_and_nan_where_ari_is_undefined():
    labels = torch.arange(3).repeat_interleave(4)
    codes = torch.nn.functional.one_hot(labels * 2, 8).float() * torch.rand(12, 1).add(0.5)
    m = clustering_metrics(codes, labels, seed=0)
    assert m["ari_argmax"] == pytest.approx(1.0) and m["argmax_clusters"] == 3 and m["argmax_zero_rows"] == 0
    pair = clustering_metrics(torch.tensor([[0.0, 3.0], [5.0, 1.0]]), torch.tensor([0, 1]), seed=0)  # 0/0
    zeros = clustering_metrics(torch.zeros(6, 3), ARGMAX_LABELS, seed=0)  # every example at one point
    for m in (pair, zeros):
        assert all(math.isnan(m[key]) for key in ("ari_argmax", "argmax_clusters", "argmax_zero_rows")), m


def test_calinski_harabasz_grows_with_the_number_of_examples():
    """The same geometry with every example twice: B and W double, (N − k)/(k − 1) goes from 2 to 6: 200 -> 600."""
    x, labels = torch.tensor([[0.0], [1.0], [10.0], [11.0]]), torch.tensor([0, 0, 1, 1])
    assert calinski_harabasz(x, labels) == pytest.approx(200.0)
    assert calinski_harabasz(x.repeat(2, 1), labels.repeat(2)) == pytest.approx(600.0)
