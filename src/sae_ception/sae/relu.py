"""The classic SAE: ReLU codes with an L1 penalty (decoder rows are unit norm, so plain |codes| is fair)."""

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch.nn.functional as F
from torch import Tensor

from sae_ception.sae.base import SAEConfig, SAEOutput, SparseAutoencoder, TrainingState, check_setting, warmed_up
from sae_ception.sae.fast_grads import relu_loss_and_grads
from sae_ception.sae.registry import SAE_TYPES


@dataclass
class ReluSAEConfig(SAEConfig):
    type: str = "relu"
    l1_coefficient: float = 1e-2  # weight of the L1 term in the total loss
    l1_warmup_steps: int = 0  # ramp the coefficient linearly from 0 over these steps (fewer early dead latents)

    penalty_setting: ClassVar[Optional[str]] = "l1_coefficient"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_setting(self.l1_coefficient >= 0, "l1_coefficient", self.l1_coefficient, "must be >= 0")
        check_setting(self.l1_warmup_steps >= 0, "l1_warmup_steps", self.l1_warmup_steps, "must be >= 0")

    def l1_weight(self, step: Optional[int]) -> float:
        return warmed_up(self.l1_coefficient, self.l1_warmup_steps, step)


@SAE_TYPES.register("relu")
class ReluSAE(SparseAutoencoder):
    config_class = ReluSAEConfig

    def activation(self, pre_BF: Tensor) -> Tensor:
        return F.relu(pre_BF)

    def loss_and_grads(self, x_BD: Tensor, state: Optional[TrainingState] = None) -> SAEOutput:
        return relu_loss_and_grads(self, x_BD, self.cfg.l1_weight(state.step if state is not None else None))

    def auxiliary_losses(self, *, codes_BF: Tensor, **_) -> dict[str, Tensor]:
        return {"l1": codes_BF.abs().sum(-1).mean()}

    def loss_weights(self, state: Optional[TrainingState]) -> dict[str, float]:
        return {"l1": self.cfg.l1_weight(state.step if state is not None else None)}
