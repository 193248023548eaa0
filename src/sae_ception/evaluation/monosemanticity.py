"""How class-specific each unit is: Class Selectivity Index (CSI) and uncertainty coefficient (U).

Both are computed for every unit at once from per-class sums (no loop over units). A unit whose value
never changes over the data (e.g. a latent that never fires) has no selectivity to measure: it gets
NaN and is counted as dead instead of pulling the mean towards 0. Nothing here raises on a tiny split:
with no examples, one example or one class the undefined numbers are NaN (null in the results file).
The paper's and the SAE-ception-2.0 code's definitions (dead units scored 0, other thresholds and log
bases) are in `paper_metrics.py`, each under its own name.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _present_class_sums(values_NU: Tensor, labels_N: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class sums [C, U] and counts [C] over the classes that occur in `labels_N` only."""
    classes, inverse = torch.unique(labels_N, return_inverse=True)
    sums_CU = torch.zeros(len(classes), values_NU.shape[1], dtype=torch.float64).index_add_(0, inverse, values_NU.double())
    counts_C = torch.bincount(inverse, minlength=len(classes)).double()
    return sums_CU, counts_C


def class_selectivity(acts_NU: Tensor, labels_N: Tensor) -> Tensor:
    """CSI per unit: (mu_max - mu_rest) / (mu_max + mu_rest) over class-mean activations, in [0, 1].

    Activations are measured from the unit's own minimum over the data, so units with negative values
    are handled the same way as ReLU units (for which the minimum is usually 0 and nothing changes).
    NaN for constant units and when fewer than two classes are present.
    """
    acts_NU = acts_NU.double()
    if len(acts_NU) == 0:
        return torch.full((acts_NU.shape[1],), torch.nan)
    floor_U = acts_NU.min(0).values
    sums_CU, counts_C = _present_class_sums(acts_NU - floor_U, labels_N)
    num_classes = len(counts_C)
    means_CU = sums_CU / counts_C[:, None]
    mu_max_U = means_CU.max(0).values
    mu_rest_U = (means_CU.sum(0) - mu_max_U) / max(num_classes - 1, 1)
    csi_U = (mu_max_U - mu_rest_U) / (mu_max_U + mu_rest_U)
    undefined_U = (acts_NU.max(0).values == floor_U) | (num_classes < 2)
    return torch.where(undefined_U, torch.nan, csi_U).float()


def _binary_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of a Bernoulli(p), with 0 log 0 = 0."""
    q = 1 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q))


def firing_information(fire_counts_CU: Tensor, counts_C: Tensor) -> tuple[Tensor, Tensor]:
    """I(fires; label) and H(fires) per unit, both in nats, of the empirical joint distribution.

    `fire_counts_CU[c, u]`: examples of class c on which unit u fires; `counts_C[c]`: examples of class c
    (classes present only, float64). I = H(fires) − H(fires | label), clamped at 0 against rounding: the
    same number as scikit-learn's `mutual_info_score(fires, labels)`.
    """
    n = counts_C.sum()
    h_fire_U = _binary_entropy(fire_counts_CU.sum(0) / n)
    h_fire_given_label_U = (counts_C[:, None] / n * _binary_entropy(fire_counts_CU / counts_C[:, None])).sum(0)
    return (h_fire_U - h_fire_given_label_U).clamp_min(0), h_fire_U


def uncertainty_coefficient(acts_NU: Tensor, labels_N: Tensor, threshold: float = 0.0) -> Tensor:
    """U per unit: I(firing; label) / H(firing), where a unit fires when its activation > threshold.

    1 when the label fully determines whether the unit fires, 0 when firing is independent of it.
    NaN for units that fire on every example or on none (H(firing) = 0).
    """
    fires_NU = (acts_NU > threshold).double()
    fire_counts_CU, counts_C = _present_class_sums(fires_NU, labels_N)
    mi_U, h_fire_U = firing_information(fire_counts_CU, counts_C)
    return torch.where(h_fire_U > 0, (mi_U / h_fire_U).clamp(0, 1), torch.nan).float()


def summarize(per_unit_U: Tensor, prefix: str) -> dict[str, float]:
    """Mean and quantiles over the units where the metric is defined, and how many units are dead."""
    defined = per_unit_U[~torch.isnan(per_unit_U)].double()
    out = {f"{prefix}_mean": defined.mean().item() if len(defined) else float("nan")}
    if len(defined):
        values = torch.quantile(defined, torch.tensor(QUANTILES, dtype=torch.float64))
        out |= {f"{prefix}_q{int(q * 100):02d}": v.item() for q, v in zip(QUANTILES, values)}
    else:
        out |= {f"{prefix}_q{int(q * 100):02d}": float("nan") for q in QUANTILES}
    return out


def unit_scores(acts_NU: Tensor, labels_N: Tensor, threshold: float = 0.0) -> dict[str, Tensor]:
    """Per-unit CSI and U (NaN where undefined), e.g. for histograms."""
    return {"csi": class_selectivity(acts_NU, labels_N), "u": uncertainty_coefficient(acts_NU, labels_N, threshold)}


def monosemanticity_metrics(
    acts_NU: Tensor, labels_N: Tensor, threshold: float = 0.0, scores: dict[str, Tensor] | None = None
) -> dict[str, float]:
    """CSI and U summaries for one set of units (a dense layer or an SAE's latents). `csi_live_units` and
    `u_live_units` count the units `csi_mean` and `u_mean` average over (NaN with fewer than two examples)."""
    scores = scores if scores is not None else unit_scores(acts_NU, labels_N, threshold)
    csi_U, u_U = scores["csi"], scores["u"]
    out = {**summarize(csi_U, "csi"), **summarize(u_U, "u"), "num_units": acts_NU.shape[1]}
    if len(acts_NU) < 2:  # every unit is trivially "constant" on a single example: the counts say nothing
        return out | {"dead_units": float("nan"), "never_or_always_firing_units": float("nan"),
                      "csi_live_units": float("nan"), "u_live_units": float("nan")}
    constant_U = torch.isnan(csi_U) if len(torch.unique(labels_N)) >= 2 else acts_NU.max(0).values == acts_NU.min(0).values
    return out | {"dead_units": int(constant_U.sum()), "never_or_always_firing_units": int(torch.isnan(u_U).sum()),
                  "csi_live_units": int((~torch.isnan(csi_U)).sum()), "u_live_units": int((~torch.isnan(u_U)).sum())}
