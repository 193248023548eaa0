"""The whole SAE-ception loop: baseline, then per cycle SAE -> evaluate -> auxiliary retraining."""

from __future__ import annotations

import logging
from pathlib import Path

from sae_ception.evaluation.plots import plot_code_projections, plot_families, plot_unit_histograms
from sae_ception.evaluation.report import format_table, summary_csv
from sae_ception.run import RunContext
from sae_ception.stages.analysis import run_analysis
from sae_ception.stages.auxiliary import run_auxiliary
from sae_ception.stages.baseline import run_baseline
from sae_ception.stages.evaluate import run_evaluate
from sae_ception.stages.sae import run_sae
from sae_ception.errors import ArtifactError
from sae_ception.evaluation.results_file import read_results
from sae_ception.utils.io import checkpoint_exists, load_tensors, write_json, write_text

log = logging.getLogger(__name__)


def run_cycles(ctx: RunContext) -> list[dict]:
    """Models current..max_cycles each get an SAE and an evaluation; all but the last get retrained."""
    first, last = ctx.cfg.cycle.current, ctx.cfg.cycle.max_cycles
    if first == 0:
        with ctx.timed("baseline", 0):
            run_baseline(ctx)
    results = []
    for cycle in range(first, last + 1):
        with ctx.timed("sae", cycle):
            run_sae(ctx, cycle)
        with ctx.timed("evaluate", cycle):
            results.append(run_evaluate(ctx, cycle))
        if ctx.cfg.analysis.enabled:
            with ctx.timed("analysis", cycle):
                run_analysis(ctx, cycle)
        if cycle < last:
            with ctx.timed("auxiliary", cycle):
                run_auxiliary(ctx, cycle)
    with ctx.timed("report", last):
        report(ctx, results)
    if ctx.accelerator.is_main_process:
        write_json(ctx.layout.root / "results" / "timings.json", ctx.timings)
    return results


def evaluable_cycles(ctx: RunContext) -> list[int]:
    """`eval_cycle` when set, else every cycle of the run folder with both a model and an SAE."""
    if ctx.cfg.eval_cycle is not None:
        return [ctx.cfg.eval_cycle]
    return [c for c in ctx.layout.model_cycles() if checkpoint_exists(ctx.layout.sae(c))]


def reevaluate(ctx: RunContext) -> list[dict]:
    """scripts/evaluate.py: recompute the results of every cycle that has a model and an SAE (or of
    `eval_cycle` only), without training anything."""
    results = [run_evaluate(ctx, cycle, recompute=True) for cycle in evaluable_cycles(ctx)]
    report(ctx, results)
    return results


def analyze(ctx: RunContext) -> list[Path]:
    """scripts/analyze_features.py: feature reports of every cycle with a model and an SAE (or `eval_cycle`)."""
    return [run_analysis(ctx, cycle) for cycle in evaluable_cycles(ctx)]


def report(ctx: RunContext, results: list[dict]) -> None:
    """summary.csv over every cycle in the folder, and the table of the cycles run now."""
    if not results:
        return
    if ctx.accelerator.is_main_process:
        every_cycle = read_all_results(ctx)
        write_text(ctx.layout.root / "results" / "summary.csv", summary_csv(every_cycle))
        plots = write_plots(ctx, every_cycle) if ctx.cfg.plots else []
        if ctx.tracker is not None:
            ctx.tracker.log_summary(every_cycle, plots)
        if plots:
            log.info("plots: %s", ctx.layout.plots())
    log.info("results across cycles (%s split; change = cycle %d -> %d):\n%s", results[0]["split"],
             results[0]["cycle"], results[-1]["cycle"], format_table(results))


def write_plots(ctx: RunContext, results: list[dict]) -> list[Path]:
    units = {}
    for result in results:
        path = ctx.layout.unit_scores(result["cycle"])
        try:
            units[result["cycle"]] = {k: v.numpy() for k, v in load_tensors(path).items()}
        except ArtifactError as ex:  # a cycle not evaluated in this invocation: its plots leave it out, and say so
            log.warning("plots leave out cycle %d: %s; rewrite it with `python scripts/evaluate.py run_dir=%s "
                        "eval_cycle=%d`", result["cycle"], str(ex).split("; ")[0], ctx.layout.root, result["cycle"])
    paths = plot_families(results, ctx.layout.plots())
    if units:
        paths += [plot_unit_histograms(units, ctx.layout.plots()), plot_code_projections(units, ctx.layout.plots())]
    return paths


def read_all_results(ctx: RunContext) -> list[dict]:
    """Every cycle's results in this run folder (a run resumed from cycle N still summarises 0..N-1)."""
    paths = [p for p in ctx.layout.root.glob("results/cycle_*.json") if p.stem.split("_", 1)[1].isdigit()]
    return [read_results(p) for p in sorted(paths, key=lambda p: int(p.stem.split("_")[1]))]
