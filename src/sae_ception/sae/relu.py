"""The classic SAE: ReLU codes with an L1 penalty that codes cannot dodge by shrinking while decoder rows grow.

Two ways to close that loophole (`decoder_norm`):
- `unit`: decoder rows are projected back to unit norm after every step, so plain Σ|z| is fair;
- `free`: rows are unconstrained and the penalty is Σ z_f ‖W_dec[f]‖ (Anthropic's April 2024 update, and
  SAELens's StandardTrainingSAE), usually with rows started small (`decoder_init_norm` 0.1). When training ends
  the norms are folded into the encoder, so every later stage sees unit rows and the same function.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, check_setting
from sae_ception.sae.fast_grads import relu_loss_and_grads
from sae_ception.sae.registry import SAE_TYPES


DECODER_NORMS = ("unit", "free")


@dataclass
class ReluSAEConfig(SAEConfig):
    type: str = "relu"
    l1_coefficient: float = 1e-2  # weight of the L1 term in the total loss
    l1_warmup_steps: int = 0  # ramp the coefficient linearly from 0 over these steps (fewer early dead latents)
    decoder_norm: str = "unit"  # unit (rows renormalised each step) | free (L1 weighted by each row's norm)
    decoder_init_norm: float = 1.0  # free: starting norm of every decoder row (0.1 in Anthropic's update)

    penalty_setting: ClassVar[Optional[str]] = "l1_coefficient"
    penalty_warmup_setting: ClassVar[Optional[str]] = "l1_warmup_steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(self.decoder_norm in DECODER_NORMS, "decoder_norm", self.decoder_norm,
                      f"is not valid; use one of {', '.join(DECODER_NORMS)}")
        check_setting(self.decoder_init_norm > 0, "decoder_init_norm", self.decoder_init_norm, "must be > 0")
        check_setting(self.decoder_norm == "free" or self.decoder_init_norm == 1.0, "decoder_init_norm",
                      self.decoder_init_norm, "needs sae.decoder_norm=free (unit rows are renormalised to 1 each step)")


@SAE_TYPES.register("relu")
class ReluSAE(SparseAutoencoder):
    config_class = ReluSAEConfig

    def __init__(self, cfg: ReluSAEConfig, d_in: int):
        super().__init__(cfg, d_in)
        if cfg.decoder_init_norm != 1.0:
            with torch.no_grad():
                self.W_dec_FD.mul_(cfg.decoder_init_norm)
                self.W_enc_DF.copy_(self.W_dec_FD.T)

    @property
    def free_decoder(self) -> bool:
        return self.cfg.decoder_norm == "free"

    def activation(self, pre_BF: Tensor) -> Tensor:
        return F.relu(pre_BF)

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        return relu_loss_and_grads(self, x_BD, self.cfg.penalty_weight(state),
                                   norm_weighted=self.free_decoder, count_firing=state is None or state.measure_l0)

    def auxiliary_losses(self, *, codes_BF: Tensor, **_) -> dict[str, Tensor]:
        if self.free_decoder:
            return {"l1": (codes_BF.abs() * self.W_dec_FD.norm(dim=-1)).sum(-1).mean()}
        return {"l1": codes_BF.abs().sum(-1).mean()}

    # a free decoder is neither projected nor renormalised during training, only folded at the end
    def normalize_decoder_(self) -> None:
        if not self.free_decoder:
            super().normalize_decoder_()

    def remove_parallel_decoder_grad_(self) -> None:
        if not self.free_decoder:
            super().remove_parallel_decoder_grad_()

    def _fit_encoder_scale_(self, sample_ND: Tensor) -> None:
        """A free decoder keeps Anthropic's start (small rows, tied encoder): rescaling the encoder to fit the
        data would undo the small start that the norm-weighted penalty is tuned for."""
        if not self.free_decoder:
            super()._fit_encoder_scale_(sample_ND)

    @torch.no_grad()
    def finish_training_(self, acts_ND: Optional[Tensor] = None) -> None:
        """Free decoder: move each row's norm into its latent (encoder column and bias scale by n_f, the row
        by 1/n_f). ReLU is positively homogeneous, so codes scale by n_f and reconstructions do not change."""
        if self.free_decoder:
            norms_F = self.W_dec_FD.norm(dim=-1).clamp_min(1e-8)
            self.W_dec_FD.div_(norms_F.unsqueeze(1))
            self.W_enc_DF.mul_(norms_F)
            self.b_enc_F.mul_(norms_F)

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        return {"l1": self.cfg.penalty_weight(state)}
