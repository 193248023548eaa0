"""Stage 2: freeze model N, read its cached target-layer activations, train SAE N on the training split.

A training that diverges stops here with one line (DivergenceError from the trainer) and saves nothing, so
whatever the run folder held stays as it was. An SAE whose latents all end dead is saved but reported as
degenerate (a warning here; its evaluation marks it too)."""

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
    log_fn, what = ctx.log_fn("sae", step_offset=cycle * steps_per_run), f"SAE training of cycle {cycle}"
    if cfg.sae.target_l0 is not None:  # search the penalty on a subset, then train on everything
        sae, stats = train_calibrated(cfg.sae, acts, activations["val"].sae_rows(cfg.sae.token_level),
                                      accelerator=ctx.accelerator, seed=seed, log_fn=log_fn, show_progress=cfg.progress,
                                      what=what)
    else:
        stats = train_sae(sae, acts, cfg.sae, accelerator=ctx.accelerator, seed=seed, log_fn=log_fn,
                          show_progress=cfg.progress, what=what)
    fit = stats["final_fit"]
    log.info("cycle %d: the SAE explains %s of the variance of %d training rows at L0 %.2f (inference)", cycle,
             "n/a" if fit["explained_variance"] is None else f"{fit['explained_variance']:.3f}", fit["rows"], fit["l0"])
    if stats["degenerate"]:
        log.warning("cycle %d: the SAE is degenerate: none of its %d latents fires on the %d training rows (all "
                    "dead)%s; its code-based metrics will be undefined", cycle, sae.d_sae, fit["rows"],
                    "; these activations do not vary (is model %d's target layer dead?)" % cycle
                    if fit["explained_variance"] is None and fit["rows"] > 1 else "")
    if ctx.accelerator.is_main_process:
        sae.save(target, extra={"cycle": cycle, "training": stats})
    ctx.accelerator.wait_for_everyone()
    log.info("cycle %d: saved %s", cycle, target)
    return target
