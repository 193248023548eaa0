"""The worked examples of METRICS_REFERENCE.md, computed by the real metric code."""

import pytest
import torch

from sae_ception.evaluation.performance import accuracy_and_loss, performance_metrics
from sae_ception.evaluation.sae_quality import sae_quality


class TableSAE(torch.nn.Module):
    """Returns fixed codes and reconstructions, so the metric formulas can be checked by hand."""

    def __init__(self, codes, recon):
        super().__init__()
        self.codes, self.recon = codes, recon
        self.d_sae = codes.shape[1]
        self.W_dec_FD = torch.nn.Parameter(torch.zeros(self.d_sae, recon.shape[1]))

    def encode(self, x):
        return self.codes

    def decode(self, codes):
        return self.recon

    def normalize(self, x):
        return x


def test_performance_worked_example():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    spliced = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert accuracy_and_loss(logits, labels)["accuracy"] == pytest.approx(2 / 3)
    metrics = performance_metrics(logits, spliced, labels)
    assert metrics["spliced_accuracy"] == pytest.approx(1 / 3)
    assert metrics["spliced_accuracy_drop"] == pytest.approx(1 / 3)


def test_sae_worked_example():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    recon = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    codes = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    got = sae_quality(TableSAE(codes, recon), x)
    assert got["mse"] == pytest.approx(0.25)
    assert got["mse_normalized"] == pytest.approx(0.25)
    assert got["explained_variance"] == pytest.approx(0.75)
    assert got["l0"] == pytest.approx(1.5)
    assert got["l1"] == pytest.approx(2.0)
    assert got["dead_fraction"] == pytest.approx(1 / 3)
    assert got["always_on_fraction"] == pytest.approx(1 / 3)


def test_the_reference_says_when_each_family_is_undefined():
    """METRICS_REFERENCE.md promises null where a metric is undefined; each family says where that is."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "METRICS_REFERENCE.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    for title in ("performance", "monosemanticity_dense, monosemanticity_sae", "clustering_dense, clustering_sae", "probe"):
        assert "Undefined (null)" in sections[title], title
    assert "`[2, N − 1]`" in sections["clustering_dense, clustering_sae"]


def test_tiny_split_worked_examples():
    import math

    from sae_ception.evaluation.clustering import clustering_metrics

    pair = clustering_metrics(torch.tensor([[0.0, 3.0], [5.0, 1.0]]), torch.tensor([0, 1]), seed=0)
    assert all(math.isnan(v) for k, v in pair.items() if k != "silhouette_sample_size")
    three = clustering_metrics(torch.tensor([[0.0], [1.0], [10.0]]), torch.tensor([0, 0, 1]), seed=0)
    assert three["ari_kmeans"] == pytest.approx(1.0) and three["silhouette_labels"] == pytest.approx(0.5963, abs=1e-4)
