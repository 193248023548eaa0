"""Paired differences: the mean of per-seed differences d_i = value_group,i − value_baseline,i and its Student's t
confidence interval.

For n pairs with differences d_1..d_n (finite numbers, in the metric's own units):

    mean  d̄ = (1/n) Σ d_i
    sd    s = sqrt( Σ (d_i − d̄)² / (n − 1) )             (sample standard deviation, ddof = 1)
    CI    d̄ ± t_{(1+c)/2, n−1} · s / √n                  (c = 0.95: t_{0.975, n−1}, from scipy.stats.t.ppf)

the paired t interval of the mean difference (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, 7.3.1;
Student 1908). It assumes the differences are independent draws from a roughly normal distribution; with the
few seeds of a sweep it is wide, which is the point: an interval that excludes 0 is a difference the seeds
support. One pair gives a mean but no interval (no spread to estimate); no pair gives nothing (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """The paired mean difference of n pairs: `mean` (NaN when n = 0), `sd` and the interval [low, high]
    (NaN when n < 2), at `confidence`."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below 0 (never, without an interval)."""
        return self.has_interval and (self.low > 0 or self.high < 0)


def paired_difference(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedDifference:
    """Mean of `differences` (one per pair, finite) with its Student's t interval (formula in the module
    docstring). ValueError for a non-finite difference or a confidence outside (0, 1)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: give a level in (0, 1), e.g. 0.95")
    d = np.asarray(list(differences), dtype=float)
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite; leave out the pairs whose value is undefined")
    n = int(d.size)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, confidence)
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(1, mean, math.nan, math.nan, math.nan, confidence)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * sd / math.sqrt(n)
    return PairedDifference(n, mean, sd, mean - half, mean + half, confidence)
