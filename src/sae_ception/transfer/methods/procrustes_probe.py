"""`procrustes_probe`: a probe for the target on B's penultimate features, carried into A's by an orthogonal
Procrustes map fitted on the shared classes, added to A's target output row (the reference's "paper method",
`model_surgery_final.py`: 0-19% claimed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod, TransferMethodConfig
from sae_ception.transfer.layers import linear_layers, penultimate
from sae_ception.transfer.selection import require_validation_images, select_on_validation
from sae_ception.transfer.pathways import (CARRY_CHOICES, carry_probe, fit_alignment,
                                           fit_probe)
from sae_ception.transfer.shapes import require_same_last_width

log = logging.getLogger(__name__)


@dataclass
class ProcrustesProbeConfig(TransferMethodConfig):
    type: str = "procrustes_probe"
    # scale of the carried probe added to A's target row (weights and bias), > 0; or a list of them, the one with the
    # best mean of validation transfer and preservation kept (`select_on_validation`)
    alpha: Any = 1.0
    target_images: int = 100  # k: target-class training images, the probe's positives (YAML: concept.target_images)
    negatives_per_class: int = 100  # the probe's negatives: this many training images of each of B's other classes
    anchors_per_class: Optional[int] = None  # Procrustes anchors: training images per shared class (None: all)
    center: bool = False  # mean-centre each model's anchor features before Procrustes (the shift goes to the bias)
    carry: str = "transpose"  # transpose: Rᵀw (correct); reference: R w, the reference's `R @ W4` (inverse rotation)
    max_iter: int = 1000  # the probe's lbfgs iteration limit (iterations used are the method's steps)

    def __post_init__(self) -> None:
        # 1 and 1.0 are one strength: stored alike, so resume and compare.py see one setting
        number = lambda a: float(a) if isinstance(a, int) and not isinstance(a, bool) else a  # noqa: E731
        self.alpha = [number(a) for a in self.alpha] if isinstance(self.alpha, (list, tuple)) else number(self.alpha)

    @property
    def alphas(self) -> list:
        return list(self.alpha) if isinstance(self.alpha, (list, tuple)) else [self.alpha]

    def validate_for(self, name, cfg) -> None:
        def setting(key: str) -> str:
            return f"transfer.{name}.{key}"

        alphas = self.alphas
        if not alphas or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < float("inf")
                             for a in alphas):
            raise ConfigError(f"{setting('alpha')}={self.alpha} must be a number > 0 (scale of the probe added to "
                              "A's target row, e.g. 1.0) or a non-empty list of them, chosen on validation images")
        if len(set(alphas)) != len(alphas):
            raise ConfigError(f"{setting('alpha')}={self.alpha} repeats a value; give each once")
        for key in ("target_images", "negatives_per_class", "max_iter"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{setting(key)}={getattr(self, key)} must be a positive integer")
        if self.anchors_per_class is not None and self.anchors_per_class < 1:
            raise ConfigError(f"{setting('anchors_per_class')}={self.anchors_per_class} must be a positive integer, "
                              "or null for every training image of the shared classes")
        if self.carry not in CARRY_CHOICES:
            raise ConfigError(f"{setting('carry')}={self.carry!r} is not valid; use one of {', '.join(CARRY_CHOICES)}")
        require_same_last_width(name, cfg, "mapping B's penultimate features onto A's")


@TRANSFER_METHODS.register("procrustes_probe")
class ProcrustesProbe(TransferMethod):
    """(a) A logistic-regression probe (scikit-learn, lbfgs) for the target on B's penultimate features:
    `target_images` target images against `negatives_per_class` images of each of B's other classes; its lbfgs
    iterations are the method's steps. (b) Orthogonal Procrustes (scipy) on both models' penultimate features of
    the shared classes' training images (`anchors_per_class` each, or all): R with H_B R ≈ H_A. (c) The probe
    carried into A's space: h_B ≈ h_A Rᵀ, so w·h_B = (Rᵀw)·h_A and the A-space weight is Rᵀw. The reference's
    sketch writes `R @ W4`, which applies the inverse rotation when R comes from orthogonal_procrustes(H_B, H_A);
    `carry: reference` reproduces it, `transpose` (default) is the correct map. With `center`, each model's
    anchor mean is removed before fitting and the shift is folded into the bias: intercept + w·μ_B - (Rᵀw)·μ_A.
    (d) A's head row `target`: weight += alpha · Rᵀw, bias += alpha · (carried intercept). With a list of
    alphas, one edit per alpha, and the one with the best mean of validation transfer and preservation is kept
    (transfer/selection.py; its validation images are counted, its choice reported as diagnostics `alpha`).

    Only A's target output row changes. When A's features are exactly B's rotated (H_A = H_B Q), the carried
    probe scores A's features exactly as the probe scores B's."""

    config_class = ProcrustesProbeConfig

    def preflight(self, data) -> None:
        super().preflight(data)
        if len(self.cfg.alphas) > 1:
            require_validation_images(data, self.setting("alpha"))

    def apply(self, ctx):
        cfg, concept = self.cfg, ctx.concept
        positives, negatives = ctx.target_and_negatives(cfg.target_images, cfg.negatives_per_class)
        probe = fit_probe(penultimate(ctx.model_b, positives), penultimate(ctx.model_b, negatives.x), cfg.max_iter)
        ctx.add_steps(probe.iterations)

        anchors = ctx.class_images(concept.shared, per_class=cfg.anchors_per_class)
        alignment = fit_alignment(penultimate(ctx.model_b, anchors.x), penultimate(ctx.model_a, anchors.x),
                                  center=cfg.center)
        weight, intercept = carry_probe(probe, alignment, cfg.carry)
        ctx.report("procrustes_residual", alignment.residual)  # ||H_B R - H_A||_F / ||H_A||_F on the anchors
        self._report_carried(ctx, positives, anchors.x, weight, intercept)
        log.info("transfer/%s: probe on %d target + %d other images (%d lbfgs iterations); Procrustes on %d anchor "
                 "images of classes %s, relative residual %.4f", ctx.name, len(positives), len(negatives),
                 probe.iterations, len(anchors), concept.shared, alignment.residual)

        edits = [self._edit(ctx, alpha, weight, intercept) for alpha in cfg.alphas]
        if len(edits) == 1:
            return edits[0]
        chosen = select_on_validation(ctx, edits)
        ctx.report("alpha", cfg.alphas[chosen])
        log.info("transfer/%s: alpha %g chosen on validation images from %s", ctx.name, cfg.alphas[chosen], cfg.alphas)
        return edits[chosen]

    @staticmethod
    def _report_carried(ctx, positives: torch.Tensor, anchors: torch.Tensor, weight: torch.Tensor,
                        intercept: float) -> None:
        """Why the edit does (or does not) flip predictions, on the images the method already used: the carried
        probe's AUC separating the target images from the anchors in A's features (`carried_auc`), its mean score
        on each (`carried_score_target`, `carried_score_anchors`, logits), and by how much A's best logit beats
        its target logit on the target images (`a_margin_target`: what alpha times the score must overcome)."""
        from sklearn.metrics import roc_auc_score

        score_t = penultimate(ctx.model_a, positives).double() @ weight + intercept
        score_n = penultimate(ctx.model_a, anchors).double() @ weight + intercept
        labels = [1] * len(score_t) + [0] * len(score_n)
        ctx.report("carried_auc", roc_auc_score(labels, torch.cat([score_t, score_n]).numpy()))
        ctx.report("carried_score_target", float(score_t.mean()))
        ctx.report("carried_score_anchors", float(score_n.mean()))
        logits = ctx.model_a.logits_of(positives, 1024, ctx.device)
        target = ctx.concept.target
        ctx.report("a_margin_target", float((logits.max(1).values - logits[:, target]).mean()))

    @staticmethod
    def _edit(ctx, alpha: float, weight: torch.Tensor, intercept: float):
        edited = ctx.copy_of_a()
        head = linear_layers(edited)[-1]
        target = ctx.concept.target
        with torch.no_grad():
            head.weight[target] += alpha * weight.to(head.weight.device, head.weight.dtype)
            head.bias[target] += alpha * intercept
        return edited

