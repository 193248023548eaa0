"""Pooling a sequence of hidden states into one vector per example, as a weighted sum over positions.

Writing every pooling as weights (B, T) makes reading and splicing the same operation: the pooled vector
is Σ_t w_t h_t, and adding δ at every position with w_t > 0 moves the pooled vector by exactly δ.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "cls", "mean")


def pooling_weights(mask_BT: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T) weights: `last` = the last non-padding token (right padding), `cls` = the first token,
    `mean` = the average over non-padding tokens. Weights sit on real tokens only, so a row without any
    (which the classifier never feeds: see `with_a_token_per_row`) pools to 0 under every pooling."""
    mask = mask_BT.float()
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    if pooling == "mean":
        return mask / mask.sum(1, keepdim=True).clamp_min(1)
    weights = torch.zeros_like(mask)
    if mask.shape[1] == 0:
        return weights
    if pooling == "cls":
        weights[:, 0] = 1
    else:
        last_B = (mask.sum(1).long() - 1).clamp_min(0)
        weights[torch.arange(len(mask)), last_B] = 1
    return weights * mask


def with_a_token_per_row(ids_BT: torch.Tensor, mask_BT: torch.Tensor, fill_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask in which every row has at least one real token.

    A text can tokenise to nothing (an empty or whitespace-only text with a tokenizer that adds no BOS/CLS,
    e.g. GPT-2's or Pythia's). Such a row is still an example, read as one padding token: position 0 becomes
    real and keeps the id right padding put there (the tokenizer's pad token; its EOS when it has none, as
    for GPT-2). With no column at all, one column of `fill_id` is added. Rows with tokens are unchanged."""
    if ids_BT.shape[1] == 0:
        ids_BT = torch.full((len(ids_BT), 1), fill_id, dtype=ids_BT.dtype, device=ids_BT.device)
        mask_BT = torch.zeros((len(mask_BT), 1), dtype=mask_BT.dtype, device=mask_BT.device)
    empty_B = mask_BT.sum(1) == 0
    if bool(empty_B.any()):
        mask_BT = mask_BT.clone()
        mask_BT[empty_B, 0] = 1
    return ids_BT, mask_BT


def pool(hidden_BTD: torch.Tensor, weights_BT: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bt,btd->bd", weights_BT.to(hidden_BTD.dtype), hidden_BTD)


def shift_pooled(hidden_BTD: torch.Tensor, weights_BT: torch.Tensor, delta_BD: torch.Tensor) -> torch.Tensor:
    """Hidden states whose pooled vector is moved by `delta_BD` (added at every pooled position)."""
    pooled_positions = (weights_BT > 0).to(hidden_BTD.dtype)[..., None]
    return hidden_BTD + pooled_positions * delta_BD[:, None, :].to(hidden_BTD.dtype)
