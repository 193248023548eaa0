"""Training a concept editor's free parameters (its detector, strength, blend, offset) with the deep dive's
multi-objective loss (`../shared/reference/network-surgery-deep-dive.md`, "Optimization Framework"):

    L = λ₁ ‖f_A'(x) − f_A(x)‖²          preservation: edited logits stay A's on images of A's classes
      + λ₂ CE(f_A'(x₄), target)          transfer: the target images are called the target
      + λ₃ (−mean log p(target | z(x₄)))  confidence: the gate opens on the target images

(λ₁ 0.7, λ₂ 0.6, λ₃ 0.1; Adam, lr 0.01, 50 steps of 16 target + 32 replay images: the deep dive's values, and
the same images, batches and steps as finetune_head's defaults). Only the editor trains: A's own weights and
the SAE inside stay bit-identical. The preservation term is the mean over logits of the squared difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.transfer.editor import editor_of
from sae_ception.transfer.finetune import _Passes, replay_per_class, step_or_diverge

if TYPE_CHECKING:
    from sae_ception.transfer.context import TransferContext


@dataclass
class EditorTraining:
    """Settings of the multi-objective optimisation (a mixin of the methods that train an editor)."""

    target_images: int = 100  # k: labelled target images of the transfer and confidence terms
    steps: int = 50  # Adam steps (0: keep the editor as built)
    lr: float = 0.01
    target_batch: int = 16
    replay_batch: int = 32
    replay_per_class: Optional[int] = 100  # preservation images: this many of each of A's classes
    preservation_weight: float = 0.7  # λ₁
    transfer_weight: float = 0.6  # λ₂
    confidence_weight: float = 0.1  # λ₃

    def validate_training(self, name: str, cfg=None) -> None:
        def refuse(key: str, rule: str) -> None:
            raise ConfigError(f"transfer.{name}.{key}={getattr(self, key)} {rule}")

        if self.target_images < 1:
            refuse("target_images", "must be a positive integer (labelled target images)")
        if self.steps < 0:
            refuse("steps", "must be >= 0 (Adam steps; 0 keeps the editor as built)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            refuse("lr", "must be a finite number > 0")
        for key in ("target_batch", "replay_batch"):
            if getattr(self, key) < 1:
                refuse(key, "must be a positive integer (images per step)")
        if self.replay_per_class is not None and self.replay_per_class < 1:
            refuse("replay_per_class", "must be a positive integer, or null for every image of A's classes")
        for key in ("preservation_weight", "transfer_weight", "confidence_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                refuse(key, "must be a finite number >= 0")
        if cfg is not None and 0 < self.steps * self.replay_batch < len(cfg.concept.classes_a):
            raise ConfigError(f"transfer.{name}.steps={self.steps} x transfer.{name}.replay_batch={self.replay_batch} "
                              f"draw fewer preservation images than A has classes ({len(cfg.concept.classes_a)}); "
                              "raise them")


def train_editor(ctx: "TransferContext", edited, cfg: EditorTraining) -> None:
    """`cfg.steps` Adam steps on the editor inside `edited` (attached by editor.attach), in place. Counts its
    images (k target images; `replay_per_class` of each of A's classes, never more than the steps can draw, so
    every counted image is trained on) and steps into the budget, and reports
    the last step's loss terms (`loss_preservation`, `loss_transfer`, `loss_confidence`). DivergenceError (one
    line naming transfer.<name>.lr) on a non-finite loss, an update that overflows, or a non-finite parameter."""
    concept, device = ctx.concept, ctx.device
    editor = editor_of(edited)
    params = [p for p in editor.parameters() if p.requires_grad]
    if cfg.steps == 0 or not params:  # nothing trains: no image is used
        return
    target_x = ctx.target_images(cfg.target_images)
    replay = ctx.class_images(list(concept.classes_a), replay_per_class(cfg, len(concept.classes_a)))
    reference = ctx.model_a.logits_of(replay.x, 1024, device).to(device)  # A's logits: what preservation keeps
    target_x, replay_x = target_x.to(device), replay.x.to(device)
    draws_t, draws_r = _Passes(len(target_x), ctx.generator), _Passes(len(replay_x), ctx.generator)
    for param in edited.parameters():
        param.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    labels = torch.full((cfg.target_batch,), concept.target, dtype=torch.long, device=device)
    edited.eval()  # no dropout, and the SAE inside encodes as at inference (e.g. BatchTopK's threshold)
    terms = {}
    for step in range(1, cfg.steps + 1):
        rows_t, rows_r = draws_t.take(cfg.target_batch).to(device), draws_r.take(cfg.replay_batch).to(device)
        logits_t = edited(target_x[rows_t])
        gate_t = editor.last_gate
        logits_r = edited(replay_x[rows_r])
        terms = {"preservation": (logits_r - reference[rows_r]).pow(2).mean(),
                 "transfer": F.cross_entropy(logits_t, labels),
                 "confidence": -torch.log(gate_t + 1e-8).mean()}
        loss = (cfg.preservation_weight * terms["preservation"] + cfg.transfer_weight * terms["transfer"]
                + cfg.confidence_weight * terms["confidence"])
        if not torch.isfinite(loss):
            raise _diverged(ctx, cfg, f"at step {step} (loss {float(loss.detach())})")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        step_or_diverge(optimiser, lambda: _diverged(ctx, cfg, f"at step {step} (the update overflows)"))
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise _diverged(ctx, cfg, "(a parameter is not finite after the last step)")
    for param in edited.parameters():
        param.requires_grad_(False)
    ctx.add_steps(cfg.steps)
    for key, value in terms.items():
        ctx.report(f"loss_{key}", float(value.detach()))


def _diverged(ctx: "TransferContext", cfg: EditorTraining, how: str) -> DivergenceError:
    return DivergenceError(f"{ctx.setting('lr')}={cfg.lr:g}: training the concept editor of transfer/{ctx.name} "
                           f"diverged {how}; lower it")
