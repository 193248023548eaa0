"""Stage 3: evaluate model N with SAE N on held-out data and write `results/cycle_N.json`.

The results file groups metrics by family (`performance`, `sae`, ...) so later metric families slot in
as new keys; `flatten_metrics` gives the `family/name` keys used in wandb and tables.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sae_ception.evaluation.performance import performance_metrics, spliced_logits
from sae_ception.evaluation.report import flatten_metrics
from sae_ception.evaluation.representations import encode_all, representation_metrics
from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.run import RunContext
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, sae_for_cycle
from sae_ception.utils.io import read_json, save_tensors, write_json
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)

EVAL_SPLIT = "test"


def summary_line(cycle: int, metrics: dict[str, dict[str, float]]) -> str:
    perf, sae = metrics["performance"], metrics["sae"]
    return (
        f"cycle {cycle} | test acc {perf['accuracy']:.4f} | spliced acc {perf['spliced_accuracy']:.4f} "
        f"| SAE mse {sae['mse']:.4g} | EV {sae['explained_variance']:.3f} | L0 {sae['l0']:.1f} "
        f"| dead {sae['dead_fraction']:.1%} | SAE CSI {_fmt(metrics['monosemanticity_sae']['csi_mean'])} "
        f"U {_fmt(metrics['monosemanticity_sae']['u_mean'])} ARI {_fmt(metrics['clustering_sae']['ari_kmeans'])}"
    )


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def run_evaluate(ctx: RunContext, cycle: int, recompute: bool = False) -> dict[str, Any]:
    """Results of cycle N; an existing results file is reused unless `recompute` (scripts/evaluate.py)."""
    path = ctx.layout.results(cycle)
    if path.is_file() and not recompute:
        log.info("cycle %d: found %s, skipping evaluation (resume)", cycle, path)
        results = read_json(path)
        log.info(summary_line(cycle, results["metrics"]))
        return results
    seed_everything(ctx.seed_for(cycle, "evaluate"))
    started = time.perf_counter()
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    activations = activations_for_cycle(ctx, cycle)
    held_out, train = activations[EVAL_SPLIT], activations["train"]
    split = getattr(ctx.splits, EVAL_SPLIT)
    families, per_unit = representation_metrics(
        train={"dense": train.acts_ND, "sae": encode_all(sae, train.acts_ND)}, train_labels=train.labels_N,
        test={"dense": held_out.acts_ND, "sae": encode_all(sae, held_out.acts_ND)}, test_labels=held_out.labels_N,
        seed=ctx.seed_for(cycle, "evaluate"),
    )
    metrics = {
        "performance": performance_metrics(
            held_out.logits_NC,
            spliced_logits(model, sae, split.x, ctx.accelerator, ctx.cfg.eval_batch_size, ctx.cfg.sae.token_level),
            held_out.labels_N,
        ),
        "sae": sae_quality(sae, held_out.sae_rows(ctx.cfg.sae.token_level).to(ctx.accelerator.device)),
        **families,
    }
    results = {
        "cycle": cycle,
        "split": EVAL_SPLIT,
        "num_examples": len(held_out.labels_N),
        "model": str(ctx.layout.model(cycle)),
        "sae": str(ctx.layout.sae(cycle)),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if ctx.accelerator.is_main_process:
        save_tensors(ctx.layout.unit_scores(cycle), per_unit)  # before the JSON, which marks the cycle done
        write_json(path, results)
    if ctx.tracker is not None:
        ctx.tracker.log_cycle(cycle, flatten_metrics(metrics))
    log.info(summary_line(cycle, metrics))
    return results
