"""Do examples of one class sit together in a representation? k-means agreement and cluster-quality indices.

k-means, ARI, silhouette and Davies-Bouldin come from scikit-learn. SAE codes are mostly zeros, so when
at most `SPARSE_DENSITY` of the entries are non-zero they are handed to k-means and silhouette as a CSR
matrix: the same algorithms, an order of magnitude faster at 50k x 4096. Silhouette is O(N^2), so above
`silhouette_sample` examples it is computed on a fixed-seed sample (the result records the sample size).
Calinski-Harabasz is computed here in two vectorised passes (scikit-learn's loops over classes on copies).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score

NAN = float("nan")
SPARSE_DENSITY = 0.1


def calinski_harabasz(features_NF: torch.Tensor, labels_N: torch.Tensor) -> float:
    """(B / (k − 1)) / (W / (N − k)): B = Σ_k n_k ‖μ_k − μ‖², W = Σ_i ‖x_i − μ_{y_i}‖² (float64 sums).
    1.0 when W = 0 (every class at one point), as scikit-learn defines it."""
    x = features_NF.detach().double()
    classes, y = torch.unique(labels_N.to(x.device), return_inverse=True)
    k, n = len(classes), len(y)
    counts = torch.bincount(y, minlength=k).double()
    means_KF = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x) / counts[:, None]
    between = float((counts * ((means_KF - x.mean(0)) ** 2).sum(1)).sum())
    within = float(((x - means_KF[y]) ** 2).sum())
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def distinct_rows(x) -> int:
    """How many different rows (a fixed random projection to float64 separates distinct rows almost surely)."""
    direction = np.random.default_rng(0).standard_normal(x.shape[1])
    return len(np.unique(np.asarray(x @ direction).ravel()))


def clustering_metrics(
    features_NF: torch.Tensor, labels_N: torch.Tensor, seed: int, silhouette_sample: int = 10_000, n_init: int = 3
) -> dict[str, float]:
    """ARI of k-means (k = classes present) against the labels; silhouette with the labels and with the
    k-means clusters; Davies-Bouldin and Calinski-Harabasz of the labels' partition. NaN where undefined
    (fewer than two classes, or every example at the same point)."""
    dense = features_NF.detach().float().cpu().numpy()  # float32: half the memory traffic of float64
    y = labels_N.cpu().numpy()
    k = len(np.unique(y))
    n = len(y)
    sample = min(n, silhouette_sample)
    out = {"ari_kmeans": NAN, "silhouette_labels": NAN, "silhouette_kmeans": NAN,
           "davies_bouldin": NAN, "calinski_harabasz": NAN, "silhouette_sample_size": sample}
    x = sparse.csr_matrix(dense) if np.count_nonzero(dense) <= SPARSE_DENSITY * dense.size else dense
    distinct = distinct_rows(x)
    if k < 2 or distinct < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means warns when there are fewer distinct points than k
        clusters = KMeans(n_clusters=min(k, distinct), n_init=n_init, random_state=seed).fit_predict(x)
    out["ari_kmeans"] = adjusted_rand_score(y, clusters)
    sample_size = sample if sample < n else None
    out["silhouette_labels"] = silhouette_score(x, y, sample_size=sample_size, random_state=seed)
    if len(np.unique(clusters)) >= 2:
        out["silhouette_kmeans"] = silhouette_score(x, clusters, sample_size=sample_size, random_state=seed)
    out["davies_bouldin"] = davies_bouldin_score(dense, y)
    out["calinski_harabasz"] = calinski_harabasz(features_NF.detach().cpu(), labels_N.cpu())
    return {key: float(value) for key, value in out.items()}
