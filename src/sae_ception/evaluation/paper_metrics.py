"""CSI and U as the paper's public code and the SAE-ception-2.0 code define them, each under its own name.

Sources, re-derived from the formulas (not copied):
- the paper: github.com/Alex-Bishka/SAE-ception (commit 4005130), `DIGIT-MNIST/interp_metrics.py`; the same
  loop is in `CIFAR-10/interp_metrics.py` and `ImageNet1K/interp_metrics.py`. It prints "Mean
  class-selectivity" (`csi_paper`) and "Mean class-selectivity (normalized MI)" (`u_paper`, the README's "MI-CSI");
- the 2.0 code: github.com/Alex-Bishka/SAE-ception-2.0 (commit 1c6a788),
  `src/sae_ception/evaluation/interpretability.py`, `uncertainty_coefficient` (`u_v2`).

How they differ from `monosemanticity.py` (whose `csi`/`u` are unchanged):
- a unit with nothing to measure ("dead", defined per variant in each function) scores 0 and stays in the mean,
  where ours leaves it out; every variant reports its `live_units` beside its mean;
- `csi_paper` rectifies (max(a, 0)) where ours measures from the unit's minimum;
- `u_paper` calls a unit firing above its own 75th percentile (ours: above 0) and divides a mutual information
  in nats by an entropy in bits: a unit that fires exactly on one class scores ln 2 ≈ 0.693, not 1.
  `u_paper_normalized` is the same number in nats throughout (= `u_paper` / ln 2 up to the paper's 1e-12 terms);
- `u_v2` fires above 0 but divides I(fires; label) in nats by H(label) in bits; `u_v2_normalized` uses nats.

Every variant is computed for all units at once from per-class sums (`class_stats`), gathered over chunks
whose extra copies hold about `CHUNK_ELEMENTS` values, so token-level codes (millions of rows x 4,096 latents)
never get a second full copy. Every number is NaN (null in the results file) with fewer than
two examples or two classes present: the source code ran on ten-class test sets and never met that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sae_ception.evaluation.monosemanticity import firing_information

CHUNK_ELEMENTS = 2**21  # values per chunk (examples x units): 16 MB per float64 copy
PAPER_PERCENTILE = 0.75  # the paper's `np.percentile(act_j, 75)`
PAPER_EPS = 1e-12  # the paper's guard terms: log2(p + 1e-12), (... + 1e-12) in each denominator
NAN = float("nan")


@dataclass(frozen=True)
class ClassStats:
    """Per-class sums of one set of units over N examples (classes present only, all float64)."""

    n: int  # examples
    counts_C: Tensor  # examples per class
    relu_sums_CU: Tensor  # Σ max(a, 0) over the class's examples
    above_percentile_CU: Tensor  # examples with a > the unit's own 75th percentile (over all N examples)
    positive_CU: Tensor  # examples with a > 0


def percentile_rank(n: int, q: float = PAPER_PERCENTILE) -> int:
    """0-based rank r = ⌊q (n − 1)⌋ of the order statistic at or below numpy's linear q-percentile of n values.

    numpy interpolates between the r-th and (r + 1)-th smallest values; no value lies strictly between those
    two, so `a > np.percentile(values, 100 q)` holds exactly when `a > s_r`, the r-th smallest (0-based), ties
    included (a value tied with s_r does not fire). Only a float32 rounding of the interpolated threshold up to
    s_(r+1), when the two differ in the last bit, could tell the two rules apart."""
    return math.floor(q * (n - 1))


def class_stats(acts_NU: Tensor, labels_N: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> ClassStats:
    """The sums every variant needs. `acts_NU`: [N ≥ 1, U] activations or codes, any float dtype and device;
    `labels_N`: [N] integer labels. Two passes, each holding about `chunk_elements` extra values at a time:
    (1) over chunks of examples: rectified sums, firing counts at > 0 and each unit's minimum; (2) over chunks
    of the units whose percentile is not known to be 0: one `torch.kthvalue` and the counts above it. A unit
    that is never negative and 0 on at least ⌊0.75 (N − 1)⌋ + 1 examples (most SAE latents) has its
    threshold at 0, so its counts above it are its counts above 0 and it needs no pass (2)."""
    n, num_units = acts_NU.shape
    device = acts_NU.device
    _, inverse_N = torch.unique(labels_N.to(device), return_inverse=True)
    num_classes = int(inverse_N.max()) + 1
    sums = {name: torch.zeros(num_classes, num_units, dtype=torch.float64, device=device)
            for name in ("relu", "positive", "above")}
    min_U = torch.full((num_units,), torch.inf, dtype=torch.float64, device=device)
    rows = max(1, chunk_elements // max(num_units, 1))
    for start in range(0, n, rows):  # (1) chunks of examples: contiguous slices
        x, y = acts_NU[start:start + rows], inverse_N[start:start + rows]
        sums["relu"].index_add_(0, y, x.clamp_min(0).double())
        # counts of one chunk are exact in float32 (fewer than 2^24 rows) and half the traffic of float64
        sums["positive"] += torch.zeros_like(sums["positive"], dtype=torch.float32).index_add_(0, y, (x > 0).float())
        min_U = torch.minimum(min_U, x.min(0).values.double())
    rank = percentile_rank(n) + 1  # kthvalue counts from 1
    at_zero_U = (min_U >= 0) & (n - sums["positive"].sum(0) >= rank)
    sums["above"][:, at_zero_U] = sums["positive"][:, at_zero_U]
    todo = torch.nonzero(~at_zero_U).flatten()
    step = max(1, chunk_elements // n)
    for first in range(0, len(todo), step):  # (2) chunks of the remaining units
        units = todo[first:first + step]
        x = acts_NU.index_select(1, units)
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        above_NU = (x > torch.kthvalue(x, rank, dim=0).values).double()
        sums["above"][:, units] = torch.zeros(num_classes, len(units), dtype=torch.float64, device=device).index_add_(
            0, inverse_N, above_NU)
    counts_C = torch.bincount(inverse_N, minlength=num_classes).double()
    return ClassStats(n, counts_C, sums["relu"], sums["above"], sums["positive"])


def csi_paper(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """The paper's CSI per unit and which units are live, ([U] float64, [U] bool).

    With μ_c the class means of max(a, 0), μ_max = max_c μ_c and μ_other the mean of the other classes' μ_c:
    CSI = (μ_max − μ_other) / (μ_max + μ_other + 1e-12). Dead: the unit is never positive (every rectified value
    0), so CSI = 0/1e-12 = 0, kept in the mean. A unit constant at a positive value is live and scores 0."""
    means_CU = stats.relu_sums_CU / stats.counts_C[:, None]
    mu_max_U = means_CU.max(0).values
    mu_other_U = (means_CU.sum(0) - mu_max_U) / (len(stats.counts_C) - 1)
    return (mu_max_U - mu_other_U) / (mu_max_U + mu_other_U + PAPER_EPS), mu_max_U > 0


def _percentile_information(stats: ClassStats) -> tuple[Tensor, Tensor, Tensor]:
    """I(fires; label) and H(fires) in nats, and the live units, with firing = above the unit's 75th percentile.
    Dead: the unit never fires, i.e. its maximum equals its ⌊0.75 (N − 1)⌋-th smallest value (a constant unit,
    or one at its maximum on more than about a quarter of the examples)."""
    mi_U, h_fire_U = firing_information(stats.above_percentile_CU, stats.counts_C)
    return mi_U, h_fire_U, stats.above_percentile_CU.sum(0) > 0


def u_paper(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """The paper's U ("normalized MI", "MI-CSI") per unit and the live units, ([U] float64, [U] bool).

    fires = a > the unit's 75th percentile; U = I(fires; label) [nats, scikit-learn's `mutual_info_score`]
    / (H₂(fires) + 1e-12) with H₂(fires) = −(p log₂(p + 1e-12) + (1 − p) log₂(1 − p + 1e-12)) [bits], p the
    firing rate. Nats over bits: a unit firing on exactly one class scores ln 2 ≈ 0.693. Dead (never fires,
    see `_percentile_information`): 0 (the source's 0 / (≈ −4e-13)), kept in the mean."""
    mi_U, _, live_U = _percentile_information(stats)
    p_U = stats.above_percentile_CU.sum(0) / stats.n
    h_bits_U = -(p_U * torch.log2(p_U + PAPER_EPS) + (1 - p_U) * torch.log2(1 - p_U + PAPER_EPS))
    return torch.where(live_U, mi_U / (h_bits_U + PAPER_EPS), 0.0), live_U


def u_paper_normalized(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """`u_paper` with consistent units: I(fires; label) / H(fires), both in nats, in [0, 1]; the same firing
    rule (above the 75th percentile) and dead units (never firing) scored 0 and kept in the mean."""
    mi_U, h_fire_U, live_U = _percentile_information(stats)
    return torch.where(h_fire_U > 0, mi_U / h_fire_U, 0.0), live_U


def _label_entropy_nats(stats: ClassStats) -> float:
    p_C = stats.counts_C / stats.n
    return float(-(p_C * p_C.log()).sum())


def _positive_information(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """I(fires; label) in nats with firing = a > 0, and the live units: those that fire on some examples and
    not on all (the 2.0 code scores the others 0 before computing anything)."""
    fired_U = stats.positive_CU.sum(0)
    mi_U, _ = firing_information(stats.positive_CU, stats.counts_C)
    return mi_U, (fired_U > 0) & (fired_U < stats.n)


def u_v2(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """The SAE-ception-2.0 code's U per unit and the live units, ([U] float64, [U] bool).

    fires = a > 0; U = I(fires; label) [nats] / H(label) [bits, −Σ_c p_c log₂ p_c over the classes present]. It
    measures how much of the label's entropy one binary unit explains, so it is at most 1 bit / H(label) even
    in consistent units (0.301 for ten balanced classes; 0.209 as computed, nats over bits). Dead (never or
    always fires): 0, kept in the mean."""
    mi_U, live_U = _positive_information(stats)
    return torch.where(live_U, mi_U / (_label_entropy_nats(stats) / math.log(2)), 0.0), live_U


def u_v2_normalized(stats: ClassStats) -> tuple[Tensor, Tensor]:
    """`u_v2` with consistent units: I(fires; label) / H(label), both in nats (= `u_v2` / ln 2)."""
    mi_U, live_U = _positive_information(stats)
    return torch.where(live_U, mi_U / _label_entropy_nats(stats), 0.0), live_U


# Results name -> per-unit definition. Each gives `<name>_mean` (over all units, dead ones as 0) and
# `<name>_live_units` in `monosemanticity_dense` / `monosemanticity_sae`.
VARIANTS: dict[str, Callable[[ClassStats], tuple[Tensor, Tensor]]] = {
    "csi_paper": csi_paper,
    "u_paper": u_paper,
    "u_paper_normalized": u_paper_normalized,
    "u_v2": u_v2,
    "u_v2_normalized": u_v2_normalized,
}


def paper_unit_scores(acts_NU: Tensor, labels_N: Tensor) -> dict[str, tuple[Tensor, Tensor]] | None:
    """Each variant's (per-unit scores [U] float64 with dead units at 0, live mask [U] bool); None when the
    split has fewer than two examples or two classes (nothing to score)."""
    if len(acts_NU) < 2 or len(torch.unique(labels_N)) < 2:
        return None
    stats = class_stats(acts_NU, labels_N)
    return {name: definition(stats) for name, definition in VARIANTS.items()}


def paper_monosemanticity_metrics(acts_NU: Tensor, labels_N: Tensor) -> dict[str, float]:
    """`<variant>_mean` (over all U units, dead ones as 0, as the source code averages) and
    `<variant>_live_units` (units not dead by that variant's rule) for every variant in `VARIANTS`. NaN with
    fewer than two examples or classes; a mean over no units (U = 0) is NaN too."""
    scores = paper_unit_scores(acts_NU, labels_N)
    out: dict[str, float] = {}
    for name in VARIANTS:
        if scores is None:
            out |= {f"{name}_mean": NAN, f"{name}_live_units": NAN}
            continue
        score_U, live_U = scores[name]
        out |= {f"{name}_mean": score_U.mean().item() if len(score_U) else NAN,
                f"{name}_live_units": int(live_U.sum())}
    return out
