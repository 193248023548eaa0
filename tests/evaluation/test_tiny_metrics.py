"""Every metric family on tiny splits (1, 2, 3 examples, one class, a class with one example, constant
features): numbers where they are defined, NaN (null in results) where not, and never an exception."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_ception.evaluation.performance import performance_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy
from sae_ception.evaluation.representations import in_memory, representation_metrics
from sae_ception.utils.io import write_json

TINY_SPLITS = {
    "one example": [1],
    "two examples, two classes": [0, 1],
    "two examples, one class": [1, 1],
    "three examples, k = n": [0, 1, 2],
    "three examples, a class of one": [0, 0, 1],
}


@pytest.mark.parametrize("name", list(TINY_SPLITS))
@pytest.mark.parametrize("features", ["random", "constant", "zeros"])
def test_every_family_runs_on_a_tiny_test_split(name, features, tmp_path):
    torch.manual_seed(0)
    labels = torch.tensor(TINY_SPLITS[name])
    n = len(labels)
    make = {"random": lambda r, c: torch.rand(r, c), "constant": lambda r, c: torch.ones(r, c),
            "zeros": lambda r, c: torch.zeros(r, c)}[features]
    train_labels = torch.arange(20) % 3
    families, per_unit = representation_metrics(
        {"dense": in_memory(torch.rand(20, 6), make(n, 6)), "sae": in_memory(torch.relu(torch.randn(20, 12)), make(n, 12))},
        train_labels, labels, seed=0,
    )
    assert set(families) == {"probe", "monosemanticity_dense", "monosemanticity_sae", "clustering_dense", "clustering_sae"}
    undefined_clustering = len(set(labels.tolist())) < 2 or len(set(labels.tolist())) > n - 1 or features != "random"
    for rep in ("dense", "sae"):
        clustering = families[f"clustering_{rep}"]
        if undefined_clustering:
            assert all(math.isnan(clustering[k]) for k in ("silhouette_labels", "davies_bouldin", "calinski_harabasz"))
        else:
            assert all(not math.isnan(v) for v in clustering.values()), clustering
        if n < 2 or len(set(labels.tolist())) < 2:
            assert math.isnan(families[f"monosemanticity_{rep}"]["csi_mean"])
        assert 0 <= families["probe"][f"{rep}_accuracy"] <= 1
    metrics = performance_metrics(torch.randn(n, 3), torch.randn(n, 3), labels)
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["f1_macro"] <= 1
    write_json(tmp_path / "cycle_0.json", {"metrics": families | {"performance": metrics}})  # NaN -> null
    json.loads((tmp_path / "cycle_0.json").read_text())


@pytest.mark.parametrize("train_labels,test_labels,defined", [
    ([0, 0, 0], [0, 1], False),  # one class to learn from: no probe
    ([0, 1], [1], True),  # two training examples, one test example
    ([0, 0, 1], [1, 0], True),  # a class of one example
    ([0, 1, 1], [], False),  # nothing to test on
])
def test_linear_probe_on_tiny_splits(train_labels, test_labels, defined):
    train_X, test_X = torch.randn(len(train_labels), 4), torch.randn(len(test_labels), 4)
    accuracy = linear_probe_accuracy(train_X, torch.tensor(train_labels), test_X, torch.tensor(test_labels, dtype=torch.long), 0)
    assert (0 <= accuracy <= 1) if defined else math.isnan(accuracy)


def test_linear_probe_on_constant_features_predicts_the_majority():
    accuracy = linear_probe_accuracy(torch.ones(5, 3), torch.tensor([0, 1, 1, 1, 0]), torch.ones(2, 3),
                                     torch.tensor([1, 0]), seed=0)
    assert accuracy == pytest.approx(0.5)


def test_performance_of_no_examples_is_nan():
    metrics = performance_metrics(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert all(math.isnan(v) for v in metrics.values())
