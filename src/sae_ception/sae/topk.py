"""TopK SAE (Gao et al. 2024): sparsity is set directly by k, and an AuxK loss revives dead latents."""

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from sae_ception.errors import ConfigError
from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, check_setting
from sae_ception.sae.fast_grads import topk_loss_and_grads
from sae_ception.sae.registry import SAE_TYPES

# batches of fewer pre-activations (B x d_sae) train with autograd: there the hand-written step's many small
# ops cost more than the GEMMs they save (CPU, one thread, B x d_sae x d_in, no dead latent / an eighth dead:
# 0.65x / 0.94x autograd's speed at 128 x 64 x 16, 0.87x / 1.17x at 128 x 128 x 32, 1.19x / 1.58x at
# 128 x 256 x 64, 2.1x / 3.1x at 128 x 3072 x 768, 3.7x / 4.4x at 1024 x 1024 x 256)
MIN_HAND_WRITTEN_VALUES = 1 << 15


@dataclass
class TopKSAEConfig(SAEConfig):
    type: str = "topk"
    k: int = 8  # latents kept per example
    aux_k: Optional[int] = None  # dead latents the AuxK loss may use; None -> min(width, max(k, d_in // 2))
    aux_coefficient: float = 1 / 32  # weight of the AuxK loss in the total loss

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(self.k > 0, "k", self.k, "must be a positive integer")
        check_setting(self.aux_k is None or self.aux_k > 0, "aux_k", self.aux_k, "must be a positive integer (or null)")
        check_setting(self.aux_coefficient >= 0, "aux_coefficient", self.aux_coefficient, "must be >= 0")

    def validate_for(self, d_in: int) -> None:
        super().validate_for(d_in)
        width = self.width(d_in)
        for name in ("k", "aux_k"):
            value = getattr(self, name)
            if value is not None and value > width:
                raise ConfigError(f"sae.{name}={value} is larger than the SAE width {width}; use 1 <= sae.{name} <= {width}")

    def aux_k_for(self, d_in: int) -> int:
        """Gao et al. use about d_in / 2 dead latents; never fewer than k, never more than the width."""
        return self.aux_k if self.aux_k is not None else min(self.width(d_in), max(self.k, d_in // 2))


def keep_top_k(pre_BF: Tensor, k: int) -> Tensor:
    """ReLU of the k largest entries per row, zeros elsewhere: at most k non-zeros, exactly k if k are positive."""
    values_BK, idx_BK = pre_BF.topk(k, dim=-1, sorted=False)
    return pre_BF.new_zeros(pre_BF.shape).scatter(-1, idx_BK, F.relu(values_BK))


@SAE_TYPES.register("topk")
class TopKSAE(SparseAutoencoder):
    config_class = TopKSAEConfig

    def __init__(self, cfg: TopKSAEConfig, d_in: int):
        super().__init__(cfg, d_in)
        self.aux_k = cfg.aux_k_for(d_in)

    def activation(self, pre_BF: Tensor) -> Tensor:
        return keep_top_k(pre_BF, self.cfg.k)

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        """Hand-written gradients (fast_grads.topk_loss_and_grads, AuxK included while some latent is dead), in
        training and eval mode alike (TopK's codes do not depend on the mode); autograd (the base class's) for
        CPU batches of fewer than MIN_HAND_WRITTEN_VALUES pre-activations (measured there only)."""
        if x_BD.device.type == "cpu" and x_BD.shape[0] * self.d_sae < MIN_HAND_WRITTEN_VALUES:
            return super().loss_and_grads(x_BD, state)
        dead_F = state.dead_F if state is not None and state.any_dead else None
        return topk_loss_and_grads(self, x_BD, self.cfg.k, dead_F=dead_F, aux_k=self.aux_k)

    def auxiliary_losses(self, *, x_norm_BD: Tensor, pre_BF: Tensor, recon_norm_BD: Tensor,
                         state: Optional[TrainingState], **_) -> dict[str, Tensor]:
        """AuxK: the top-aux_k dead latents reconstruct the main residual; normalised MSE, 0 if none is dead."""
        if state is None or state.dead_F is None or not state.any_dead:
            return {"aux": pre_BF.new_zeros(())}
        residual_BD = (x_norm_BD - recon_norm_BD).detach()
        dead_codes_BF = keep_top_k(pre_BF.masked_fill(~state.dead_F, float("-inf")), self.aux_k)
        residual_hat_BD = dead_codes_BF @ self.W_dec_FD  # no decoder bias: it is already in the main recon
        aux = (residual_hat_BD - residual_BD).pow(2).sum() / residual_BD.pow(2).sum().clamp_min(1e-12)
        return {"aux": aux * state.dead_F.any()}  # tensor-valued gate: no host sync

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        return {"aux": self.cfg.aux_coefficient}
