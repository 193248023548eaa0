"""`clustering_metrics` on a RowSource of any size: the same keys and definitions, in memory bounded by a chunk
of rows and the fixed-seed samples below, never the N x U matrix.

Exact over every row (one streamed pass): `ari_argmax` and its counts, whether rows are distinct,
Davies-Bouldin and Calinski-Harabasz of the labels' partition (class means from `unit_stats`, then each row's
distance to its class mean). On fixed-seed samples (the whole split when it is no larger; the sizes are
recorded): k-means is fitted on `kmeans_rows` rows (sorted sample, seed = the evaluation seed) and then assigns
every row, so `ari_kmeans` scores all N; the silhouettes use scikit-learn's own sample of `silhouette_rows`
rows (the permutation `silhouette_score(sample_size=...)` draws). On a split no larger than both samples every
number equals `clustering_metrics` on the dense matrix.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_random_state

from sae_ception.evaluation.clustering import (NAN, SPARSE_DENSITY, adjusted_rand_or_nan, partition_is_scorable,
                                               row_hashes, silhouette)
from sae_ception.evaluation.rows import CHUNK_ROWS, Block, RowSource
from sae_ception.evaluation.unit_stats import UnitStats


def as_fitted(block: Block) -> Block:
    """The format `clustering_metrics` hands scikit-learn: CSR when at most SPARSE_DENSITY of the entries are
    non-zero, else a dense float32 array."""
    size = block.shape[0] * block.shape[1]
    nonzero = block.nnz if sparse.issparse(block) else np.count_nonzero(block)
    if nonzero <= SPARSE_DENSITY * size:
        return block if sparse.issparse(block) else sparse.csr_matrix(block)
    return block.toarray() if sparse.issparse(block) else block


def fixed_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Every row (in order) when n <= size, else `size` rows drawn with `seed`, sorted."""
    if n <= size:
        return np.arange(n)
    return np.sort(check_random_state(seed).permutation(n)[:size])


def _distances_to_class_means(block: Block, y: np.ndarray, means_CU: np.ndarray, sq_means_C: np.ndarray) -> np.ndarray:
    """‖x_i − μ_{y_i}‖² per row (float64)."""
    if not sparse.issparse(block):
        return ((block.astype(np.float64) - means_CU[y]) ** 2).sum(1)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    mu = means_CU[y[rows], block.indices]
    stored = np.bincount(rows, (block.data - mu) ** 2 - mu ** 2, minlength=block.shape[0])
    return np.maximum(sq_means_C[y] + stored, 0.0)


def _argmax(block: Block) -> np.ndarray:
    """numpy's argmax per row (first of tied units; a row of zeros goes to unit 0), implicit zeros included."""
    return np.asarray(block.argmax(axis=1)).ravel()


def _davies_bouldin(intra_C: np.ndarray, means_CU: np.ndarray) -> float:
    """scikit-learn's `davies_bouldin_score` from per-class mean distances to the class mean and the means."""
    centroid_distances = pairwise_distances(means_CU)
    if np.allclose(intra_C, 0) or np.allclose(centroid_distances, 0):
        return 0.0
    centroid_distances[centroid_distances == 0] = np.inf
    return float(np.mean(np.max((intra_C[:, None] + intra_C[None, :]) / centroid_distances, axis=1)))


def streamed_clustering(source: RowSource, labels_N: torch.Tensor, stats: UnitStats, seed: int,
                        kmeans_rows: int = 50_000, silhouette_rows: int = 10_000, n_init: int = 3,
                        chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """The `clustering_*` family of `source` [N, U] (NaN where `clustering_metrics` gives NaN), plus
    `kmeans_sample_size`. `stats`: `unit_stats(source, labels_N)` (its class sums give the class means)."""
    y = labels_N.cpu().numpy()
    n, units = source.shape
    k = len(np.unique(y))
    out = {"ari_kmeans": NAN, "ari_argmax": NAN, "silhouette_labels": NAN, "silhouette_kmeans": NAN,
           "davies_bouldin": NAN, "calinski_harabasz": NAN, "silhouette_sample_size": min(n, silhouette_rows),
           "kmeans_sample_size": min(n, kmeans_rows), "argmax_clusters": NAN, "argmax_zero_rows": NAN}
    if n == 0 or units == 0:
        return {key: float(value) for key, value in out.items()}
    _, class_of = np.unique(y, return_inverse=True)
    means_CU = (stats.sums_CU / stats.counts_C[:, None]).numpy()
    sq_means_C = (means_CU ** 2).sum(1)
    hashes, by_argmax, sq_dist = (np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.int64), np.empty(n))
    zero_rows = 0
    for start, block in source.chunks(chunk_rows):
        rows = slice(start, start + block.shape[0])
        hashes[rows], by_argmax[rows] = row_hashes(block), _argmax(block)
        sq_dist[rows] = _distances_to_class_means(block, class_of[rows], means_CU, sq_means_C)
        zero_rows += int(np.count_nonzero(np.diff(block.indptr) == 0)) if sparse.issparse(block) else \
            int((~block.any(1)).sum())
    if k < 2 or len(np.unique(hashes)) < 2:
        return {key: float(value) for key, value in out.items()}
    fit_rows = fixed_sample(n, kmeans_rows, seed)
    x_fit = as_fitted(source.take(fit_rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means warns when there are fewer distinct points than k
        kmeans = KMeans(n_clusters=min(k, len(np.unique(row_hashes(x_fit)))), n_init=n_init, random_state=seed)
        kmeans.fit(x_fit)
    if len(fit_rows) == n:
        clusters = kmeans.labels_
    else:
        clusters = np.concatenate([kmeans.predict(as_fitted(block)) for _, block in source.chunks(chunk_rows)])
    out["ari_kmeans"], out["ari_argmax"] = adjusted_rand_or_nan(y, clusters), adjusted_rand_or_nan(y, by_argmax)
    if not math.isnan(out["ari_argmax"]):  # the counts describe the clusters that ARI scored
        out["argmax_clusters"], out["argmax_zero_rows"] = len(np.unique(by_argmax)), zero_rows
    if silhouette_rows < n:
        rows = check_random_state(seed).permutation(n)[:silhouette_rows]  # the sample silhouette_score draws
        x_sil = as_fitted(source.take(rows))
    else:
        rows = np.arange(n)
        x_sil = x_fit if len(fit_rows) == n else as_fitted(source.take(rows))
    out["silhouette_labels"] = silhouette(x_sil, y[rows], None, seed)
    out["silhouette_kmeans"] = silhouette(x_sil, clusters[rows], None, seed)
    counts_C = stats.counts_C.numpy()
    if partition_is_scorable(y):
        intra_C = np.bincount(class_of, np.sqrt(sq_dist), minlength=k) / counts_C
        out["davies_bouldin"] = _davies_bouldin(intra_C, means_CU)
    if 2 <= k <= n - 1:  # Calinski-Harabasz, as `clustering.calinski_harabasz` defines it
        grand_U = (stats.sums_CU.sum(0) / n).numpy()
        between, within = float((counts_C * ((means_CU - grand_U) ** 2).sum(1)).sum()), float(sq_dist.sum())
        out["calinski_harabasz"] = 1.0 if within == 0 else between * (n - k) / (within * (k - 1))
    return {key: float(value) for key, value in out.items()}
