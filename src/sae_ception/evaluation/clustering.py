"""Do examples of one class sit together in a representation? k-means agreement and cluster-quality indices.

All four indices come from scikit-learn. Silhouette is O(N^2), so above `silhouette_sample` examples it
is computed on a fixed-seed sample (the result records the sample size).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

NAN = float("nan")


def clustering_metrics(
    features_NF: torch.Tensor, labels_N: torch.Tensor, seed: int, silhouette_sample: int = 10_000, n_init: int = 3
) -> dict[str, float]:
    """ARI of k-means (k = classes present) against the labels; silhouette with the labels and with the
    k-means clusters; Davies-Bouldin and Calinski-Harabasz of the labels' partition. NaN where undefined
    (fewer than two classes, or every example at the same point)."""
    x = features_NF.detach().float().cpu().numpy()  # float32: half the memory traffic of float64
    y = labels_N.cpu().numpy()
    k = len(np.unique(y))
    n = len(y)
    sample = min(n, silhouette_sample)
    out = {"ari_kmeans": NAN, "silhouette_labels": NAN, "silhouette_kmeans": NAN,
           "davies_bouldin": NAN, "calinski_harabasz": NAN, "silhouette_sample_size": sample}
    distinct_points = len(np.unique(x, axis=0)) if n <= 100_000 else n
    if k < 2 or distinct_points < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means warns when there are fewer distinct points than k
        clusters = KMeans(n_clusters=min(k, distinct_points), n_init=n_init, random_state=seed).fit_predict(x)
    out["ari_kmeans"] = adjusted_rand_score(y, clusters)
    out["silhouette_labels"] = silhouette_score(x, y, sample_size=sample if sample < n else None, random_state=seed)
    if len(np.unique(clusters)) >= 2:
        out["silhouette_kmeans"] = silhouette_score(x, clusters, sample_size=sample if sample < n else None, random_state=seed)
    out["davies_bouldin"] = davies_bouldin_score(x, y)
    out["calinski_harabasz"] = calinski_harabasz_score(x, y)
    return {key: float(value) for key, value in out.items()}
