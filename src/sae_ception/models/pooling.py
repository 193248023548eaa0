"""Pooling a sequence of hidden states into one vector per example, as a weighted sum over positions.

Writing every pooling as weights (B, T) makes reading and splicing the same operation: the pooled vector
is Σ_t w_t h_t, and adding δ at every position with w_t > 0 moves the pooled vector by exactly δ.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "cls", "mean")


def pooling_weights(mask_BT: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T) weights: `last` = the last non-padding token (right padding), `cls` = the first token,
    `mean` = the average over non-padding tokens."""
    mask = mask_BT.float()
    if pooling == "mean":
        return mask / mask.sum(1, keepdim=True).clamp_min(1)
    weights = torch.zeros_like(mask)
    if pooling == "cls":
        weights[:, 0] = 1
    elif pooling == "last":
        last_B = (mask.sum(1).long() - 1).clamp_min(0)
        weights[torch.arange(len(mask)), last_B] = 1
    else:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    return weights


def pool(hidden_BTD: torch.Tensor, weights_BT: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bt,btd->bd", weights_BT.to(hidden_BTD.dtype), hidden_BTD)


def shift_pooled(hidden_BTD: torch.Tensor, weights_BT: torch.Tensor, delta_BD: torch.Tensor) -> torch.Tensor:
    """Hidden states whose pooled vector is moved by `delta_BD` (added at every pooled position)."""
    pooled_positions = (weights_BT > 0).to(hidden_BTD.dtype)[..., None]
    return hidden_BTD + pooled_positions * delta_BD[:, None, :].to(hidden_BTD.dtype)
