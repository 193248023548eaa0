"""Per-unit, per-class sums of a representation, streamed over a RowSource in two passes: everything CSI, U, the
paper's variants, class-mean clustering indices and the feature report need, in memory bounded by one chunk
of rows (plus C x U float64 sums), whatever N.

Pass 1 (chunks of rows): per class, the sums of each unit's values and of max(value, 0), and how many examples
have it > 0 and != 0; each unit's minimum and maximum. Pass 2 (blocks of units whose 75th percentile is not
known to be 0, `COLUMN_BUDGET` values of a block at a time, about four times that in temporaries): the
percentile by `torch.kthvalue` (the rule of `paper_metrics.class_stats`) and the per-class counts above it. A
latent that is never negative and 0 on at least ⌊0.75 (N − 1)⌋ + 1 rows (about three quarters: most SAE latents)
has its percentile at 0 and needs no pass 2; dense activations usually need it for every unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from sae_ception.evaluation.monosemanticity import firing_information, summarize
from sae_ception.evaluation.paper_metrics import VARIANTS, ClassStats, percentile_rank
from sae_ception.evaluation.rows import CHUNK_ROWS, COLUMN_BUDGET, RowSource

NAN = float("nan")


@dataclass(frozen=True)
class UnitStats:
    """Sums over N examples of U units, by the C classes present (`classes`, sorted); float64 throughout."""

    n: int
    classes: Tensor  # [C] the label values present
    counts_C: Tensor  # examples per class
    sums_CU: Tensor  # Σ a
    relu_sums_CU: Tensor  # Σ max(a, 0)
    positive_CU: Tensor  # examples with a > 0
    nonzero_CU: Tensor  # examples with a != 0
    above_percentile_CU: Tensor  # examples with a > the unit's own 75th percentile (over all N)
    min_U: Tensor
    max_U: Tensor

    def class_stats(self) -> ClassStats:
        """The view `paper_metrics`' variants read."""
        return ClassStats(self.n, self.counts_C, self.relu_sums_CU, self.above_percentile_CU, self.positive_CU)


def _class_index(labels_N: Tensor) -> tuple[Tensor, np.ndarray]:
    classes, inverse = torch.unique(labels_N.cpu(), return_inverse=True)
    return classes, inverse.numpy()


def _add_dense(sums: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    one_hot_CB = np.zeros((num_classes, len(y)))
    one_hot_CB[y, np.arange(len(y))] = 1.0
    x64 = x.astype(np.float64)
    sums["sums"] += one_hot_CB @ x64
    sums["relu"] += one_hot_CB @ np.maximum(x64, 0)
    sums["positive"] += one_hot_CB @ (x > 0)
    sums["nonzero"] += one_hot_CB @ (x != 0)
    if len(x):
        sums["min"] = np.minimum(sums["min"], x.min(0))
        sums["max"] = np.maximum(sums["max"], x.max(0))


def _add_sparse(sums: dict[str, np.ndarray], x: sparse.csr_matrix, y: np.ndarray, num_classes: int) -> None:
    """The same sums from a CSR chunk's stored entries; its implicit zeros are added once at the end."""
    units = x.shape[1]
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    cell = y[rows] * units + x.indices  # class * U + unit, one per stored entry: O(nnz) work, no C x U temporary
    values = x.data.astype(np.float64)
    np.add.at(sums["sums"].reshape(-1), cell, values)
    np.add.at(sums["relu"].reshape(-1), cell, np.maximum(values, 0))
    np.add.at(sums["positive"].reshape(-1), cell, values > 0)
    np.add.at(sums["nonzero"].reshape(-1), cell, values != 0)
    np.minimum.at(sums["min"], x.indices, x.data)
    np.maximum.at(sums["max"], x.indices, x.data)


def unit_stats(source: RowSource, labels_N: Tensor, chunk_rows: int = CHUNK_ROWS,
               column_budget: int = COLUMN_BUDGET) -> UnitStats:
    """Stream `source` ([N >= 1, U] rows: a dense matrix or sparse codes) with integer `labels_N` [N] once (pass
    1), and once more per block of units that need their percentile (pass 2; see the module docstring)."""
    n, num_units = source.shape
    classes, y = _class_index(labels_N)
    num_classes = len(classes)
    sums = {name: np.zeros((num_classes, num_units)) for name in ("sums", "relu", "positive", "nonzero")}
    sums["min"], sums["max"] = np.full(num_units, np.inf), np.full(num_units, -np.inf)
    is_sparse = False
    for start, block in source.chunks(chunk_rows):
        if sparse.issparse(block):
            is_sparse = True
            _add_sparse(sums, block, y[start:start + block.shape[0]], num_classes)
        else:
            _add_dense(sums, block, y[start:start + len(block)], num_classes)
    if is_sparse:  # a unit that is not stored on every row is 0 somewhere
        has_zero = sums["nonzero"].sum(0) < n
        sums["min"][has_zero] = np.minimum(sums["min"][has_zero], 0.0)
        sums["max"][has_zero] = np.maximum(sums["max"][has_zero], 0.0)
    t = {name: torch.from_numpy(value).double() for name, value in sums.items()}
    rank = percentile_rank(n) + 1  # kthvalue counts from 1
    at_zero_U = (t["min"] >= 0) & (n - t["positive"].sum(0) >= rank)
    above_CU = torch.where(at_zero_U, t["positive"], torch.zeros_like(t["positive"]))
    todo = torch.nonzero(~at_zero_U).flatten().numpy()
    y_t = torch.from_numpy(y)
    step = max(1, column_budget // max(n, 1))
    for first in range(0, len(todo), step):
        units = todo[first:first + step]
        x = torch.from_numpy(source.columns(units))
        above_NU = (x > torch.kthvalue(x, rank, dim=0).values).double()
        above_CU[:, torch.from_numpy(units)] = torch.zeros(num_classes, len(units), dtype=torch.float64).index_add_(
            0, y_t, above_NU)
    counts_C = torch.bincount(y_t, minlength=num_classes).double()
    return UnitStats(n, classes, counts_C, t["sums"], t["relu"], t["positive"], t["nonzero"], above_CU,
                     t["min"], t["max"])


def class_selectivity(stats: UnitStats) -> Tensor:
    """CSI per unit [U] from class sums, as `monosemanticity.class_selectivity` defines it: class means measured
    from the unit's minimum, (μ_max − μ_rest) / (μ_max + μ_rest); NaN for constant units or fewer than 2 classes."""
    num_classes = len(stats.counts_C)
    if num_classes < 2:  # no class to compare with (one class, or no example at all)
        return torch.full_like(stats.min_U, torch.nan).float()
    means_CU = stats.sums_CU / stats.counts_C[:, None] - stats.min_U
    mu_max_U = means_CU.max(0).values
    mu_rest_U = (means_CU.sum(0) - mu_max_U) / (num_classes - 1)
    csi_U = (mu_max_U - mu_rest_U) / (mu_max_U + mu_rest_U)
    undefined_U = stats.max_U == stats.min_U
    return torch.where(undefined_U, torch.nan, csi_U).float()


def uncertainty_coefficient(stats: UnitStats) -> Tensor:
    """U per unit [U] with firing = a > 0, as `monosemanticity.uncertainty_coefficient` defines it (NaN for every
    unit of an empty split)."""
    if stats.n == 0:
        return torch.full_like(stats.min_U, torch.nan).float()
    mi_U, h_fire_U = firing_information(stats.positive_CU, stats.counts_C)
    return torch.where(h_fire_U > 0, (mi_U / h_fire_U).clamp(0, 1), torch.nan).float()


def monosemanticity_family(stats: UnitStats) -> tuple[dict[str, float], dict[str, Tensor]]:
    """The `monosemanticity_*` family (the same keys as `monosemanticity_metrics` | `paper_monosemanticity_metrics`)
    and the per-unit CSI and U [U] for plots."""
    csi_U, u_U = class_selectivity(stats), uncertainty_coefficient(stats)
    num_units = stats.min_U.shape[0]
    out = {**summarize(csi_U, "csi"), **summarize(u_U, "u"), "num_units": num_units}
    if stats.n < 2:
        out |= {"dead_units": NAN, "never_or_always_firing_units": NAN, "csi_live_units": NAN, "u_live_units": NAN}
    else:
        constant_U = torch.isnan(csi_U) if len(stats.classes) >= 2 else stats.max_U == stats.min_U
        out |= {"dead_units": int(constant_U.sum()), "never_or_always_firing_units": int(torch.isnan(u_U).sum()),
                "csi_live_units": int((~torch.isnan(csi_U)).sum()), "u_live_units": int((~torch.isnan(u_U)).sum())}
    paper = None if stats.n < 2 or len(stats.classes) < 2 else stats.class_stats()
    for name, definition in VARIANTS.items():
        if paper is None:
            out |= {f"{name}_mean": NAN, f"{name}_live_units": NAN}
            continue
        score_U, live_U = definition(paper)
        out |= {f"{name}_mean": score_U.mean().item() if len(score_U) else NAN, f"{name}_live_units": int(live_U.sum())}
    return out, {"csi": csi_U, "u": u_U}
