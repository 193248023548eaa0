"""Stage helper: the activations of model N, computed once per cycle and reused by every later stage."""

from __future__ import annotations

import logging

from sae_ception.activations import SplitActivations, collect_activations, load_activations
from sae_ception.run import RunContext
from sae_ception.stages.artifacts import model_for_cycle

log = logging.getLogger(__name__)


def activations_for_cycle(ctx: RunContext, cycle: int) -> dict[str, SplitActivations]:
    if cycle in ctx.activation_cache:
        return ctx.activation_cache[cycle]
    path = ctx.layout.activations(cycle)
    if not path.is_dir():
        if ctx.accelerator.is_main_process:
            with ctx.timed("activations", cycle):
                model = model_for_cycle(ctx, cycle)
                collect_activations(model, ctx.splits, ctx.accelerator, ctx.cfg.eval_batch_size, path,
                                    dtype=ctx.cfg.activation_dtype, tokens=ctx.cfg.sae.token_level)
        ctx.accelerator.wait_for_everyone()
    acts = load_activations(path)
    log.info("cycle %d: target-layer activations (%s) at %s", cycle,
             " / ".join(f"{len(a.labels_N)} {name}" + (f" ({len(a.tokens_TD)} tokens)" if a.tokens_TD is not None else "")
                        for name, a in acts.items()), path)
    ctx.activation_cache = {cycle: acts}  # keep one cycle mapped
    return acts
