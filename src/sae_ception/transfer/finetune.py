"""The training baselines of concept transfer: A fine-tuned on k labelled target images (with replay of A's own
classes), either its target output row only (`finetune_head`) or every parameter (`finetune_replay`).

Both run this one loop, so that for the same seed they draw the same images and the same batches and differ only
in which parameters train. Each step: `target_batch` target images and `replay_batch` images of A's classes
(`concept.classes_a`, drawn once as the replay pool), cross-entropy over every output on the mixed batch, one
Adam step. Batches walk through reshuffled passes of each pool, so every chosen image is used once per pass: with
the defaults (50 steps x 16 of k = 100 target images, 50 x 32 of 4 x 100 replay images) every image the budget
counts is trained on.

These are what a method that "needs no retraining" but runs dozens of gradient steps on target labels (the
reference's 40-60 steps, lr 0.01, batches 16 + 32) must be held against: the same images, the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from sae_ception.errors import ConfigError, DivergenceError
from sae_ception.transfer.config import TransferMethodConfig
from sae_ception.transfer.layers import linear_layers

if TYPE_CHECKING:
    from sae_ception.models import Classifier
    from sae_ception.transfer.context import TransferContext


@dataclass
class FinetuneConfig(TransferMethodConfig):
    """Settings of both training baselines (their YAMLs: configs/transfer/finetune_{head,replay}.yaml)."""

    target_images: int = 100  # k: labelled target-class training images (YAML: ${concept.target_images})
    steps: int = 50  # Adam steps; equal for both baselines by default (equal budgets)
    lr: float = 1e-3  # Adam's learning rate (finetune_head: 0.01, the reference's; all parameters: 1e-3)
    target_batch: int = 16  # target images per step (the reference's transfer batch)
    replay_batch: int = 32  # images of A's classes per step (the reference's preservation batch); 0: no replay
    replay_per_class: Optional[int] = 100  # replay pool: this many training images of each of A's classes; null: all

    def validate_for(self, name: str, cfg) -> None:
        def refuse(key: str, value, rule: str) -> None:
            raise ConfigError(f"transfer.{name}.{key}={value} {rule}")

        if self.target_images < 1:
            refuse("target_images", self.target_images, "must be a positive integer (labelled target images)")
        if self.steps < 1:
            refuse("steps", self.steps, "must be a positive integer (Adam steps)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            refuse("lr", self.lr, "must be a finite number > 0")
        if self.target_batch < 1:
            refuse("target_batch", self.target_batch, "must be a positive integer (target images per step)")
        if self.replay_batch < 0:
            refuse("replay_batch", self.replay_batch, "must be >= 0 (images of A's classes per step; 0: no replay)")
        if self.replay_per_class is not None and self.replay_per_class < 1:
            refuse("replay_per_class", self.replay_per_class,
                   "must be a positive integer (replay images of each of A's classes), or null for all of them")
        draws = self.steps * self.target_batch
        if draws < self.target_images:
            shared = cfg is not None and self.target_images == cfg.concept.target_images
            raise ConfigError(
                f"transfer.{name}.steps={self.steps} x transfer.{name}.target_batch={self.target_batch} draw only "
                f"{draws} target images, fewer than "
                f"{'concept' if shared else f'transfer.{name}'}.target_images={self.target_images}"
                f"{f' (as transfer.{name}.target_images)' if shared else ''}: some of them would never be trained "
                "on, yet be counted; raise the steps or the batch, or lower target_images")
        if cfg is not None and 0 < self.steps * self.replay_batch < len(cfg.concept.classes_a):
            raise ConfigError(
                f"transfer.{name}.steps={self.steps} x transfer.{name}.replay_batch={self.replay_batch} draw fewer "
                f"replay images than A has classes ({len(cfg.concept.classes_a)}), so not one image of each could be "
                "replayed; raise them, or set replay_batch=0 for no replay")


def replay_per_class(cfg: FinetuneConfig, classes: int) -> int:
    """Replay images drawn per class of A: `cfg.replay_per_class` (None: all), but never more than the
    steps x replay_batch draws can reach (floor(draws / classes) each), so that every replay image the budget
    counts is trained on (the first pass over the pool covers it)."""
    reach = cfg.steps * cfg.replay_batch // classes  # >= 1: validate_for refuses fewer draws than classes
    return reach if cfg.replay_per_class is None else min(cfg.replay_per_class, reach)


class _Passes:
    """Indices 0..n-1 in reshuffled passes drawn with `generator`: each index once per pass, passes joined when a
    batch is larger than what is left (or than n)."""

    def __init__(self, n: int, generator: torch.Generator):
        if n < 1:
            raise ValueError("nothing to draw batches from: the pool is empty")
        self.n, self.generator = n, generator
        self.queue = torch.zeros(0, dtype=torch.long)

    def take(self, count: int) -> torch.Tensor:
        while len(self.queue) < count:
            self.queue = torch.cat([self.queue, torch.randperm(self.n, generator=self.generator)])
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken


Forward = Callable[[torch.Tensor], torch.Tensor]


def step_or_diverge(optimiser: torch.optim.Optimizer, diverged: Callable[[], Exception]) -> None:
    """`optimiser.step()`, with the overflow an absurd learning rate causes inside torch's update (e.g. Adam's
    lr / (1 − β₁) beyond float32 at lr 1e38, a RuntimeError "... without overflow") raised as `diverged()` (a
    one-line DivergenceError naming the setting) instead."""
    try:
        optimiser.step()
    except RuntimeError as ex:
        if "overflow" not in str(ex):
            raise
        raise diverged() from None


def _all_parameters(model: "Classifier", target: int) -> tuple[list[torch.Tensor], Forward, Callable[[], None]]:
    return list(model.parameters()), model, lambda: None


def _target_row(model: "Classifier", target: int) -> tuple[list[torch.Tensor], Forward, Callable[[], None]]:
    """The head's target row (weights and bias) as two separate leaf tensors, every parameter of the model frozen;
    the forward pass reads the head with that row substituted; `write_back` copies the row into the head."""
    head = linear_layers(model)[-1]
    prefix = next(name for name, module in model.named_modules() if module is head)
    for param in model.parameters():
        param.requires_grad_(False)
    weight_row = head.weight[target].detach().clone().requires_grad_(True)
    bias_row = head.bias[target].detach().clone().requires_grad_(True)
    is_row = torch.arange(head.out_features, device=head.weight.device) == target

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = torch.where(is_row[:, None], weight_row[None, :], head.weight)
        bias = torch.where(is_row, bias_row, head.bias)
        return functional_call(model, {f"{prefix}.weight": weight, f"{prefix}.bias": bias}, (x,))

    @torch.no_grad()
    def write_back() -> None:
        head.weight[target] = weight_row
        head.bias[target] = bias_row
        for param in model.parameters():
            param.requires_grad_(True)

    return [weight_row, bias_row], forward, write_back


SCOPES = {"target_row": _target_row, "all": _all_parameters}


def finetune(ctx: "TransferContext", cfg: FinetuneConfig, scope: str) -> "Classifier":
    """A copy of A trained `cfg.steps` Adam steps on k target images (label `concept.target`) mixed with replay
    images of A's classes (their own labels), training `scope`: "target_row" (the head's target row only, every
    other value bit-identical to A's) or "all". Images and batches come from `ctx.generator` in the same order for
    either scope. Raises DivergenceError (one line naming transfer.<name>.lr) on a non-finite loss or weight."""
    concept, device, generator = ctx.concept, ctx.device, ctx.generator
    edited = ctx.copy_of_a()
    target_x = ctx.target_images(cfg.target_images)
    pools = [(target_x, torch.full((len(target_x),), concept.target, dtype=torch.long), cfg.target_batch)]
    if cfg.replay_batch > 0:
        replay = ctx.class_images(list(concept.classes_a), replay_per_class(cfg, len(concept.classes_a)))
        pools.append((replay.x, replay.y, cfg.replay_batch))
    pools = [(x.to(device), y.to(device), _Passes(len(y), generator), batch) for x, y, batch in pools]

    params, forward, write_back = SCOPES[scope](edited, concept.target)
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    edited.train()
    for step in range(1, cfg.steps + 1):
        drawn = [(x, y, passes.take(batch).to(device)) for x, y, passes, batch in pools]  # target, then replay
        inputs = torch.cat([x[rows] for x, _, rows in drawn])
        labels = torch.cat([y[rows] for _, y, rows in drawn])
        loss = F.cross_entropy(forward(inputs), labels)
        if not torch.isfinite(loss):
            raise _diverged(ctx, cfg, f"at step {step} (loss {float(loss.detach())})")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        step_or_diverge(optimiser, lambda: _diverged(ctx, cfg, f"at step {step} (the update overflows)"))
    ctx.add_steps(cfg.steps)
    write_back()
    if not all(bool(torch.isfinite(p).all()) for p in edited.parameters()):
        raise _diverged(ctx, cfg, "(a weight is not finite after the last step)")
    return edited


def _diverged(ctx: "TransferContext", cfg: FinetuneConfig, how: str) -> DivergenceError:
    lr = ctx.setting("lr")
    return DivergenceError(f"{lr}={cfg.lr:g}: transfer/{ctx.name} fine-tuning diverged {how}; lower {lr}")
