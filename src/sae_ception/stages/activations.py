"""Stage helper: the activations of model N, computed once per cycle and reused by every later stage."""

from __future__ import annotations

import logging

from sae_ception.activations import SplitActivations, collect_activations, load_activations, save_activations
from sae_ception.run import RunContext
from sae_ception.stages.artifacts import model_for_cycle

log = logging.getLogger(__name__)


def activations_for_cycle(ctx: RunContext, cycle: int) -> dict[str, SplitActivations]:
    if cycle in ctx.activation_cache:
        return ctx.activation_cache[cycle]
    path = ctx.layout.activations(cycle)
    if path.is_file():
        acts = load_activations(path)
    else:
        model = model_for_cycle(ctx, cycle)
        acts = collect_activations(model, ctx.splits, ctx.accelerator, ctx.cfg.eval_batch_size)
        if ctx.accelerator.is_main_process:
            save_activations(path, acts)
        log.info("cycle %d: cached %s target-layer activations at %s", cycle,
                 " / ".join(f"{len(a.labels_N)} {name}" for name, a in acts.items()), path)
    ctx.activation_cache = {cycle: acts}  # keep one cycle in memory
    return acts
