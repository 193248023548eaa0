"""Stage: per-feature reports of SAE N on model N's test split (`analysis/cycle_N/feature_report.json`)."""

from __future__ import annotations

import logging
from pathlib import Path

from sae_ception.evaluation.features import feature_statistics, input_gradient_maps, logit_effects, most_active_features
from sae_ception.evaluation.representations import encode_all
from sae_ception.run import RunContext
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, sae_for_cycle
from sae_ception.utils.io import write_json

log = logging.getLogger(__name__)


def run_analysis(ctx: RunContext, cycle: int) -> Path:
    """Statistics, strongest examples and logit effects of the `analysis.num_features` most active features.
    A feature's logit effect raises it by its mean activation when active."""
    cfg = ctx.cfg.analysis
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    test = activations_for_cycle(ctx, cycle)["test"]
    codes_NF = encode_all(sae, test.acts_ND)
    features = most_active_features(codes_NF, cfg.num_features)
    report = feature_statistics(codes_NF, test.labels_N, features, ctx.splits.num_classes, cfg.top_k)
    amounts = codes_NF[:, features].sum(0) / (codes_NF[:, features] != 0).sum(0).clamp_min(1)
    effects_SC = logit_effects(model, sae, ctx.splits.test.x, features, amounts, ctx.cfg.eval_batch_size,
                               ctx.accelerator.device)
    for entry, effects in zip(report, effects_SC):
        entry["logit_effects"] = effects.tolist()
        entry["promotes"], entry["suppresses"] = int(effects.argmax()), int(effects.argmin())
    if not ctx.splits.is_text:  # images: which input pattern drives each feature, as a 2-D map
        rows = [[example["index"] for example in entry["top_examples"]] for entry in report]
        maps = input_gradient_maps(model, sae, ctx.splits.test.x, features, rows, ctx.accelerator.device)
        shape = ctx.splits.input_shape if len(ctx.splits.input_shape) == 2 else (1, maps.shape[1])
        for entry, heatmap in zip(report, maps):
            entry["input_gradient_map"] = heatmap.view(*shape).tolist()
    path = ctx.layout.feature_report(cycle)
    if ctx.accelerator.is_main_process:
        write_json(path, {"cycle": cycle, "split": "test", "num_examples": len(test.labels_N),
                          "num_latents": int(codes_NF.shape[1]), "features": report})
    log.info("cycle %d: feature report of %d features at %s", cycle, len(report), path)
    return path
