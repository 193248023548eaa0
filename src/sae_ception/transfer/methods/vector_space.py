"""`vector_space`: the aligned target concept injected only along the free directions of A's concept space,
gated by a detector (the reference's "Vector Space Aligned Transfer", `vector_space_aligned_transfer.py`: 49.6%
transfer at 97.0% preservation claimed; the deep dive's "Mathematical Foundations", steps 1-4 and its
multi-objective optimisation)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sae_ception.transfer.base import TRANSFER_METHODS
from sae_ception.transfer.concept_method import (AlignedConceptConfig, ConceptSpaceMethod, GatedEditorSettings,
                                                 edited_copy, free_dims, mixed_gate, report_target_margin)
from sae_ception.transfer.editor import FreeSpaceInjection, LearnedBlend
from sae_ception.transfer.editor_training import EditorTraining, train_editor

log = logging.getLogger(__name__)


@dataclass
class VectorSpaceConfig(GatedEditorSettings, EditorTraining, AlignedConceptConfig):
    type: str = "vector_space"

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        self.validate_training(name, cfg)
        self.validate_gate(name, cfg)


@TRANSFER_METHODS.register("vector_space")
class VectorSpace(ConceptSpaceMethod):
    """1. R: orthogonal Procrustes with C_B R ≈ C_A on the shared classes' centroids (`align_on`).
    2. F: the k least-used directions of A's concept space (SVD of A's codes of its own classes).
    3. α = Fᵀ ṽ, ṽ = μ_target^B R; the injection γ F α (γ learned).
    4. z' = z + p γ F α, p = β p_spatial + (1 − β) p_learned; h' = ρ h + (1 − ρ) D_A(z'), ρ = σ(w) learned.
    The detector, γ and w are trained with the multi-objective loss (editor_training.py). Reports
    `free_projection_fraction` = ‖F Fᵀ ṽ‖ / ‖ṽ‖: how much of the target concept the free space can carry."""

    config_class = VectorSpaceConfig

    def apply(self, ctx):
        views = self.views(ctx)
        vector = self.carry(self.align(ctx, views), views.target_b.mean(0))
        return inject_in_free_space(self, ctx, views, vector)


def inject_in_free_space(method, ctx, views, vector):
    """Steps 2-4 above for a target concept `vector` already in A's space (vector_space, cross_arch_aligner)."""
    cfg = method.cfg
    space = method.free_space(ctx, views, free_dims(cfg.free_dims, views.anchor_a.shape[1]))
    kept = float(space.project(vector.double()).norm() / vector.double().norm().clamp_min(1e-12))
    ctx.report("free_projection_fraction", kept)
    log.info("transfer/%s: %d free directions hold %.3f of the target concept's norm (used codes' energy there "
             "%.4f)", ctx.name, space.directions_CK.shape[1], kept, space.energy)
    edited = edited_copy(ctx, views, mixed_gate(ctx, views, cfg),
                         FreeSpaceInjection(vector, space.directions_CK, cfg.strength), LearnedBlend(cfg.blend_init))
    train_editor(ctx, edited, cfg)
    report_target_margin(ctx, edited, views)
    return edited
