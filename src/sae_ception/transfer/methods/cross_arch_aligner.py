"""`cross_arch_aligner`: a small network maps B's penultimate features into A's, trained on the shared classes, so
B's target concept can be read in A's concept space whatever the two widths; then the vector-space injection
(the reference's "Cross-Architecture Vector Transfer", `cross_architecture_vector_transfer.py`: 28.2% transfer at
99.0% preservation for similar architectures, 0% at 99.1% for very different ones, claimed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.transfer.base import TRANSFER_METHODS
from sae_ception.transfer.concept_alignment import FeatureAligner, fit_aligner
from sae_ception.transfer.concept_method import ConceptMethodConfig, ConceptSpaceMethod, GatedEditorSettings
from sae_ception.transfer.editor_training import EditorTraining
from sae_ception.transfer.layers import penultimate
from sae_ception.transfer.methods.vector_space import inject_in_free_space

log = logging.getLogger(__name__)


@dataclass
class CrossArchAlignerConfig(GatedEditorSettings, EditorTraining, ConceptMethodConfig):
    type: str = "cross_arch_aligner"
    aligner_hidden: int = 64  # Φ's hidden width (the deep dive's FeatureAligner: 64)
    aligner_steps: int = 500  # Adam steps training Φ
    aligner_lr: float = 1e-3
    aligner_batch: int = 64
    aligner_final_relu: bool = True  # Φ ends in a ReLU (the deep dive's formula), like A's post-ReLU features

    def validate_for(self, name, cfg) -> None:
        import math

        super().validate_for(name, cfg)
        self.validate_training(name, cfg)
        self.validate_gate(name, cfg)
        for key in ("aligner_hidden", "aligner_steps", "aligner_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"transfer.{name}.{key}={getattr(self, key)} must be a positive integer")
        if not (math.isfinite(self.aligner_lr) and self.aligner_lr > 0):
            raise ConfigError(f"transfer.{name}.aligner_lr={self.aligner_lr} must be a finite number > 0")


@TRANSFER_METHODS.register("cross_arch_aligner")
class CrossArchAligner(ConceptSpaceMethod):
    """Φ: d_B -> d_A (concept_alignment.FeatureAligner) trained on the shared classes' images to minimise
    ‖E_A(h_A) − E_A(Φ(h_B))‖² (the deep dive's L_align, read in A's concept space through A's frozen encoder);
    B's target concept in A's space is the mean of E_A(Φ(h_B)) over the k target images; then as vector_space
    (free directions, gate, blend, multi-objective training). Reports `aligner_residual` (‖Z_A − E_A(Φ(H_B))‖_F /
    ‖Z_A‖_F on the shared images) and counts Φ's steps."""

    config_class = CrossArchAlignerConfig

    def apply(self, ctx):
        cfg = self.cfg
        views = self.views(ctx)
        sae_a = views.saes.sae_a
        aligner = FeatureAligner(ctx.model_b.blocks[-1][0].out_features, ctx.model_a.blocks[-1][0].out_features,
                                 cfg.aligner_hidden, cfg.aligner_final_relu)
        # its own batch order, so the editor's training below draws the same batches as finetune_head's
        order = torch.Generator().manual_seed(ctx.generator.initial_seed() + 1)
        def diverged(how: str) -> DivergenceError:
            return DivergenceError(f"{ctx.setting('aligner_lr')}={cfg.aligner_lr:g}: training the aligner of transfer/"
                                   f"{ctx.name} diverged {how}; lower it")

        residual = fit_aligner(aligner, penultimate(ctx.model_b, views.anchors.x), views.anchor_a, sae_a.encode,
                               cfg.aligner_steps, cfg.aligner_lr, cfg.aligner_batch, order, diverged)
        ctx.add_steps(cfg.aligner_steps)
        ctx.report("aligner_residual", residual)
        with torch.no_grad():
            vector = sae_a.encode(aligner(penultimate(ctx.model_b, views.target_x))).mean(0)
        log.info("transfer/%s: aligner %d -> %d trained %d steps, residual %.4f", ctx.name,
                 aligner.net[0].in_features, aligner.net[2].out_features, cfg.aligner_steps, residual)
        return inject_in_free_space(self, ctx, views, vector)
