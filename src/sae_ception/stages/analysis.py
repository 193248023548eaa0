"""Stage: per-feature reports of SAE N on model N's test split (`analysis/cycle_N/feature_report.json`), drawn as
a gallery of feature cards (`analysis/cycle_N/index.html`, and wandb images when wandb is on)."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import torch

from sae_ception.evaluation.features import (input_gradient_maps, logit_effects, most_active_from_stats,
                                             streamed_feature_statistics)
from sae_ception.evaluation.gallery import card_caption, card_png, gallery_html
from sae_ception.evaluation.top_tokens import describe_top_tokens, top_activating_tokens
from sae_ception.evaluation.unit_stats import unit_stats
from sae_ception.models.pretrained import load_tokenizer
from sae_ception.models.tokenize import token_texts
from sae_ception.run import RunContext
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, sae_for_cycle
from sae_ception.stages.codes import codes_for_split
from sae_ception.utils.io import write_json, write_text

log = logging.getLogger(__name__)


def run_analysis(ctx: RunContext, cycle: int) -> Path:
    """Statistics, strongest examples and logit effects of the `analysis.num_features` most active features,
    with input-gradient maps (image data) or top tokens in context (text). A feature's logit effect raises
    it by its mean activation when active. The statistics stream over the test codes stored sparse
    (`codes_for_split`): memory is bounded by a chunk of rows whatever the split's size."""
    cfg = ctx.cfg.analysis
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    test = activations_for_cycle(ctx, cycle)["test"]
    codes, _ = codes_for_split(ctx, cycle, "test", sae)  # stored sparse by the evaluation, else encoded now
    chunk_rows = ctx.cfg.evaluation.chunk_rows
    stats = unit_stats(codes, test.labels_N, chunk_rows)
    features = most_active_from_stats(stats, cfg.num_features)
    report = streamed_feature_statistics(codes, test.labels_N, stats, features, ctx.splits.num_classes, cfg.top_k,
                                         chunk_rows)
    amounts = torch.tensor([entry["mean_activation"] for entry in report])
    device = ctx.accelerator.device
    effects_SC = logit_effects(model, sae, ctx.splits.test.x, features, amounts, ctx.cfg.eval_batch_size, device)
    for entry, effects in zip(report, effects_SC):
        entry["logit_effects"] = effects.tolist()
        entry["promotes"], entry["suppresses"] = int(effects.argmax()), int(effects.argmin())
    if ctx.splits.is_text:  # the tokens each feature fires on most, per token (also for an SAE trained on pooled rows)
        hits = top_activating_tokens(model, sae, ctx.splits.test.x, features, cfg.top_k, cfg.context,
                                     ctx.cfg.eval_batch_size, device)
        decode = partial(token_texts, load_tokenizer(ctx.cfg.model.pretrained))
        for entry, tokens in zip(report, describe_top_tokens(hits, ctx.splits.test.x, test.labels_N, decode)):
            entry["top_tokens"] = tokens
    else:  # images: which input pattern drives each feature, as a 2-D map
        rows = [[example["index"] for example in entry["top_examples"]] for entry in report]
        maps = input_gradient_maps(model, sae, ctx.splits.test.x, features, rows, device)
        for entry, heatmap in zip(report, maps):
            entry["input_gradient_map"] = heatmap.view(*image_shape(ctx)).tolist()
    path = ctx.layout.feature_report(cycle)
    if ctx.accelerator.is_main_process:
        document = {"cycle": cycle, "split": "test", "num_examples": len(test.labels_N),
                    "num_latents": int(codes.shape[1]), "features": report}
        write_json(path, document)
        write_gallery(ctx, cycle, document)
    log.info("cycle %d: feature report of %d features at %s", cycle, len(report), path)
    return path


def image_shape(ctx: RunContext) -> tuple[int, int]:
    """How one input is drawn: its own 2-D shape, else a single row."""
    shape = ctx.splits.input_shape
    return tuple(shape) if len(shape) == 2 else (1, ctx.splits.input_dim)


def write_gallery(ctx: RunContext, cycle: int, document: dict) -> Path:
    """One card per feature in `analysis/cycle_N/index.html`, and the same cards as wandb images."""
    started = time.perf_counter()
    pngs = {}
    for entry in document["features"]:
        examples_KHW = None
        if not ctx.splits.is_text:
            rows = [example["index"] for example in entry["top_examples"]]
            examples_KHW = ctx.splits.test.x[rows].reshape(len(rows), *image_shape(ctx)).numpy()
        pngs[entry["feature"]] = card_png(entry, examples_KHW)
    path = ctx.layout.feature_gallery(cycle)
    write_text(path, gallery_html(document, pngs, f"SAE features of cycle {cycle}"))
    if ctx.tracker is not None:
        ctx.tracker.log_feature_cards(cycle, {entry["feature"]: (pngs[entry["feature"]], card_caption(entry))
                                              for entry in document["features"]})
    seconds = time.perf_counter() - started
    log.info("cycle %d: gallery of %d feature cards at %s (%.1f s)", cycle, len(pngs), path, seconds)
    return path
