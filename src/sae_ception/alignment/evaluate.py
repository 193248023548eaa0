"""What the alignment table reports, on the held-out test rows (README "Cross-model feature alignment",
METRICS_REFERENCE.md "Feature alignment"):

- `prediction_measures`: how well a prediction ŷ of the target side's rows matches them: mean cosine, R² (fraction
  of variance explained) and, per target feature (or dimension), the correlation of ŷ with the truth: how many
  exceed each threshold (the reference's "correlated features"), their mean;
- `universality`: how many of A's SAE features have a partner among B's (Lan et al. 2024): features paired one to
  one (Hungarian) on the TRAINING rows, their correlations measured on the test rows (so the selection cannot
  inflate them), against the same count for pairs found with the training rows shuffled; the in-sample best
  correlations on the test rows and their shuffled-row null (the histograms); SVCCA and linear CKA of the paired
  features against random pairings;
- `spliced_accuracy`: the target model's test accuracy with its activation at the aligned layer replaced by a
  prediction (downstream).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sae_ception.alignment.measures import (alive, best_correlations, correlation_matrix, count_above,
                                            diagonal_correlations, explained_variance, match_features, mean_cosine,
                                            paired_similarity, shuffled_null)
from sae_ception.models import Classifier
from sae_ception.utils.batching import inference_batches, to_device


def prediction_measures(pred_NQ: torch.Tensor, true_NQ: torch.Tensor, thresholds: Sequence[float] = ()) -> dict:
    """{"cosine", "r2", "feature_correlation" (mean over target features that vary), "feature_correlations" (each
    varying target feature's correlation with its prediction, a list: the counts at any threshold come from it),
    "features": how many target features vary, and with `thresholds` "correlated": {threshold: count of target
    features whose prediction correlates above it}}."""
    true = torch.as_tensor(true_NQ).float()
    diagonal = diagonal_correlations(pred_NQ, true)
    varying = alive(true)
    out = {"cosine": mean_cosine(pred_NQ, true), "r2": explained_variance(pred_NQ, true),
           "feature_correlation": float(diagonal[varying].mean()) if varying.any() else float("nan"),
           "feature_correlations": [round(float(v), 6) for v in diagonal[varying]], "features": int(varying.sum())}
    return out | ({"correlated": count_above(diagonal[varying], thresholds)} if len(thresholds) else {})


def universality(train_a: torch.Tensor, train_b: torch.Tensor, test_a: torch.Tensor, test_b: torch.Tensor,
                 thresholds: Sequence[float], seed: int) -> dict:
    """How many features two SAEs share (see the module docstring); every array is returned as a list for plots."""
    alive_a, alive_b = alive(train_a), alive(train_b)
    pairs = match_features(correlation_matrix(train_a, train_b), alive_a, alive_b)
    held_out = _pair_correlations(test_a, test_b, pairs.rows, pairs.cols)
    null_pairs = match_features(shuffled_null(train_a, train_b, seed), alive_a, alive_b)
    held_out_null = _pair_correlations(test_a, test_b, null_pairs.rows, null_pairs.cols)
    test_corr = correlation_matrix(test_a, test_b)
    test_alive_a, test_alive_b = alive(test_a), alive(test_b)
    best = best_correlations(test_corr, test_alive_a, test_alive_b)
    best_null = best_correlations(shuffled_null(test_a, test_b, seed), test_alive_a, test_alive_b)
    # the pairs compared by SVCCA/CKA (Lan et al. keep strong pairs): chosen on their TRAINING correlation
    strong = pairs.correlations > min(thresholds)
    kept = type(pairs)(pairs.rows[strong], pairs.cols[strong], held_out[strong])
    similarity = (paired_similarity(test_a, test_b, kept, seed) if len(kept.rows) >= 2
                  else {"svcca": float("nan"), "svcca_random": float("nan"), "cka": float("nan"), "cka_random": float("nan")})
    return {"alive_a": int(alive_a.sum()), "alive_b": int(alive_b.sum()), "pairs": len(pairs.rows),
            "matched": count_above(held_out, thresholds), "matched_null": count_above(held_out_null, thresholds),
            "matched_mean": float(np.mean(held_out)) if len(held_out) else float("nan"),
            "best_mean": float(np.nanmean(best)) if len(best) else float("nan"),
            "best_null_mean": float(np.nanmean(best_null)) if len(best_null) else float("nan"),
            "similarity_pairs": len(kept.rows), **similarity,
            "histograms": {"matched": held_out.tolist(), "matched_null": held_out_null.tolist(), "best": best.tolist(),
                           "best_null": best_null.tolist()},
            "top_pairs": [[int(r), int(c), float(v), float(t)]
                          for r, c, v, t in zip(pairs.rows, pairs.cols, held_out, pairs.correlations)]}


def _pair_correlations(x_NP: torch.Tensor, y_NQ: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """corr(x[:, rows[i]], y[:, cols[i]]) for each pair (0 where a column does not vary on these rows)."""
    if not len(rows):
        return np.zeros(0)
    return diagonal_correlations(x_NP[:, torch.as_tensor(rows)], y_NQ[:, torch.as_tensor(cols)])


@torch.no_grad()
def spliced_accuracy(model: Classifier, inputs, labels_N: torch.Tensor, replacement_ND: torch.Tensor | None,
                     batch_size: int, device) -> float:
    """Test accuracy of `model` with its per-example activation at its target layer replaced by the rows of
    `replacement_ND` (None: the model as it is). For a transformer the pooled activation is replaced by shifting
    every token by the difference (models/pooling.shift_pooled), as the SAE-ception splice does."""
    model = model.to(device).eval()
    correct, current = 0, {}

    def replace(_acts):
        return current["rows"].to(_acts.device, _acts.dtype)

    for rows, batch in inference_batches(inputs, batch_size):
        batch = to_device(batch, device)
        if replacement_ND is None:
            logits = model(batch)
        else:
            current["rows"] = replacement_ND[rows].float()
            with model.splice_target(replace):
                logits = model(batch)
        correct += int((logits.argmax(1).cpu() == labels_N[rows]).sum())
    model.cpu()
    return correct / max(len(labels_N), 1)
