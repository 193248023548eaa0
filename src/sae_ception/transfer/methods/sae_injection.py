"""`sae_injection`: B's mean target code, carried into A's concept space, added to every code of A and decoded
(the reference's "SAE-Based Concept Injection", `gradient_concept_injection.py`: 100% transfer, 0% preservation
claimed). No gate and no blend: every input is edited, so the reference's total loss of preservation is what this
method is expected to show. With `strength: 0` it is the SAE splice alone (configs/transfer/sae_splice.yaml): A
reading its own features through its SAE, the cost every SAE-based method starts from."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TRANSFER_METHODS
from sae_ception.transfer.concept_method import (AlignedConceptConfig, ConceptSpaceMethod, edited_copy,
                                                 report_target_margin)
from sae_ception.transfer.editor import ConstantGate, ConstantInjection, NoBlend

log = logging.getLogger(__name__)


@dataclass
class SAEInjectionConfig(AlignedConceptConfig):
    type: str = "sae_injection"
    strength: float = 1.0  # s: z' = z + s · (B's mean target code, carried); 0: the SAE splice alone

    def validate_for(self, name, cfg) -> None:
        import math

        super().validate_for(name, cfg)
        if not math.isfinite(self.strength):
            raise ConfigError(f"transfer.{name}.strength={self.strength} must be a finite number")


@TRANSFER_METHODS.register("sae_injection")
class SAEInjection(ConceptSpaceMethod):
    """z' = E_A(h) + s · v, v = (mean of B's codes of the k target images) R (Procrustes on the shared classes,
    concept_method.py); h' = D_A(z'). No steps of its own (the SAEs' are counted)."""

    config_class = SAEInjectionConfig

    def apply(self, ctx):
        views = self.views(ctx, used=False)
        alignment = self.align(ctx, views)
        vector = self.carry(alignment, views.target_b.mean(0))
        ctx.report("target_concept_norm", float(vector.norm()))
        log.info("transfer/%s: B's target concept (norm %.3f) carried with residual %.4f, strength %g", ctx.name,
                 float(vector.norm()), alignment.residual, self.cfg.strength)
        edited = edited_copy(ctx, views, ConstantGate(), ConstantInjection(vector, self.cfg.strength), NoBlend())
        report_target_margin(ctx, edited, views)
        return edited
