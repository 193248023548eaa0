"""The whole SAE-ception loop: baseline, then per cycle SAE -> evaluate -> auxiliary retraining."""

from __future__ import annotations

import logging

from sae_ception.run import RunContext
from sae_ception.stages.auxiliary import run_auxiliary
from sae_ception.stages.baseline import run_baseline
from sae_ception.stages.evaluate import flatten_metrics, run_evaluate
from sae_ception.stages.sae import run_sae

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    ("performance/accuracy", "acc"),
    ("performance/spliced_accuracy", "spliced"),
    ("sae/mse", "SAE mse"),
    ("sae/explained_variance", "EV"),
    ("sae/l0", "L0"),
    ("sae/dead_fraction", "dead"),
    ("monosemanticity_dense/csi_mean", "CSI"),
    ("monosemanticity_dense/u_mean", "U"),
    ("monosemanticity_sae/csi_mean", "SAE CSI"),
    ("monosemanticity_sae/u_mean", "SAE U"),
    ("clustering_sae/ari_kmeans", "SAE ARI"),
    ("probe/sae_accuracy", "SAE probe"),
)


def run_cycles(ctx: RunContext) -> list[dict]:
    """Models current..max_cycles each get an SAE and an evaluation; all but the last get retrained."""
    first, last = ctx.cfg.cycle.current, ctx.cfg.cycle.max_cycles
    if first == 0:
        run_baseline(ctx)
    results = []
    for cycle in range(first, last + 1):
        run_sae(ctx, cycle)
        results.append(run_evaluate(ctx, cycle))
        if cycle < last:
            run_auxiliary(ctx, cycle)
    log.info("summary across cycles (%s split):\n%s", results[0]["split"] if results else "test", format_table(results))
    return results


def format_table(results: list[dict]) -> str:
    widths = [max(8, len(name)) for _, name in TABLE_COLUMNS]
    header = "cycle | " + " | ".join(f"{name:>{width}}" for (_, name), width in zip(TABLE_COLUMNS, widths))
    rows = [header, "-" * len(header)]
    for result in results:
        flat = flatten_metrics(result["metrics"])
        rows.append(f"{result['cycle']:>5} | " + " | ".join(_cell(flat.get(key), width) for (key, _), width in zip(TABLE_COLUMNS, widths)))
    return "\n".join(rows)


def _cell(value, width: int) -> str:
    """A table cell; undefined metrics (null in JSON, NaN in memory) show as n/a."""
    return f"{'n/a':>{width}}" if value is None or value != value else f"{value:>{width}.4g}"
