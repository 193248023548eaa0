"""How well one model's activations or SAE codes map onto another's, and how many features two SAEs share.

Rows of both inputs are the same N held-out examples, paired. Universality follows Lan et al. 2024, "Sparse
Autoencoders Reveal Universal Feature Spaces Across Large Language Models": pair features by activation
correlation (one-to-one by the Hungarian method, or each feature's best match), then compare the SVCCA (Raghu et al.
2017) of the paired features with a random-pairing null. Inputs are CPU torch tensors of any float dtype; everything
is computed in float64. A column "varies" when its raw values are not all equal (decided before centring, whose
rounding residue would make a constant column look alive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from sae_ception.transfer.concept_alignment import linear_cka


def _rows_match(x, y, name: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} and {len(y)} rows; the rows must be the same examples, paired")


def mean_cosine(pred_NQ: torch.Tensor, true_NQ: torch.Tensor) -> float:
    """Mean over the N rows of cos(pred_i, true_i) = ⟨p, t⟩ / (‖p‖ ‖t‖), in [-1, 1]. Sparse codes have empty rows:
    a row where both are all-zero counts 1 (the empty code is predicted exactly), where exactly one is all-zero 0.
    ValueError when the shapes differ; NaN when N == 0."""
    if pred_NQ.shape != true_NQ.shape:
        raise ValueError(f"mean_cosine: shapes {tuple(pred_NQ.shape)} and {tuple(true_NQ.shape)} differ")
    if len(true_NQ) == 0:
        return float("nan")
    p, t = pred_NQ.double(), true_NQ.double()
    norms = p.norm(dim=1) * t.norm(dim=1)
    cos = torch.where(norms > 0, (p * t).sum(1) / norms.clamp_min(1e-300), torch.zeros_like(norms))
    both_empty = ~p.any(1) & ~t.any(1)
    return float(torch.where(both_empty, torch.ones_like(cos), cos).mean())


def explained_variance(pred_NQ: torch.Tensor, true_NQ: torch.Tensor) -> float:
    """Fraction of the truth's variance explained, R² = 1 − Σ‖y−ŷ‖² / Σ‖y−ȳ‖² (sums over all N rows and Q columns,
    ȳ the column means of `true` over these rows; 1 − FVU). Equals sklearn.metrics.r2_score(true, pred,
    multioutput="variance_weighted") when every column of `true` varies; where a column is constant sklearn drops its
    errors (weight 0), whereas here they count, so a dead feature cannot be mispredicted for free. At most 1, can be
    negative. NaN when `true` does not vary (including N ≤ 1); ValueError when the shapes differ."""
    if pred_NQ.shape != true_NQ.shape:
        raise ValueError(f"explained_variance: shapes {tuple(pred_NQ.shape)} and {tuple(true_NQ.shape)} differ")
    if not alive(true_NQ).any():
        return float("nan")
    p, t = pred_NQ.double(), true_NQ.double()
    total = float((t - t.mean(0)).pow(2).sum())
    return 1.0 - float((t - p).pow(2).sum()) / total


def alive(x_NP: torch.Tensor) -> np.ndarray:
    """(P,) bool: whether each column varies over the N rows (max > min of the raw values). A feature that never
    fires, or is constant, is dead; every column is dead when N ≤ 1; a column holding NaN is dead."""
    if len(x_NP) == 0:
        return np.zeros(x_NP.shape[1], dtype=bool)
    return (x_NP.amax(0) > x_NP.amin(0)).numpy()


def _correlation(x_NP, y_NQ, rows_per_chunk: int, order: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlations of x's columns with those of y[order] (order: a row permutation, or None), in two
    chunked passes (column means, then centred cross-products) so no full float64 copy is made."""
    _rows_match(x_NP, y_NQ, "correlation_matrix")
    if rows_per_chunk < 1:
        raise ValueError(f"correlation_matrix: rows_per_chunk={rows_per_chunk} must be at least 1")
    n, p, q = len(x_NP), x_NP.shape[1], y_NQ.shape[1]
    corr = np.zeros((p, q))
    live_x, live_y = alive(x_NP), alive(y_NQ)
    if not live_x.any() or not live_y.any():
        return corr
    idx = torch.arange(n) if order is None else torch.as_tensor(order)
    starts = range(0, n, rows_per_chunk)
    mean_x = sum(x_NP[s:s + rows_per_chunk].double().sum(0) for s in starts) / n
    mean_y = sum(y_NQ[s:s + rows_per_chunk].double().sum(0) for s in starts) / n  # a permutation keeps the mean
    cross = torch.zeros(p, q, dtype=torch.float64)
    ss_x, ss_y = torch.zeros(p, dtype=torch.float64), torch.zeros(q, dtype=torch.float64)
    for s in starts:
        xc = x_NP[s:s + rows_per_chunk].double() - mean_x
        yc = y_NQ[idx[s:s + rows_per_chunk]].double() - mean_y
        cross += xc.T @ yc
        ss_x += xc.pow(2).sum(0)
        ss_y += yc.pow(2).sum(0)
    denom = torch.sqrt(ss_x)[:, None] * torch.sqrt(ss_y)[None, :]
    live = torch.as_tensor(live_x[:, None] & live_y[None, :]) & (denom > 0)
    corr_t = torch.where(live, cross / denom.clamp_min(1e-300), torch.zeros_like(cross)).clamp(-1.0, 1.0)
    return corr_t.numpy()


def correlation_matrix(x_NP: torch.Tensor, y_NQ: torch.Tensor, rows_per_chunk: int = 8192) -> np.ndarray:
    """(P, Q) float64 Pearson correlations corr(x[:, i], y[:, j]) over the N paired rows (as np.corrcoef), accumulated
    over chunks of `rows_per_chunk` rows: memory O(chunk·(P+Q) + P·Q). A column that does not vary correlates 0 with
    everything. ValueError when the row counts differ."""
    return _correlation(x_NP, y_NQ, rows_per_chunk)


def diagonal_correlations(pred_NQ: torch.Tensor, true_NQ: torch.Tensor) -> np.ndarray:
    """(Q,) float64 corr(pred[:, j], true[:, j]) (Pearson) for each column; 0 where either column does not vary.
    ValueError when the shapes differ."""
    if pred_NQ.shape != true_NQ.shape:
        raise ValueError(f"diagonal_correlations: shapes {tuple(pred_NQ.shape)} and {tuple(true_NQ.shape)} differ")
    p, t = pred_NQ.double(), true_NQ.double()
    p, t = p - p.mean(0), t - t.mean(0)
    denom = p.norm(dim=0) * t.norm(dim=0)
    live = torch.as_tensor(alive(pred_NQ) & alive(true_NQ)) & (denom > 0)
    return torch.where(live, (p * t).sum(0) / denom.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0).numpy()


@dataclass
class Matching:
    """One-to-one pairs of A features (rows) with B features (cols), indices into the ORIGINAL P and Q, sorted by
    correlation descending."""

    rows: np.ndarray  # (K,) int64 indices into A's P features
    cols: np.ndarray  # (K,) int64 indices into B's Q features
    correlations: np.ndarray  # (K,) float64 corr_PQ[rows, cols], descending


def _mask(mask, size: int) -> np.ndarray:
    return np.ones(size, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def match_features(corr_PQ: np.ndarray, alive_a=None, alive_b=None) -> Matching:
    """The one-to-one pairing of alive A features with alive B features that maximises the summed correlation
    (Hungarian method: scipy.optimize.linear_sum_assignment(maximize=True)); min(P_alive, Q_alive) pairs. The
    `alive_*` masks ((P,), (Q,) bool; None: all alive) exclude dead features."""
    corr = np.asarray(corr_PQ, dtype=np.float64)
    ia = np.flatnonzero(_mask(alive_a, corr.shape[0]))
    ib = np.flatnonzero(_mask(alive_b, corr.shape[1]))
    r, c = scipy.optimize.linear_sum_assignment(corr[np.ix_(ia, ib)], maximize=True)
    rows, cols = ia[r].astype(np.int64), ib[c].astype(np.int64)
    values = corr[rows, cols]
    order = np.argsort(-values, kind="stable")
    return Matching(rows[order], cols[order], values[order])


def best_correlations(corr_PQ: np.ndarray, alive_a=None, alive_b=None) -> np.ndarray:
    """(P_alive,) float64: each alive A feature's largest (signed) correlation over the alive B features, the
    many-to-one "best match" of Lan et al. 2024; in the order of A's alive features; NaN when no B feature is alive."""
    corr = np.asarray(corr_PQ, dtype=np.float64)
    sub = corr[np.ix_(np.flatnonzero(_mask(alive_a, corr.shape[0])), np.flatnonzero(_mask(alive_b, corr.shape[1])))]
    return sub.max(1) if sub.shape[1] else np.full(sub.shape[0], np.nan)


def shuffled_null(x_NP: torch.Tensor, y_NQ: torch.Tensor, seed: int, rows_per_chunk: int = 8192) -> np.ndarray:
    """(P, Q) correlation_matrix(x, y[π]) with π a permutation of the N rows drawn by np.random.default_rng(seed):
    the null for best/matched correlations (each feature keeps its marginal distribution, the pairing of examples
    is broken), so best_correlations/match_features on it give the chance level of their scores."""
    _rows_match(x_NP, y_NQ, "shuffled_null")
    return _correlation(x_NP, y_NQ, rows_per_chunk, np.random.default_rng(seed).permutation(len(y_NQ)))


def count_above(values: np.ndarray, thresholds: Sequence[float]) -> dict[str, int]:
    """{f"{t:g}": #(values > t)} for each threshold t (strictly greater; NaN never counts), e.g. {"0.5": 12}."""
    v = np.asarray(values, dtype=np.float64)
    return {f"{t:g}": int(np.sum(v > t)) for t in thresholds}


def _top_directions(x_NP: torch.Tensor, keep_variance: float) -> np.ndarray:
    """Orthonormal basis (N, k) of the centred x's top singular directions explaining keep_variance of its variance
    (k at most the numerical rank, so directions of zero variance never enter)."""
    x = x_NP.double().numpy()
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    rank = int(np.sum(s > s[0] * max(x.shape) * np.finfo(np.float64).eps))
    fraction = np.cumsum(s ** 2) / np.sum(s ** 2)
    k = min(int(np.searchsorted(fraction, keep_variance - 1e-12)) + 1, rank)
    return u[:, :k]


def svcca(x_NP: torch.Tensor, y_NQ: torch.Tensor, keep_variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): centre each side over the N rows, keep its top singular directions explaining
    `keep_variance` of its variance (SVD), then the mean of the min(k_x, k_y) canonical correlations of the two
    reduced matrices, which are the cosines of the principal angles between their column spaces
    (scipy.linalg.subspace_angles; Björck & Golub 1973). In [0, 1]; invariant to invertible linear maps of either
    side (up to the truncation). Needs N well above k_x + k_y (else correlations are near 1 by chance).
    NaN when a side does not vary; ValueError when N differs or keep_variance is not in (0, 1]."""
    _rows_match(x_NP, y_NQ, "svcca")
    if not 0 < keep_variance <= 1:
        raise ValueError(f"svcca: keep_variance={keep_variance} must be in (0, 1]")
    if not alive(x_NP).any() or not alive(y_NQ).any():
        return float("nan")
    angles = scipy.linalg.subspace_angles(_top_directions(x_NP, keep_variance), _top_directions(y_NQ, keep_variance))
    return float(np.mean(np.cos(angles)))


def _random_columns(x_NP, y_NQ, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct alive columns of x and of y, drawn by np.random.default_rng(seed) (x's first)."""
    rng = np.random.default_rng(seed)
    ax, ay = np.flatnonzero(alive(x_NP)), np.flatnonzero(alive(y_NQ))
    if count > min(len(ax), len(ay)):
        raise ValueError(f"random pairing: count={count} but only {len(ax)} and {len(ay)} alive features")
    return rng.choice(ax, count, replace=False), rng.choice(ay, count, replace=False)


def random_pairing_svcca(x_NP: torch.Tensor, y_NQ: torch.Tensor, count: int, seed: int,
                         keep_variance: float = 0.99) -> float:
    """Lan et al. 2024's null: svcca between `count` random alive columns of x and `count` random alive columns of
    y (drawn without replacement by np.random.default_rng(seed)). ValueError when either side has fewer than
    `count` alive columns; NaN when count == 0."""
    cols_x, cols_y = _random_columns(x_NP, y_NQ, count, seed)
    return svcca(x_NP[:, cols_x], y_NQ[:, cols_y], keep_variance)


def paired_similarity(x_NP: torch.Tensor, y_NQ: torch.Tensor, matching: Matching, seed: int,
                      keep_variance: float = 0.99) -> dict[str, float]:
    """Similarity of the matched features against a random pairing of as many alive features (Lan et al. 2024):
    {"svcca": svcca(x[:, rows], y[:, cols]), "svcca_random": the same on random columns (random_pairing_svcca with
    `seed`), "cka": linear_cka(x[:, rows], y[:, cols]) (Kornblith et al. 2019, the product's
    transfer.concept_alignment.linear_cka), "cka_random": linear_cka on the same random columns}."""
    rows, cols = torch.as_tensor(matching.rows, dtype=torch.long), torch.as_tensor(matching.cols, dtype=torch.long)
    rand_x, rand_y = _random_columns(x_NP, y_NQ, len(rows), seed)
    xm, ym, xr, yr = x_NP[:, rows], y_NQ[:, cols], x_NP[:, rand_x], y_NQ[:, rand_y]
    return {"svcca": svcca(xm, ym, keep_variance), "svcca_random": svcca(xr, yr, keep_variance),
            "cka": linear_cka(xm, ym), "cka_random": linear_cka(xr, yr)}
