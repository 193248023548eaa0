"""Stage 2: freeze model N, read its cached target-layer activations, train SAE N on the training split."""

from __future__ import annotations

import logging
from pathlib import Path

from sae_ception.run import RunContext
from sae_ception.sae import build_sae, train_sae
from sae_ception.sae.calibration import train_calibrated
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import sae_for_cycle
from sae_ception.utils.batching import num_batches
from sae_ception.utils.io import checkpoint_exists
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)


def run_sae(ctx: RunContext, cycle: int) -> Path:
    cfg, target = ctx.cfg, ctx.layout.sae(cycle)
    if cfg.inputs.sae and cycle == cfg.cycle.current:
        sae_for_cycle(ctx, cycle)  # validates and imports the given SAE
        return target
    if checkpoint_exists(target):
        log.info("cycle %d: found %s, skipping SAE training (resume)", cycle, target)
        return target
    activations = activations_for_cycle(ctx, cycle)
    acts = activations["train"].sae_rows(cfg.sae.token_level)
    seed = ctx.seed_for(cycle, "sae")
    seed_everything(seed)
    sae = build_sae(cfg.sae, d_in=acts.shape[1])
    steps_per_run = cfg.sae.epochs * num_batches(len(acts), cfg.sae.batch_size)  # one x-axis across cycles
    log.info("cycle %d: training a %s SAE %d -> %d on %d %s activations", cycle, cfg.sae.type, sae.d_in, sae.d_sae,
             len(acts), "token" if cfg.sae.token_level else "per-example")
    log_fn = ctx.log_fn("sae", step_offset=cycle * steps_per_run)
    if cfg.sae.target_l0 is not None:  # search the penalty on a subset, then train on everything
        sae, stats = train_calibrated(cfg.sae, acts, activations["val"].sae_rows(cfg.sae.token_level),
                                      accelerator=ctx.accelerator, seed=seed, log_fn=log_fn, show_progress=cfg.progress)
    else:
        stats = train_sae(sae, acts, cfg.sae, accelerator=ctx.accelerator, seed=seed, log_fn=log_fn,
                          show_progress=cfg.progress)
    if ctx.accelerator.is_main_process:
        sae.save(target, extra={"cycle": cycle, "training": stats})
    ctx.accelerator.wait_for_everyone()
    log.info("cycle %d: saved %s", cycle, target)
    return target
