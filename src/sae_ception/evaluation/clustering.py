"""Do examples of one class sit together in a representation? k-means agreement and cluster-quality indices.

k-means, ARI, silhouette and Davies-Bouldin come from scikit-learn. SAE codes are mostly zeros, so when
at most `SPARSE_DENSITY` of the entries are non-zero they are handed to k-means and silhouette as a CSR
matrix: the same algorithms, an order of magnitude faster at 50k x 4096. Silhouette is O(N^2), so above
`silhouette_sample` examples it is computed on a fixed-seed sample (the result records the sample size).
Calinski-Harabasz is computed here in two vectorised passes (scikit-learn's loops over classes on copies).

Every index is NaN (null in the results file) where it is undefined instead of raising, so tiny splits
(a 2-example test split, a class with one example) still get a results file: see `clustering_metrics`.

`ari_argmax` is the paper's "ARI" (github.com/Alex-Bishka/SAE-ception, `DIGIT-MNIST/cluster_metrics.py`; the same
in `CIFAR-10/` and `ImageNet1K/features_cluster_metrics.py`): each example's cluster is its largest unit, not a
k-means cluster. Calinski-Harabasz grows with the number of examples (the factor (N − k)): compare it at equal N.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score
from sklearn.utils import check_random_state

NAN = float("nan")
SPARSE_DENSITY = 0.1


def calinski_harabasz(features_NF: torch.Tensor, labels_N: torch.Tensor) -> float:
    """(B / (k − 1)) / (W / (N − k)): B = Σ_k n_k ‖μ_k − μ‖², W = Σ_i ‖x_i − μ_{y_i}‖² (float64 sums).
    1.0 when W = 0 (every class at one point), as scikit-learn defines it; NaN when the number of classes
    k is not in [2, N − 1] (scikit-learn raises there: B/(k − 1) or W/(N − k) is 0/0)."""
    x = features_NF.detach().double()
    classes, y = torch.unique(labels_N.to(x.device), return_inverse=True)
    k, n = len(classes), len(y)
    if not 2 <= k <= n - 1:
        return NAN
    counts = torch.bincount(y, minlength=k).double()
    means_KF = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x) / counts[:, None]
    between = float((counts * ((means_KF - x.mean(0)) ** 2).sum(1)).sum())
    within = float(((x - means_KF[y]) ** 2).sum())
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def row_hashes(x) -> np.ndarray:
    """[N] uint64 hash of each row (dense array or CSR matrix). Each row's float32 bit patterns are hashed with
    fixed random odd 64-bit weights in wrapping integer arithmetic: exact and independent of summation order, so
    identical rows always hash alike (a float projection can round identical rows apart) and distinct rows
    collide with probability about 2^-64. -0.0 counts as 0.0, and a stored zero as an absent one."""
    n, f = x.shape
    weights_F = np.random.default_rng(0).integers(0, 2**63, size=f, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def bits(values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float32) + np.float32(0)).view(np.uint32).astype(np.uint64)

    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        terms = bits(x.data) * weights_F[x.indices]
        hashes = np.zeros(n, dtype=np.uint64)
        filled = np.diff(x.indptr) > 0
        if filled.any():
            hashes[filled] = np.add.reduceat(terms, x.indptr[:-1][filled])
        return hashes
    step = max(1, 2**21 // max(f, 1))  # bounds the (rows, F) uint64 temporary to 16 MB
    return np.concatenate([(bits(x[i:i + step]) * weights_F).sum(1, dtype=np.uint64) for i in range(0, n, step)]
                          or [np.zeros(0, dtype=np.uint64)])


def distinct_rows(x) -> int:
    """How many different rows (dense array or CSR matrix), by `row_hashes`."""
    return len(np.unique(row_hashes(x)))


def partition_is_scorable(labels: np.ndarray) -> bool:
    """Silhouette, Davies-Bouldin and Calinski-Harabasz need 2 <= (number of groups) <= N − 1: with one group
    there is no "other" group, with N groups of one example there is no within-group spread."""
    return 2 <= len(np.unique(labels)) <= len(labels) - 1


def silhouette(x, labels: np.ndarray, sample_size: int | None, seed: int) -> float:
    """scikit-learn's silhouette score (the same fixed-seed sample when `sample_size` < N), NaN where the
    sample's partition is not scorable instead of a ValueError."""
    if sample_size is not None and sample_size < len(labels):
        indices = check_random_state(seed).permutation(len(labels))[:sample_size]  # as silhouette_score samples
        x, labels = x[indices], labels[indices]
    if not partition_is_scorable(labels):
        return NAN
    return float(silhouette_score(x, labels))


def argmax_clusters(features_NF: np.ndarray) -> np.ndarray:
    """[N] cluster of each example as the paper assigns it: the index of its largest unit (numpy's argmax, so
    the first of tied units: a row of zeros, an example on which no latent fires, goes to unit 0)."""
    return np.argmax(features_NF, axis=1)


def adjusted_rand_or_nan(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted Rand index, NaN when every example is its own class and its own cluster (0/0)."""
    if len(np.unique(labels)) == len(labels) and len(np.unique(clusters)) == len(labels):
        return NAN
    return adjusted_rand_score(labels, clusters)


def clustering_metrics(
    features_NF: torch.Tensor, labels_N: torch.Tensor, seed: int, silhouette_sample: int = 10_000, n_init: int = 3
) -> dict[str, float]:
    """ARI of k-means (k = classes present) and of argmax clusters (`argmax_clusters`) against the labels;
    silhouette with the labels and with the k-means clusters; Davies-Bouldin and Calinski-Harabasz of the
    labels' partition; how many argmax clusters there are and how many rows are all zero (put in cluster 0).
    NaN where undefined: every index when fewer than two classes are present or every example sits at the same
    point; the silhouettes, Davies-Bouldin and Calinski-Harabasz when their partition does not have 2..N−1
    groups (e.g. a 2-example split of 2 classes); an ARI when every example is its own class and its own
    cluster (0/0); the argmax counts wherever `ari_argmax` is (they describe the clusters it scored)."""
    dense = features_NF.detach().float().cpu().numpy()  # float32: half the memory traffic of float64
    y = labels_N.cpu().numpy()
    k = len(np.unique(y))
    n = len(y)
    sample = min(n, silhouette_sample)
    out = {"ari_kmeans": NAN, "ari_argmax": NAN, "silhouette_labels": NAN, "silhouette_kmeans": NAN,
           "davies_bouldin": NAN, "calinski_harabasz": NAN, "silhouette_sample_size": sample,
           "argmax_clusters": NAN, "argmax_zero_rows": NAN}
    if n == 0 or dense.ndim != 2 or dense.shape[1] == 0:
        return {key: float(value) for key, value in out.items()}
    x = sparse.csr_matrix(dense) if np.count_nonzero(dense) <= SPARSE_DENSITY * dense.size else dense
    distinct = distinct_rows(x)
    if k < 2 or distinct < 2:
        return {key: float(value) for key, value in out.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means warns when there are fewer distinct points than k
        clusters = KMeans(n_clusters=min(k, distinct), n_init=n_init, random_state=seed).fit_predict(x)
    by_argmax = argmax_clusters(dense)
    out["ari_kmeans"], out["ari_argmax"] = adjusted_rand_or_nan(y, clusters), adjusted_rand_or_nan(y, by_argmax)
    if not math.isnan(out["ari_argmax"]):  # the counts describe the clusters that ARI scored
        out["argmax_clusters"], out["argmax_zero_rows"] = len(np.unique(by_argmax)), n - np.count_nonzero(dense.any(1))
    sample_size = sample if sample < n else None
    out["silhouette_labels"] = silhouette(x, y, sample_size, seed)
    out["silhouette_kmeans"] = silhouette(x, clusters, sample_size, seed)
    if partition_is_scorable(y):
        out["davies_bouldin"] = davies_bouldin_score(dense, y)
    out["calinski_harabasz"] = calinski_harabasz(features_NF.detach().cpu(), labels_N.cpu())
    return {key: float(value) for key, value in out.items()}
