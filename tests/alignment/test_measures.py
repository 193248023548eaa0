"""Alignment and universality measures (src/sae_ception/alignment/measures.py) against hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from sae_ception.alignment.measures import (
    Matching, alive, best_correlations, correlation_matrix, count_above, diagonal_correlations, explained_variance,
    match_features, mean_cosine, paired_similarity, random_pairing_svcca, shuffled_null, svcca,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_mean_cosine_counts_empty_rows():
    pred = t([[3, 4], [0, 0], [1, 2], [1, 0]])
    true = t([[4, 3], [0, 0], [0, 0], [-1, 1]])
    # cos: 24/25; both empty 1; one-sided empty 0; -1/sqrt(2)
    assert mean_cosine(pred[:3], true[:3]) == pytest.approx((0.96 + 1 + 0) / 3, abs=1e-12)
    assert mean_cosine(pred, true) == pytest.approx((0.96 + 1 + 0 - 1 / math.sqrt(2)) / 4, abs=1e-7)
    assert math.isnan(mean_cosine(pred[:0], true[:0]))
    with pytest.raises(ValueError):
        mean_cosine(pred, true[:, :1])


def test_explained_variance():
    true = t([[1, 0], [2, 2], [3, 4]])  # column means (2, 2); Σ‖y − ȳ‖² = (1+0+1) + (4+0+4) = 10
    assert explained_variance(true, true) == 1.0
    assert explained_variance(t([[2, 2]] * 3), true) == pytest.approx(0.0, abs=1e-12)
    pred = t([[1, 1], [2, 2], [2, 4]])  # squared errors 1 + 1 = 2
    assert explained_variance(pred, true) == pytest.approx(1 - 2 / 10, abs=1e-12)
    assert r2_score(true.numpy(), pred.numpy(), multioutput="variance_weighted") == pytest.approx(0.8)
    # a constant (dead) truth column: its error (1) counts here, where sklearn would drop it
    true3, pred3 = torch.cat([true, t([[5]] * 3)], 1), torch.cat([pred, t([[5], [5], [6]])], 1)
    assert explained_variance(pred3, true3) == pytest.approx(1 - 3 / 10, abs=1e-12)
    assert math.isnan(explained_variance(pred, t([[0.1, 7]] * 3)))
    assert math.isnan(explained_variance(pred[:1], true[:1]))


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 100])
def test_correlation_matrix_matches_corrcoef(chunk):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 5, generator=gen) * 3 + 10, torch.randn(37, 4, generator=gen)
    y[:, 0] += x[:, 1]
    x[:, 2], y[:, 3] = 0.1, 3.0  # constant columns
    got = correlation_matrix(x, y, rows_per_chunk=chunk)
    with np.errstate(invalid="ignore"):  # corrcoef divides by the constant columns' zero deviation
        want = np.corrcoef(x.double().numpy().T, y.double().numpy().T)[:5, 5:]
    live = np.ones((5, 4), dtype=bool)
    live[2, :], live[:, 3] = False, False
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got[live], want[live], atol=1e-12)
    assert (got[~live] == 0).all()
    assert alive(x).tolist() == [True, True, False, True, True]


def test_correlation_matrix_row_mismatch():
    with pytest.raises(ValueError):
        correlation_matrix(torch.zeros(3, 2), torch.zeros(4, 2))


def test_diagonal_correlations():
    pred = t([[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
    true = t([[2, 3, 1, 5], [4, 2, 3, 5], [6, 1, 2, 5]])
    # centred [-1,0,1] against [-2,0,2] -> 1; [1,0,-1] -> -1; [-1,1,0] -> 1/(√2·√2) = 0.5; constant -> 0
    np.testing.assert_allclose(diagonal_correlations(pred, true), [1, -1, 0.5, 0], atol=1e-12)


CORR = np.array([[0.9, 0.8, 0.0],
                 [0.8, 0.0, 0.0],
                 [0.0, 0.0, 0.5]])


def test_match_features_hungarian_beats_greedy():
    # greedy takes (0,0)=0.9 then (2,2)=0.5, (1,1)=0: total 1.4; the optimum is (0,1)+(1,0)+(2,2) = 2.1
    m = match_features(CORR)
    assert m.rows.tolist() == [0, 1, 2] and m.cols.tolist() == [1, 0, 2]
    np.testing.assert_allclose(m.correlations, [0.8, 0.8, 0.5])


def test_match_features_dead_and_rectangular():
    # B feature 0 dead: rows 0..2 against cols {1, 2}: (0,1)=0.8 + (2,2)=0.5 is the best of the 2-pair choices
    m = match_features(CORR, alive_b=np.array([False, True, True]))
    assert m.rows.tolist() == [0, 2] and m.cols.tolist() == [1, 2]
    m = match_features(CORR, alive_a=np.array([True, False, True]), alive_b=np.array([True, True, False]))
    # rows {0, 2} x cols {0, 1}: (0,0)+(2,1) = 0.9 beats (0,1)+(2,0) = 0.8; min(2, 2) pairs, a 0 one included
    assert m.rows.tolist() == [0, 2] and m.cols.tolist() == [0, 1]
    np.testing.assert_allclose(m.correlations, [0.9, 0.0])
    wide = np.array([[0.1, 0.7, 0.6, 0.0],
                     [0.2, 0.65, 0.3, 0.0]])
    # (0,2)+(1,1) = 1.25 beats (0,1)+(1,2) = 1.0, (0,1)+(1,0) = 0.9, (0,0)+(1,1) = 0.75
    m = match_features(wide)
    assert m.rows.tolist() == [1, 0] and m.cols.tolist() == [1, 2]
    np.testing.assert_allclose(m.correlations, [0.65, 0.6])
    m = match_features(wide.T)
    assert m.rows.tolist() == [1, 2] and m.cols.tolist() == [1, 0]


def test_best_correlations_and_count_above():
    np.testing.assert_allclose(best_correlations(CORR), [0.9, 0.8, 0.5])
    np.testing.assert_allclose(best_correlations(CORR, alive_b=np.array([False, True, True])), [0.8, 0.0, 0.5])
    np.testing.assert_allclose(best_correlations(CORR, alive_a=np.array([True, False, True])), [0.9, 0.5])
    np.testing.assert_allclose(best_correlations(-np.abs(CORR) - 0.1), [-0.1, -0.1, -0.1])
    values = np.array([0.5, 0.7, 0.9, 0.49, np.nan])
    assert count_above(values, [0.5, 0.7, 0.0]) == {"0.5": 2, "0.7": 1, "0": 4}


def test_shuffled_null():
    a = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1))
    x, y = torch.cat([a, a ** 2], 1), torch.cat([2 * a + 1, -a], 1)
    assert correlation_matrix(x, y)[0].tolist() == pytest.approx([1, -1])
    null = shuffled_null(x, y, seed=3, rows_per_chunk=3000)
    np.testing.assert_array_equal(null, shuffled_null(x, y, seed=3, rows_per_chunk=3000))
    np.testing.assert_allclose(null, shuffled_null(x, y, seed=3), atol=1e-12)  # chunking changes only rounding
    assert not np.array_equal(null, shuffled_null(x, y, seed=4))
    assert np.abs(null).max() < 0.05  # ~1/sqrt(N) = 0.007 under the null
    perm = np.random.default_rng(3).permutation(20000)
    want = np.corrcoef(x.double().numpy().T, y.double().numpy()[perm].T)[:2, 2:]
    np.testing.assert_allclose(null, want, atol=1e-12)


def test_svcca_invariance_and_independence():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 4, generator=gen) @ torch.randn(4, 4, generator=gen)
    mix = torch.randn(4, 4, generator=gen) + 3 * torch.eye(4)
    assert svcca(x, x @ mix, keep_variance=1.0) == pytest.approx(1.0, abs=1e-8)
    assert svcca(torch.randn(5000, 4, generator=gen), torch.randn(5000, 4, generator=gen)) < 0.1
    assert math.isnan(svcca(x, torch.ones(500, 3)))
    with pytest.raises(ValueError):
        svcca(x, x[:10])


def test_svcca_known_canonical_correlations_and_truncation():
    a, b, c = torch.randn(3, 20000, 1, generator=torch.Generator().manual_seed(5)).double()
    # span{a, b} and span{a, c} share a: canonical correlations 1 and ~0, mean 0.5
    assert svcca(torch.cat([a, b], 1), torch.cat([a, c], 1)) == pytest.approx(0.5, abs=0.02)
    tiny = torch.cat([a, 1e-3 * b], 1)  # the b direction holds ~1e-6 of x's variance
    assert svcca(tiny, torch.cat([a, c], 1), keep_variance=1.0) == pytest.approx(0.5, abs=0.02)
    assert svcca(tiny, torch.cat([a, c], 1), keep_variance=0.99) == pytest.approx(1.0, abs=1e-4)


def test_paired_similarity_planted_permutation():
    gen = torch.Generator().manual_seed(7)
    n = 4000
    x = torch.relu(torch.randn(n, 10, generator=gen) - 0.5) * torch.linspace(0.5, 3, 10)
    perm = torch.tensor([3, 0, 4, 1, 2])  # y[:, 5 + j] copies x[:, perm[j]]; y's other columns are new features
    y = torch.cat([torch.relu(torch.randn(n, 5, generator=gen)), x[:, perm]], 1)
    y = y + 1e-3 * torch.randn(n, 10, generator=gen)
    m = match_features(correlation_matrix(x, y), alive(x), alive(y))
    assert sorted(zip(m.rows[:5].tolist(), m.cols[:5].tolist())) == sorted((int(p), 5 + j) for j, p in enumerate(perm))
    assert m.correlations[4] > 0.99 and np.abs(m.correlations[5:]).max() < 0.1
    shared = Matching(m.rows[:5], m.cols[:5], m.correlations[:5])  # Lan et al. keep pairs above a threshold
    sim = paired_similarity(x, y, shared, seed=0)
    assert sim["svcca"] > 0.999 and sim["cka"] > 0.999
    assert sim["svcca_random"] < 0.7 and sim["cka_random"] < 0.7
    assert sim["svcca_random"] == random_pairing_svcca(x, y, 5, seed=0)
    with pytest.raises(ValueError):
        random_pairing_svcca(x, y, 11, seed=0)
