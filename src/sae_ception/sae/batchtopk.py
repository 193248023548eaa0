"""BatchTopK SAE (Bussmann et al. 2024): during training the k·B largest activations of the whole batch
survive (so each example uses as many latents as it needs, k on average); at inference one threshold
replaces the batch, so an example's code never depends on the others in its batch.

The threshold is estimated once, from the trained weights, when training ends (`finish_training_`): it is
the value above which k·S of the pre-activations of S training rows lie, i.e. BatchTopK with the training
rows as one batch, so inference L0 on the training rows is k. (A running average of each batch's smallest
kept activation, as in the paper, lags the weights: seeded at initialisation, it barely moves in a short run.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_ception.sae.base import SAEOutput, SparseAutoencoder, TrainingState, fit_rows, fit_sample
from sae_ception.sae.fast_grads import batchtopk_loss_and_grads
from sae_ception.sae.registry import SAE_TYPES
from sae_ception.sae.topk import TopKSAE, TopKSAEConfig

THRESHOLD_CHUNK_VALUES = 1 << 22  # pre-activations held at once while estimating the threshold (16 MiB)
# batches of fewer pre-activations (B x d_sae) train with autograd: there the hand-written step's many small
# ops cost more than the GEMMs they save (CPU, one thread: 0.62x autograd's speed at 128 x 64, 0.87x at
# 128 x 256, 2.2x at 128 x 3072, 4.1x at 1024 x 1024)
MIN_HAND_WRITTEN_VALUES = 1 << 16


@dataclass
class BatchTopKSAEConfig(TopKSAEConfig):
    type: str = "batchtopk"


def keep_batch_top_k(pre_BF: Tensor, k: int) -> Tensor:
    """ReLU of the k·B largest entries of the whole batch, zeros elsewhere."""
    flat = pre_BF.flatten()
    count = min(k * pre_BF.shape[0], flat.numel())
    values, idx = flat.topk(count, sorted=False)
    return pre_BF.new_zeros(flat.shape).scatter(0, idx, F.relu(values)).view_as(pre_BF)


@torch.no_grad()
def top_count_threshold(pre_chunks: Iterable[Tensor], count: int) -> float:
    """The threshold θ >= 0 above which exactly `count` of all the values in `pre_chunks` lie: midway between
    the count-th and the (count+1)-th largest value. 0 when fewer than `count` values are positive (then every
    positive value is kept, as BatchTopK's ReLU keeps only positive ones) or when there are no more than
    `count` values. Streams: holds the count + 1 largest values seen so far and one chunk."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    best = None
    for chunk in pre_chunks:
        flat = chunk.reshape(-1).float()
        flat = flat if best is None else torch.cat([best, flat])
        best = flat.topk(min(count + 1, flat.numel()), sorted=False).values
    if best is None or best.numel() <= count:
        return 0.0
    smallest_two = best.topk(2, largest=False).values  # the (count+1)-th and the count-th largest
    below, at = smallest_two.tolist()
    if at <= 0:
        return 0.0
    return (at + max(below, 0.0)) / 2


@SAE_TYPES.register("batchtopk")
class BatchTopKSAE(TopKSAE):
    config_class = BatchTopKSAEConfig

    def __init__(self, cfg: BatchTopKSAEConfig, d_in: int):
        super().__init__(cfg, d_in)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet (inference is then ReLU)

    def activation(self, pre_BF: Tensor) -> Tensor:
        if not self.training:
            return pre_BF * (pre_BF > self.threshold.clamp_min(0)).to(pre_BF.dtype)
        return keep_batch_top_k(pre_BF, self.cfg.k)

    @torch.no_grad()
    def finish_training_(self, acts_ND: Optional[Tensor] = None) -> None:
        """Estimate the inference threshold from the trained weights: k·S of the pre-activations of the S
        training rows of `fit_sample` (every row, or a fixed-seed sample of `FIT_ROWS`) lie above it,
        so inference L0 on them is k (less where fewer than k·S are positive). Memory: one chunk of rows'
        pre-activations plus the k·S + 1 largest values."""
        if acts_ND is None or len(acts_ND) == 0:
            return
        device = self.W_enc_DF.device
        rows_per_chunk = max(1, THRESHOLD_CHUNK_VALUES // self.d_sae)
        rows_ND = fit_sample(acts_ND)
        pre_chunks = (self.pre_activation(self.normalize(x_BD)) for x_BD in fit_rows(rows_ND, rows_per_chunk, device))
        self.threshold.fill_(top_count_threshold(pre_chunks, self.cfg.k * len(rows_ND)))

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        """Hand-written gradients in training (fast_grads.batchtopk_loss_and_grads, AuxK included while some
        latent is dead); autograd (the base class's) in eval mode, where codes come from the threshold, and
        for batches of fewer than MIN_HAND_WRITTEN_VALUES pre-activations."""
        if not self.training or x_BD.shape[0] * self.d_sae < MIN_HAND_WRITTEN_VALUES:
            return SparseAutoencoder.loss_and_grads(self, x_BD, state)
        dead_F = state.dead_F if state is not None and state.any_dead else None
        return batchtopk_loss_and_grads(self, x_BD, self.cfg.k, dead_F=dead_F, aux_k=self.aux_k)
