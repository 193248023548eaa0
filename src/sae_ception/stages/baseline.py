"""Stage 1 (cycle 0): train the baseline classifier, or take a given checkpoint as model 0."""

from __future__ import annotations

import logging
from pathlib import Path

from sae_ception.models import save_model
from sae_ception.run import RunContext
from sae_ception.stages.artifacts import model_for_cycle, new_model
from sae_ception.training.classifier import ClassifierSchedule, evaluate_classifier, lr_setting_of, train_classifier
from sae_ception.utils.io import checkpoint_exists
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)


def run_baseline(ctx: RunContext) -> Path:
    cfg, target = ctx.cfg, ctx.layout.model(0)
    if cfg.inputs.model and cfg.cycle.current == 0:
        model_for_cycle(ctx, 0)  # validates and imports the given checkpoint as model 0
        return target
    if checkpoint_exists(target):
        log.info("baseline: found %s, skipping (resume)", target)
        return target
    generator = seed_everything(ctx.seed_for(0, "baseline"))
    model = new_model(ctx)
    schedule = ClassifierSchedule.from_model_config(cfg.model, cfg.model.epochs, cfg.model.lr, cfg.model.keep_best)
    log.info("baseline: training %s on %d examples for %d epochs", cfg.model.name, len(ctx.splits.train.y), schedule.epochs)
    model, info = train_classifier(
        model, ctx.splits.train, ctx.splits.val, schedule,
        accelerator=ctx.accelerator, generator=generator, stage="baseline",
        log_fn=ctx.log_fn("baseline"), show_progress=cfg.progress, eval_batch_size=cfg.eval_batch_size,
        what="baseline training", lr_setting=lr_setting_of(cfg, 0)[0],
    )
    val = evaluate_classifier(model, ctx.splits.val, ctx.accelerator, cfg.eval_batch_size)
    if ctx.accelerator.is_main_process:
        save_model(model, target, extra={"stage": "baseline", "val": val, **info})
    ctx.accelerator.wait_for_everyone()
    log.info("baseline: val accuracy %.4f, saved %s", val["accuracy"], target)
    return target
