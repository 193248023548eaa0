"""BatchTopK SAE (Bussmann et al. 2024): during training the k·B largest activations of the whole batch
survive (so each example uses as many latents as it needs, k on average); at inference one learned
threshold replaces the batch, so an example's code never depends on the others in its batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_ception.sae.base import SparseAutoencoder, TrainingState, check_setting
from sae_ception.sae.registry import SAE_TYPES
from sae_ception.sae.topk import TopKSAE, TopKSAEConfig


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    type: str = "batchtopk"
    threshold_momentum: float = 0.99  # EMA of the smallest kept activation per batch -> the inference threshold

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(0 <= self.threshold_momentum < 1, "threshold_momentum", self.threshold_momentum, "must be in [0, 1)")


def keep_batch_top_k(pre_BF: Tensor, k: int) -> Tensor:
    """ReLU of the k·B largest entries of the whole batch, zeros elsewhere."""
    flat = pre_BF.flatten()
    count = min(k * pre_BF.shape[0], flat.numel())
    values, idx = flat.topk(count, sorted=False)
    return pre_BF.new_zeros(flat.shape).scatter(0, idx, F.relu(values)).view_as(pre_BF)


@SAE_TYPES.register("batchtopk")
class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKSAEConfig

    def __init__(self, cfg: BatchTopKSAEConfig, d_in: int):
        super().__init__(cfg, d_in)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet

    def activation(self, pre_BF: Tensor) -> Tensor:
        if not self.training:
            return pre_BF * (pre_BF > self.threshold.clamp_min(0)).to(pre_BF.dtype)
        codes_BF = keep_batch_top_k(pre_BF, self.cfg.k)
        self._update_threshold(codes_BF)
        return codes_BF

    @torch.no_grad()
    def _update_threshold(self, codes_BF: Tensor) -> None:
        kept = codes_BF[codes_BF > 0]
        if kept.numel() == 0:
            return
        smallest = kept.min()
        momentum = self.cfg.threshold_momentum
        first = self.threshold < 0
        self.threshold.copy_(torch.where(first, smallest, momentum * self.threshold + (1 - momentum) * smallest))

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None):
        """Autograd (the base class's): the batch-wide top-k has no hand-written path, unlike TopK's."""
        return SparseAutoencoder.loss_and_grads(self, x_BD, state)
