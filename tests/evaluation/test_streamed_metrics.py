"""Every metric computed on codes stored sparse and streamed a chunk at a time equals the in-memory (dense)
computation on a small case: CSI/U and the paper's variants, clustering, probes, the SAE-quality family and the
feature report. Chunks of 7 rows and tiny column budgets make every streamed path take many steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score

from sae_ception.evaluation.clustering import clustering_metrics
from sae_ception.evaluation.clustering_streamed import fixed_sample, streamed_clustering
from sae_ception.evaluation.features import (feature_statistics, most_active_features, most_active_from_stats,
                                             streamed_feature_statistics)
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics, unit_scores
from sae_ception.evaluation.paper_metrics import paper_monosemanticity_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy, probe_accuracy
from sae_ception.evaluation.representations import (Representation, Sampling, encode_all, in_memory,
                                                    representation_metrics)
from sae_ception.evaluation.rows import DenseRows, SparseCodes, write_codes
from sae_ception.evaluation.sae_quality import QualitySums, row_mean, sae_quality
from sae_ception.evaluation.unit_stats import monosemanticity_family, unit_stats
from sae_ception.sae import build_sae
from sae_ception.sae.topk import TopKSAEConfig

CHUNK = 7


class Stored(torch.nn.Module):
    """An 'SAE' whose codes are its inputs: stores a given code matrix through `write_codes`."""

    def __init__(self, d_sae: int):
        super().__init__()
        self.d_sae = d_sae
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return x


def store(codes_NF: torch.Tensor, folder) -> SparseCodes:
    return write_codes(Stored(codes_NF.shape[1]), codes_NF, folder, batch_size=5)


def sae_like_codes(n: int = 90, f: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative sparse codes with labels: class-selective latents, a latent firing on most rows (its 75th
    percentile is not 0, so it takes pass 2), one always on, some never firing, a few all-zero rows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    codes = torch.relu(torch.randn(n, f, generator=g) - 1.0)
    codes[:, 0] = (labels == 2) * torch.rand(n, generator=g)  # selective
    codes[:, 1] = torch.rand(n, generator=g) + 0.1  # always on
    codes[:, 2] = 0.0  # dead
    codes[:, 3] = torch.relu(torch.randn(n, generator=g) + 1.5)  # fires on most rows
    codes[5] = 0.0
    codes[11] = 0.0
    return codes, labels


def dense_like(n: int = 90, u: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense activations of any sign, with a constant unit."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    acts = torch.randn(n, u, generator=g) + labels[:, None].float() * torch.linspace(-1, 1, u)
    acts[:, 4] = 0.7
    return acts, labels


def _close(a: dict, b: dict, rel: float = 1e-9):
    assert set(b) <= set(a)
    for key, value in b.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(a[key]), key
        else:
            assert a[key] == pytest.approx(value, rel=rel, abs=1e-12), key


def test_the_store_holds_the_codes_exactly_and_reads_any_rows(tmp_path):
    codes, _ = sae_like_codes()
    codes_store = store(codes, tmp_path / "codes")
    assert codes_store.shape == codes.shape and codes_store.nnz == int((codes != 0).sum())
    assert torch.equal(codes_store.to_dense(), codes)
    chunks = list(codes_store.chunks(CHUNK))
    assert [start for start, _ in chunks] == list(range(0, len(codes), CHUNK))
    assert np.array_equal(np.vstack([c.toarray() for _, c in chunks]), codes.numpy())
    rows = np.array([11, 3, 89, 5, 3, 0])  # any order, repeats, all-zero rows
    assert np.array_equal(codes_store.take(rows).toarray(), codes.numpy()[rows])
    assert np.array_equal(codes_store.columns(np.array([3, 0])), codes.numpy()[:, [3, 0]])


def test_a_store_of_no_nonzeros_and_a_damaged_store(tmp_path):
    empty = store(torch.zeros(6, 4), tmp_path / "zeros")
    assert empty.nnz == 0 and torch.equal(empty.to_dense(), torch.zeros(6, 4))
    assert empty.take(np.array([2, 1])).nnz == 0
    codes, _ = sae_like_codes()
    codes_store = store(codes, tmp_path / "codes")
    np.save(codes_store.folder / "values.npy", np.zeros(3, dtype=np.float32))  # truncated
    from sae_ception.errors import ArtifactError

    with pytest.raises(ArtifactError, match="truncated|not a readable"):
        SparseCodes(codes_store.folder)


def test_write_codes_stores_a_real_saes_codes_and_sums_its_quality_in_the_same_pass(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 16) @ torch.randn(16, 16)
    sae = build_sae(TopKSAEConfig(d_sae=64, k=5), 16)
    sae.set_normalization(x)
    sae.eval()
    sums = QualitySums(sae, row_mean(x))
    codes_store = write_codes(sae, x.half(), tmp_path / "codes", batch_size=64, on_batch=sums.update)
    assert torch.equal(codes_store.to_dense(), encode_all(sae, x.half().float()))
    _close(sums.result(), sae_quality(sae, x.half().float()))


@pytest.mark.parametrize("kind", ["sparse codes", "dense activations"])
def test_monosemanticity_and_the_papers_variants_stream_to_the_dense_numbers(kind, tmp_path):
    x, labels = sae_like_codes() if kind == "sparse codes" else dense_like()
    source = store(x, tmp_path / "codes") if kind == "sparse codes" else DenseRows(x)
    stats = unit_stats(source, labels, chunk_rows=CHUNK, column_budget=2 * len(x))  # pass 2 in blocks of 2 units
    family, scores = monosemanticity_family(stats)
    _close(family, monosemanticity_metrics(x, labels) | paper_monosemanticity_metrics(x, labels))
    expected = unit_scores(x, labels)
    assert torch.allclose(scores["csi"], expected["csi"], equal_nan=True, rtol=1e-6)
    assert torch.allclose(scores["u"], expected["u"], equal_nan=True, rtol=1e-6)
    if kind == "sparse codes":
        assert family["dead_units"] >= 1 and family["u_paper_live_units"] < x.shape[1] and stats.n == len(x)


@pytest.mark.parametrize("kind", ["sparse codes", "dense activations"])
def test_clustering_streams_to_the_dense_numbers_when_the_samples_cover_the_split(kind, tmp_path):
    x, labels = sae_like_codes() if kind == "sparse codes" else dense_like()
    source = store(x, tmp_path / "codes") if kind == "sparse codes" else DenseRows(x)
    stats = unit_stats(source, labels, chunk_rows=CHUNK)
    streamed = streamed_clustering(source, labels, stats, seed=3, kmeans_rows=1000, silhouette_rows=1000,
                                   chunk_rows=CHUNK)
    dense = clustering_metrics(x, labels, seed=3)
    _close(streamed, dense, rel=1e-5)
    assert streamed["kmeans_sample_size"] == len(x) and not math.isnan(streamed["davies_bouldin"])


def test_sampled_clustering_reads_the_documented_samples(tmp_path):
    x, labels = sae_like_codes(n=200)
    codes_store = store(x, tmp_path / "codes")
    stats = unit_stats(codes_store, labels, chunk_rows=CHUNK)
    streamed = streamed_clustering(codes_store, labels, stats, seed=4, kmeans_rows=60, silhouette_rows=50,
                                   chunk_rows=CHUNK)
    assert streamed["kmeans_sample_size"] == 60 and streamed["silhouette_sample_size"] == 50
    # the silhouette is scikit-learn's own sampled silhouette (same permutation of the same seed)
    assert streamed["silhouette_labels"] == pytest.approx(
        silhouette_score(x.numpy(), labels.numpy(), sample_size=50, random_state=4), rel=1e-5)
    # the exact-over-all-rows indices do not depend on the samples
    full = clustering_metrics(x, labels, seed=4)
    for key in ("ari_argmax", "argmax_clusters", "argmax_zero_rows", "davies_bouldin", "calinski_harabasz"):
        assert streamed[key] == pytest.approx(full[key], rel=1e-5), key
    assert list(fixed_sample(200, 60, 4)) == sorted(set(fixed_sample(200, 60, 4)))  # sorted, distinct, seeded
    assert np.array_equal(fixed_sample(200, 60, 4), fixed_sample(200, 60, 4))


def test_the_probe_on_stored_codes_equals_the_probe_on_the_dense_matrix(tmp_path):
    x, labels = sae_like_codes(n=120)
    train, test = slice(0, 80), slice(80, 120)
    test_store = store(x[test], tmp_path / "test")
    streamed = probe_accuracy(store(x[train], tmp_path / "train").take(np.arange(80)), labels[train], test_store,
                              labels[test], seed=0, chunk_rows=CHUNK, centre=False)
    assert streamed == linear_probe_accuracy(x[train], labels[train], x[test], labels[test], seed=0, centre=False)
    dense = probe_accuracy(x[train].numpy(), labels[train], DenseRows(x[test]), labels[test], seed=0, chunk_rows=CHUNK)
    assert dense == linear_probe_accuracy(x[train], labels[train], x[test], labels[test], seed=0)  # centred


def test_the_feature_report_streams_to_the_in_memory_report(tmp_path):
    codes, labels = sae_like_codes()
    codes_store = store(codes, tmp_path / "codes")
    stats = unit_stats(codes_store, labels, chunk_rows=CHUNK)
    features = most_active_from_stats(stats, 6)
    assert torch.equal(features, most_active_features(codes, 6))
    streamed = streamed_feature_statistics(codes_store, labels, stats, features, num_classes=5, top_k=4, chunk_rows=CHUNK)
    in_memory_report = feature_statistics(codes, labels, features, num_classes=5, top_k=4)
    assert len(streamed) == len(in_memory_report)
    for got, want in zip(streamed, in_memory_report):
        assert got["mean_activation"] == pytest.approx(want["mean_activation"], rel=1e-6)
        assert {k: v for k, v in got.items() if k != "mean_activation"} == \
            {k: v for k, v in want.items() if k != "mean_activation"}
    assert in_memory_report[0]["label_histogram"][4] == 0  # a class absent from the split counts 0


def test_representation_metrics_on_stored_codes_equal_the_in_memory_computation(tmp_path):
    codes, labels = sae_like_codes(n=150)
    train_codes, test_codes = codes[:100], codes[100:]
    train_labels, test_labels = labels[:100], labels[100:]
    test_store = store(test_codes, tmp_path / "test")
    streamed_rep = Representation(test_store, store(train_codes, tmp_path / "train").take, 100, codes=True)
    sampling = Sampling(chunk_rows=CHUNK)
    streamed, per_unit = representation_metrics({"sae": streamed_rep}, train_labels, test_labels, 0, sampling)
    dense, dense_units = representation_metrics({"sae": in_memory(train_codes, test_codes, codes=True)}, train_labels,
                                                test_labels, 0)
    for family in dense:
        _close(streamed[family], dense[family], rel=1e-5)
    assert torch.allclose(per_unit["sae_pca_2d"], dense_units["sae_pca_2d"], atol=1e-5)
    assert sampling.record(100, 50, 0)["probe_fit_rows"] == 100
