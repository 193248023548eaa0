"""The SAE-ception auxiliary objectives: pull the target-layer activation towards its sharpened target.

Chosen by `cycle.aux_loss` (registry `AUX_LOSSES`); every objective takes the batch's activations and targets
[B, D] and the training centre mu [D] (the mean activation of model N over the training examples, the same
space as the targets), and returns a scalar averaged over the batch:

- `cosine`: 1 − cos(a, t), the paper's objective (0 aligned, 1 orthogonal, 2 opposite). A sharpened target
  holds the decoder bias, which sits near the mean activation, so on a layer whose activations share a large
  common component (ReLU layers: all positive) this loss is near 0 before any training (about 0.02 on the MNIST
  preset): the objective is nearly satisfied by the mean alone.
- `cosine_centered`: 1 − cos(a − mu, t − mu): the same, measured from the training centre, so only the part of
  the target that differs from the average example pulls (the bias no longer satisfies it).
- `mse`: mean over the batch and the D dimensions of (a − t)²: also pulls the norm, in activation units squared.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AuxLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_alignment_loss(acts_BD: torch.Tensor, targets_BD: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of 1 - cos(activation, target): 0 when aligned, 1 when orthogonal, 2 when opposite.
    A zero vector has cosine 0 with everything (loss 1), never NaN."""
    return (1.0 - F.cosine_similarity(acts_BD.float(), targets_BD.float(), dim=-1, eps=eps)).mean()


def _cosine(acts_BD: torch.Tensor, targets_BD: torch.Tensor, center_D: torch.Tensor) -> torch.Tensor:
    return cosine_alignment_loss(acts_BD, targets_BD)


def _cosine_centered(acts_BD: torch.Tensor, targets_BD: torch.Tensor, center_D: torch.Tensor) -> torch.Tensor:
    center_D = center_D.float()
    return cosine_alignment_loss(acts_BD.float() - center_D, targets_BD.float() - center_D)


def _mse(acts_BD: torch.Tensor, targets_BD: torch.Tensor, center_D: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(acts_BD.float(), targets_BD.float())


AUX_LOSSES: dict[str, AuxLoss] = {"cosine": _cosine, "cosine_centered": _cosine_centered, "mse": _mse}


def aux_loss_fn(name: str) -> AuxLoss:
    """The objective registered as `name` (KeyError for an unknown one; the config refuses those first)."""
    return AUX_LOSSES[name]
