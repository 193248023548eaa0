"""Stage 3: evaluate model N with SAE N on held-out data and write `results/cycle_N.json`.

The results file groups metrics by family (`performance`, `sae`, ...) so later metric families slot in
as new keys; `flatten_metrics` gives the `family/name` keys used in wandb and tables.

Numbers that cannot be trusted are never written as if fine:
- a non-finite loss or SAE error (the model's or the SAE's outputs overflow), or an SAE that reconstructs its
  own training rows far worse than their mean (explained variance below DIVERGED_EXPLAINED_VARIANCE: the
  trainer's rule, applied again to SAEs imported or saved by older versions) stops the stage with one line
  (DivergenceError) and writes nothing; an SAE that reconstructs the held-out rows worse than their mean
  (explained variance below 0) is a poor fit (a learning rate on the edge, an SAE trained on a handful of
  examples), not a divergence, and gets a line in `"warnings"`;
- an SAE none of whose latents fires on the held-out rows is degenerate: the results say so
  (`"sae_degenerate": true` and a line in `"warnings"`), its code-based metrics (probe, monosemanticity and
  clustering of the codes) are undefined (null) except the unit counts, and the summary line and the
  end-of-run table do not compare its SAE metrics with other cycles'.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from sae_ception.errors import ArtifactError, DivergenceError
from sae_ception.evaluation.performance import performance_metrics, spliced_logits
from sae_ception.evaluation.report import flatten_metrics
from sae_ception.evaluation.results_file import read_results
from sae_ception.evaluation.representations import encode_all, representation_metrics
from sae_ception.evaluation.sae_quality import sae_quality
from sae_ception.run import RunContext
from sae_ception.sae.trainer import DIVERGED_EXPLAINED_VARIANCE, fit_on_training_rows
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, sae_for_cycle
from sae_ception.stages.auxiliary import auxiliary_metrics
from sae_ception.training.classifier import lr_setting_of
from sae_ception.utils.io import load_tensors, read_json, save_tensors, write_json
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)

EVAL_SPLIT = "test"
# Metrics of the SAE codes' families that stay defined when every latent is dead: they count units or rows.
COUNTS = {"num_units", "dead_units", "never_or_always_firing_units", "silhouette_sample_size"}


def summary_line(cycle: int, metrics: dict[str, dict[str, float]], sae_degenerate: bool = False) -> str:
    """The one-line log summary of a cycle's results; undefined values read n/a, a degenerate SAE says so."""
    perf, sae = metrics["performance"], metrics["sae"]
    line = (
        f"cycle {cycle} | test acc {perf['accuracy']:.4f} | spliced acc {perf['spliced_accuracy']:.4f} "
        f"| SAE mse {sae['mse']:.4g} | EV {_fmt(sae['explained_variance'])} | L0 {sae['l0']:.1f} "
        f"| dead {sae['dead_fraction']:.1%} | SAE CSI {_fmt(metrics['monosemanticity_sae']['csi_mean'])} "
        f"U {_fmt(metrics['monosemanticity_sae']['u_mean'])} ARI {_fmt(metrics['clustering_sae']['ari_kmeans'])}"
    )
    return line + (" | SAE DEGENERATE: all latents dead" if sae_degenerate else "")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def undefine_code_metrics(families: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The metric families with every metric of the SAE codes set to NaN (written as null) except unit
    counts: for a degenerate SAE (no latent fires) they would describe an all-zero matrix, not features."""
    out = {}
    for family, values in families.items():
        if family.endswith("_sae"):
            values = {name: value if name in COUNTS or name.endswith("_live_units") else float("nan")
                      for name, value in values.items()}
        elif family == "probe":
            values = {name: float("nan") if name.startswith("sae") else value for name, value in values.items()}
        out[family] = values
    return out


def _check_finite(ctx: RunContext, cycle: int, family: str, values: dict[str, float], names: tuple[str, ...],
                  culprit: str) -> None:
    """One line naming the first non-finite metric among `names` and what to train again (`culprit`)."""
    for name in names:
        value = values[name]
        if not math.isfinite(value):
            raise _diverged(ctx, cycle, f"{family}/{name} is {value} on the {EVAL_SPLIT} split", culprit)


def _diverged(ctx: RunContext, cycle: int, what: str, culprit: str) -> DivergenceError:
    """`culprit`: "SAE" (named with sae.lr) or "model" (with the learning rate that trained it)."""
    if culprit == "SAE":
        setting, lr, path = "sae.lr", ctx.cfg.sae.lr, ctx.layout.sae(cycle)
    else:
        (setting, lr), path = lr_setting_of(ctx.cfg, cycle), ctx.layout.model(cycle)
    return DivergenceError(f"{setting}={lr:g}: evaluation of cycle {cycle} stopped: {what}; the {culprit} of cycle "
                           f"{cycle} ({path}) diverged: train it again with a lower {setting}")


def auxiliary_family(ctx: RunContext, cycle: int) -> dict[str, dict[str, float]]:
    """`{"auxiliary": ...}`: how model N was made from cycle N-1 (lambda, the objective's terms before and after,
    the budget), from `results/auxiliary_cycle_{N-1}.json`; empty for the baseline, an imported model, or a run
    made before that record existed."""
    path = ctx.layout.auxiliary_record(cycle - 1)
    if cycle == 0 or not path.is_file():
        return {}
    try:
        return {"auxiliary": auxiliary_metrics(read_json(path))}
    except (ArtifactError, KeyError, TypeError, IndexError) as ex:
        log.warning("cycle %d: %s is damaged (%s); its results leave out the auxiliary family", cycle, path,
                    str(ex).split("; ")[0])
        return {}


def run_evaluate(ctx: RunContext, cycle: int, recompute: bool = False) -> dict[str, Any]:
    """Results of cycle N; an existing results file is reused unless `recompute` (scripts/evaluate.py).
    A damaged or missing results or unit-scores file is recomputed (both derive from the checkpoints). Raises DivergenceError (nothing
    written) when the model's or the SAE's numbers are not finite."""
    path = ctx.layout.results(cycle)
    if path.is_file() and not recompute:
        try:
            results = read_results(path)
            load_tensors(ctx.layout.unit_scores(cycle))  # written with it (for the plots): both, or evaluate again
        except ArtifactError as ex:
            log.warning("cycle %d: %s; evaluating again", cycle, str(ex).split("; ")[0])
        else:
            log.info("cycle %d: found %s, skipping evaluation (resume)", cycle, path)
            log.info(summary_line(cycle, results["metrics"], bool(results.get("sae_degenerate"))))
            return results
    seed_everything(ctx.seed_for(cycle, "evaluate"))
    started = time.perf_counter()
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    activations = activations_for_cycle(ctx, cycle)
    held_out, train = activations[EVAL_SPLIT], activations["train"]
    split = getattr(ctx.splits, EVAL_SPLIT)
    quality = sae_quality(sae, held_out.sae_rows(ctx.cfg.sae.token_level).to(ctx.accelerator.device))
    _check_finite(ctx, cycle, "sae", quality, ("mse", "mse_normalized", "l0", "l1"), "SAE")
    own_fit = fit_on_training_rows(sae, train.sae_rows(ctx.cfg.sae.token_level))["explained_variance"]
    if own_fit is not None and own_fit < DIVERGED_EXPLAINED_VARIANCE:  # the trainer's rule, for SAEs it did not train
        raise _diverged(ctx, cycle, f"its explained variance on the training rows is {own_fit:.3g}, below "
                                    f"{DIVERGED_EXPLAINED_VARIANCE:g}", "SAE")
    performance = performance_metrics(
        held_out.logits_NC,
        spliced_logits(model, sae, split.x, ctx.accelerator, ctx.cfg.eval_batch_size, ctx.cfg.sae.token_level),
        held_out.labels_N,
    )
    if len(held_out.labels_N):
        _check_finite(ctx, cycle, "performance", performance, ("loss",), "model")
        _check_finite(ctx, cycle, "performance", performance, ("spliced_loss",), "SAE")
    families, per_unit = representation_metrics(
        train={"dense": train.acts_ND, "sae": encode_all(sae, train.acts_ND)}, train_labels=train.labels_N,
        test={"dense": held_out.acts_ND, "sae": encode_all(sae, held_out.acts_ND)}, test_labels=held_out.labels_N,
        seed=ctx.seed_for(cycle, "evaluate"),
    )
    degenerate = quality["dead_fraction"] == 1.0
    warnings = []
    if quality["explained_variance"] < 0:  # (False when undefined: NaN)
        # not a stop: the trainer already refused SAEs that diverged on their training rows, so this is a poor fit
        # to held-out data (a learning rate on the edge, an SAE trained on a handful of examples), reported as such
        warnings.append(f"the SAE of cycle {cycle} reconstructs the {EVAL_SPLIT} split worse than its mean "
                        f"(explained variance {quality['explained_variance']:.3g})")
        log.warning("cycle %d: %s", cycle, warnings[-1])
    if degenerate:
        families = undefine_code_metrics(families)
        warnings.append(f"the SAE of cycle {cycle} is degenerate: none of its {sae.d_sae} latents fires on the "
                        f"{EVAL_SPLIT} split; its code-based metrics are undefined (null)")
        log.warning("cycle %d: %s", cycle, warnings[-1])
    metrics = {"performance": performance, "sae": quality, **families, **auxiliary_family(ctx, cycle)}
    results = {
        "cycle": cycle,
        "split": EVAL_SPLIT,
        "num_examples": len(held_out.labels_N),
        "model": str(ctx.layout.model(cycle)),
        "sae": str(ctx.layout.sae(cycle)),
        "sae_degenerate": degenerate,
        "warnings": warnings,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if ctx.accelerator.is_main_process:
        save_tensors(ctx.layout.unit_scores(cycle), per_unit)  # before the JSON, which marks the cycle done
        write_json(path, results)
    if ctx.tracker is not None:
        ctx.tracker.log_cycle(cycle, flatten_metrics(metrics))
    log.info(summary_line(cycle, metrics, degenerate))
    return results
