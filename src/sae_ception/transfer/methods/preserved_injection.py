"""`preserved_injection`: the SAE injection gated by a learned target detector and blended with A's own features
(the reference's "Preserved Concept Injection", `preserved_concept_injection.py`: 0.2% transfer at 99.4%
preservation claimed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TRANSFER_METHODS
from sae_ception.transfer.concept_method import (AlignedConceptConfig, ConceptSpaceMethod, edited_copy,
                                                 report_target_margin)
from sae_ception.transfer.concepts import centroids
from sae_ception.transfer.editor import GatedBlend, LearnedGate, SelectedInjection
from sae_ception.transfer.editor_training import EditorTraining, train_editor

log = logging.getLogger(__name__)


@dataclass
class PreservedInjectionConfig(EditorTraining, AlignedConceptConfig):
    type: str = "preserved_injection"
    distinctive: int = 4  # the concepts injected: where B's carried target concept most exceeds A's classes'
    strength: float = 1.0  # s of s · wᵢ · p on each distinctive concept
    weight_init: float = 0.1  # wᵢ's start (the reference's `torch.ones(n) * 0.1`)
    blend_init: float = 0.95  # w of r = clamp(σ(w) + 1 − p, 0, 1) (the reference's preservation_weight 0.95)
    detector_hidden: int = 16

    def validate_for(self, name, cfg) -> None:
        import math

        super().validate_for(name, cfg)
        self.validate_training(name, cfg)
        c = cfg.sae.width(cfg.model_a.hidden_sizes[-1])
        if not 1 <= self.distinctive <= c:
            raise ConfigError(f"transfer.{name}.distinctive={self.distinctive} must be in 1..{c} (A's concept dimension)")
        for key in ("strength", "weight_init", "blend_init"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"transfer.{name}.{key}={getattr(self, key)} must be a finite number")
        if self.detector_hidden < 1:
            raise ConfigError(f"transfer.{name}.detector_hidden={self.detector_hidden} must be a positive integer")


@TRANSFER_METHODS.register("preserved_injection")
class PreservedInjection(ConceptSpaceMethod):
    """The `distinctive` concepts where v − max_d μ_d^A is largest (v: B's mean target code carried into A's
    space, μ_d^A: A's centroids of its own classes) get s · wᵢ · p added, p a learned detector (editor.LearnedGate)
    on A's codes; the decoded features are blended with A's by r = clamp(σ(w) + 1 − p, 0, 1). The detector, wᵢ
    and w are trained with the multi-objective loss (editor_training.py)."""

    config_class = PreservedInjectionConfig

    def apply(self, ctx):
        cfg = self.cfg
        views = self.views(ctx)
        vector = self.carry(self.align(ctx, views), views.target_b.mean(0))
        own = centroids(views.used_a, views.used.y, list(ctx.concept.classes_a))
        excess = vector - own.max(0).values
        chosen = torch.argsort(excess, descending=True, stable=True)[:cfg.distinctive]
        ctx.report("distinctive_excess", float(excess[chosen].mean()))
        log.info("transfer/%s: distinctive concepts %s", ctx.name, chosen.tolist())
        c = views.anchor_a.shape[1]
        edited = edited_copy(ctx, views, LearnedGate(c, cfg.detector_hidden),
                             SelectedInjection(c, chosen, cfg.strength, cfg.weight_init), GatedBlend(cfg.blend_init))
        train_editor(ctx, edited, cfg)
        report_target_margin(ctx, edited, views)
        return edited
