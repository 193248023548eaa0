"""Stage 4+5: sharpen SAE N's codes of the training examples into targets, retrain model N into model N+1.

Non-finite targets (an SAE that decodes to NaN or inf) or a retraining that diverges stop the stage with one
line before anything is saved: model N, SAE N and cycle N's results stay as they were."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sae_ception.models import save_model
from sae_ception.run import RunContext
from sae_ception.sharpening import build_sharpener
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, sae_for_cycle
from sae_ception.sae.trainer import diverged
from sae_ception.training.classifier import (AuxiliaryTargets, ClassifierSchedule, evaluate_classifier, lr_setting_of,
                                             train_classifier)
from sae_ception.utils.batching import num_batches
from sae_ception.utils.io import checkpoint_exists
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)


def run_auxiliary(ctx: RunContext, cycle: int) -> Path:
    cfg, target = ctx.cfg, ctx.layout.model(cycle + 1)
    if checkpoint_exists(target):
        log.info("cycle %d: found %s, skipping auxiliary training (resume)", cycle, target)
        return target
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    train_acts = activations_for_cycle(ctx, cycle)["train"]
    generator = seed_everything(ctx.seed_for(cycle, "sharpen"))
    targets_ND = build_sharpener(cfg.sharpening).make_targets(sae, train_acts.acts_ND, train_acts.labels_N, generator)
    if not bool(torch.isfinite(targets_ND).all()):
        raise diverged(cfg.sae, f"SAE training of cycle {cycle}",
                       f"(its sharpened targets for auxiliary training hold NaN or inf; {ctx.layout.sae(cycle)})")

    generator = seed_everything(ctx.seed_for(cycle, "auxiliary"))
    schedule = ClassifierSchedule.from_model_config(cfg.model, cfg.cycle.epochs, cfg.cycle.lr or cfg.model.lr, cfg.cycle.keep_best)
    steps_per_run = schedule.epochs * num_batches(len(train_acts.labels_N), schedule.batch_size)
    log.info("cycle %d: auxiliary training (%s sharpening, top %.3g%%, weight %g) for %d epochs", cycle,
             cfg.sharpening.type, cfg.sharpening.top_k_pct, cfg.cycle.aux_loss_weight, schedule.epochs)
    model, info = train_classifier(
        model, ctx.splits.train, ctx.splits.val, schedule,
        accelerator=ctx.accelerator, generator=generator, stage="auxiliary",
        aux=AuxiliaryTargets(targets_ND, cfg.cycle.aux_loss_weight), trainable=tuple(cfg.cycle.trainable),
        log_fn=ctx.log_fn("auxiliary", step_offset=cycle * steps_per_run), show_progress=cfg.progress,
        eval_batch_size=cfg.eval_batch_size, what=f"auxiliary training of cycle {cycle}",
        lr_setting=lr_setting_of(cfg, cycle + 1)[0],
    )
    val = evaluate_classifier(model, ctx.splits.val, ctx.accelerator, cfg.eval_batch_size)
    if ctx.accelerator.is_main_process:
        save_model(model, target, extra={"stage": "auxiliary", "from_cycle": cycle, "val": val, **info})
    ctx.accelerator.wait_for_everyone()
    log.info("cycle %d: model %d val accuracy %.4f, saved %s", cycle, cycle + 1, val["accuracy"], target)
    return target
