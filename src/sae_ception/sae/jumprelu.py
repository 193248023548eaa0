"""JumpReLU SAE (Rajamanoharan et al. 2024): z = pre · H(pre − θ) with a learned threshold θ per latent and
an L0 penalty. H has no useful gradient, so θ learns through straight-through estimators: the step's
derivative is replaced by a rectangle kernel of width `bandwidth` around the threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, check_setting
from sae_ception.sae.fast_grads import jumprelu_loss_and_grads
from sae_ception.sae.registry import SAE_TYPES


def _kernel(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Rectangle kernel K((pre − θ)/ε)/ε: 1/ε where |pre − θ| < ε/2, else 0."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class JumpReLUFunction(torch.autograd.Function):
    """pre · H(pre − θ). d/dpre = H(pre − θ); d/dθ = −(θ/ε) K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_out * (pre > threshold).to(pre.dtype)
        grad_threshold = -(threshold * _kernel(pre, threshold, ctx.bandwidth) * grad_out)
        return grad_pre, grad_threshold.sum_to_size(threshold.shape), None


class StepFunction(torch.autograd.Function):
    """H(pre − θ), for the L0 penalty. d/dpre = 0; d/dθ = −(1/ε) K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(_kernel(pre, threshold, ctx.bandwidth) * grad_out)
        return torch.zeros_like(pre), grad_threshold.sum_to_size(threshold.shape), None


@dataclass
class JumpReLUSAEConfig(SAEConfig):
    type: str = "jumprelu"
    l0_coefficient: float = 1e-3  # weight of the (straight-through) L0 penalty
    l0_warmup_steps: int = 0  # ramp the coefficient linearly from 0 over these steps
    bandwidth: float = 0.05  # ε: width of the kernel that gives the threshold its gradient (normalised units)
    initial_threshold: float = 1e-3

    penalty_setting: ClassVar[Optional[str]] = "l0_coefficient"
    penalty_warmup_setting: ClassVar[Optional[str]] = "l0_warmup_steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(self.bandwidth > 0, "bandwidth", self.bandwidth, "must be > 0")
        check_setting(self.initial_threshold > 0, "initial_threshold", self.initial_threshold, "must be > 0")


@SAE_TYPES.register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    config_class = JumpReLUSAEConfig

    def __init__(self, cfg: JumpReLUSAEConfig, d_in: int):
        super().__init__(cfg, d_in)
        # learned directly (not as a log): Adam then moves a threshold by about lr per step, so short
        # trainings can reach thresholds of the activations' own scale; clamped at 0 so codes stay >= 0
        self.threshold_param_F = nn.Parameter(torch.full((self.d_sae,), float(cfg.initial_threshold)))

    @property
    def threshold_F(self) -> Tensor:
        return self.threshold_param_F.clamp_min(0.0)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return JumpReLUFunction.apply(pre_BF, self.threshold_F, self.cfg.bandwidth)

    def auxiliary_losses(self, *, pre_BF: Tensor, **_) -> dict[str, Tensor]:
        return {"l0": StepFunction.apply(pre_BF, self.threshold_F, self.cfg.bandwidth).sum(-1).mean()}

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        return {"l0": self.cfg.penalty_weight(state)}

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        """Hand-written gradients (fast_grads.jumprelu_loss_and_grads): the same straight-through estimators."""
        return jumprelu_loss_and_grads(self, x_BD, self.cfg.penalty_weight(state))

    @torch.no_grad()
    def retune_thresholds(self, acts_ND: Tensor, target_l0: float, iterations: int = 40) -> float:
        """Scale every threshold by one factor (bisection in log space) so mean L0 on `acts_ND` is
        `target_l0`; returns the achieved L0. Reconstructions change only through which latents fire."""
        pre_ND = self.pre_activation(self.normalize(acts_ND))
        base_F = self.threshold_F.clamp_min(1e-6)

        def l0_at(log_scale: float) -> float:
            return float((pre_ND > base_F * torch.exp(torch.tensor(log_scale))).sum(-1).float().mean())

        low, high = -20.0, 20.0  # L0 falls as the thresholds grow
        for _ in range(iterations):
            middle = (low + high) / 2
            low, high = (middle, high) if l0_at(middle) > target_l0 else (low, middle)
        self.threshold_param_F.copy_(base_F * torch.exp(torch.tensor((low + high) / 2)))
        return float((pre_ND > self.threshold_F).sum(-1).float().mean())
