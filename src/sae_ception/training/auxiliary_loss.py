"""The SAE-ception auxiliary objective: pull the target-layer activation towards its sharpened target."""

import torch
import torch.nn.functional as F


def cosine_alignment_loss(acts_BD: torch.Tensor, targets_BD: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of 1 - cos(activation, target): 0 when aligned, 1 when orthogonal, 2 when opposite."""
    return (1.0 - F.cosine_similarity(acts_BD.float(), targets_BD.float(), dim=-1, eps=eps)).mean()
