"""Stage 3: evaluate model N with SAE N on held-out data and write `results/cycle_N.json` (the test split).

`evaluate_split` computes the same metric families on any split; a search's objective uses it on the
validation split (stages/objective.py), so no test figure ever selects hyperparameters.

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
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from sae_ception.errors import ArtifactError, DivergenceError
from sae_ception.evaluation.performance import performance_metrics, spliced_logits
from sae_ception.evaluation.report import flatten_metrics
from sae_ception.evaluation.results_file import read_results
from sae_ception.evaluation.representations import Representation, encode_rows, representation_metrics
from sae_ception.evaluation.rows import DenseRows
from sae_ception.evaluation.sae_quality import QualitySums, row_mean, sae_quality
from sae_ception.run import RunContext
from sae_ception.sae.trainer import DIVERGED_EXPLAINED_VARIANCE, fit_on_training_rows
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import imported_from, model_for_cycle, sae_for_cycle
from sae_ception.stages.auxiliary import auxiliary_metrics
from sae_ception.stages.codes import codes_for_split
from sae_ception.training.classifier import lr_setting_of
from sae_ception.utils.io import load_tensors, read_json, save_tensors, write_json
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)

EVAL_SPLIT = "test"
# Metrics of the SAE codes' families that stay defined when every latent is dead: they count units or rows.
COUNTS = {"num_units", "dead_units", "never_or_always_firing_units", "silhouette_sample_size", "kmeans_sample_size"}


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


def _check_finite(ctx: RunContext, cycle: int, split: str, family: str, values: dict[str, float],
                  names: tuple[str, ...], culprit: str) -> None:
    """One line naming the first non-finite metric among `names` and what to train again (`culprit`)."""
    for name in names:
        value = values[name]
        if not math.isfinite(value):
            raise _diverged(ctx, cycle, f"{family}/{name} is {value} on the {split} split", culprit)


def _diverged(ctx: RunContext, cycle: int, what: str, culprit: str) -> DivergenceError:
    """`culprit`: "SAE" (named with sae.lr) or "model" (with the learning rate that trained it)."""
    if culprit == "SAE":
        setting, lr, path = "sae.lr", ctx.cfg.sae.lr, ctx.layout.sae(cycle)
        source = imported_from(path)
        if source is not None:  # not trained here: no learning rate of this run is to blame
            return DivergenceError(f"evaluation of cycle {cycle} stopped: {what}; the SAE of cycle {cycle} was given "
                                   f"as inputs.sae ({source}) and does not fit model {cycle}'s activations (trained on "
                                   "another model, layer or input scale?): give an SAE trained on this model's target "
                                   "layer, or drop inputs.sae to train one")
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


@dataclass
class SplitEvaluation:
    """Metrics of model N with SAE N on one split: metric families (`{"performance": {...}, "sae": {...}, ...}`,
    undefined values NaN), per-unit arrays for plots (empty when no representation was evaluated), the
    split's example count, whether the SAE is degenerate there (no latent fires), warning lines, and the
    fixed-seed samples the sampled metrics read (None when no representation was evaluated)."""

    metrics: dict[str, dict[str, float]]
    per_unit: dict[str, torch.Tensor]
    num_examples: int
    degenerate: bool
    warnings: list[str] = field(default_factory=list)
    sampling: Optional[dict] = None  # the fixed-seed samples the sampled metrics read (Sampling.record)


def evaluate_split(ctx: RunContext, cycle: int, split: str, performance: bool = True,
                   representations: tuple[str, ...] = ("dense", "sae"), check_own_fit: bool = True) -> SplitEvaluation:
    """Evaluate model N with SAE N on `split` ("val" or "test"; the activations cached for the cycle). Always
    the SAE-quality family (`sae`); the `performance` family when asked (the model's logits from the cache and
    a forward pass with the SAE spliced in); for each of `representations` ("dense": the target layer, "sae":
    its SAE codes) the probe accuracy (fitted on the train split), monosemanticity and clustering families.
    `check_own_fit`: also refuse an SAE that reconstructs its own training rows far worse than their mean.
    Raises DivergenceError (one line, nothing written) when a loss or an SAE error is not finite."""
    model, sae = model_for_cycle(ctx, cycle), sae_for_cycle(ctx, cycle)
    activations = activations_for_cycle(ctx, cycle)
    held_out, train = activations[split], activations["train"]
    scored_rows = held_out.sae_rows(ctx.cfg.sae.token_level)  # token rows for a token-level SAE

    def trust(quality: dict[str, float]) -> dict[str, float]:  # stops (one line, nothing written) on untrustworthy numbers
        _check_finite(ctx, cycle, split, "sae", quality, ("mse", "mse_normalized", "l0", "l1"), "SAE")
        if check_own_fit:
            own_fit = fit_on_training_rows(sae, train.sae_rows(ctx.cfg.sae.token_level))["explained_variance"]
            if own_fit is not None and own_fit < DIVERGED_EXPLAINED_VARIANCE:  # the trainer's rule, for SAEs it did not train
                raise _diverged(ctx, cycle, f"its explained variance on the training rows is {own_fit:.3g}, below "
                                            f"{DIVERGED_EXPLAINED_VARIANCE:g}", "SAE")
        return quality

    # The codes of every example are stored sparse. On per-example rows the same pass sums the SAE's quality, and
    # the codes replace an older store only once those numbers are trusted; token rows are scored first.
    one_pass = "sae" in representations and scored_rows is held_out.acts_ND and len(scored_rows) > 0
    quality = None if one_pass else trust(sae_quality(sae, scored_rows))
    codes = None
    if "sae" in representations:
        sums = QualitySums(sae, row_mean(scored_rows)) if one_pass else None
        hooks = {"on_batch": sums.update, "before_commit": lambda: trust(sums.result())} if one_pass else {}
        codes, encoded = codes_for_split(ctx, cycle, split, sae, **hooks)
        if quality is None:  # one pass: its sums, or, when an earlier evaluation's store was reused, a pass now
            quality = sums.result() if encoded else trust(sae_quality(sae, scored_rows))
    metrics: dict[str, dict[str, float]] = {}
    if performance:
        metrics["performance"] = performance_metrics(
            held_out.logits_NC,
            spliced_logits(model, sae, getattr(ctx.splits, split).x, ctx.accelerator, ctx.cfg.eval_batch_size,
                           ctx.cfg.sae.token_level),
            held_out.labels_N,
        )
        if len(held_out.labels_N):
            _check_finite(ctx, cycle, split, "performance", metrics["performance"], ("loss",), "model")
            _check_finite(ctx, cycle, split, "performance", metrics["performance"], ("spliced_loss",), "SAE")
    metrics["sae"] = quality
    families, per_unit, sampling = {}, {}, None
    if representations:
        train_rows, seed = DenseRows(train.acts_ND), ctx.seed_for(cycle, "evaluate")
        reps = {"dense": lambda: Representation(DenseRows(held_out.acts_ND), train_rows.take, len(train.labels_N)),
                "sae": lambda: Representation(codes, lambda rows: encode_rows(sae, train_rows.take(rows)),
                                              len(train.labels_N), codes=True)}
        settings = ctx.cfg.evaluation.sampling()
        families, per_unit = representation_metrics({rep: reps[rep]() for rep in representations}, train.labels_N,
                                                    held_out.labels_N, seed, settings)
        sampling = settings.record(len(train.labels_N), len(held_out.labels_N), seed)
    degenerate = quality["dead_fraction"] == 1.0
    warnings = []
    if quality["explained_variance"] < 0:  # (False when undefined: NaN)
        # not a stop: the trainer already refused SAEs that diverged on their training rows, so this is a poor fit
        # to held-out data (a learning rate on the edge, an SAE trained on a handful of examples), reported as such
        warnings.append(f"the SAE of cycle {cycle} reconstructs the {split} split worse than its mean "
                        f"(explained variance {quality['explained_variance']:.3g})")
        log.warning("cycle %d: %s", cycle, warnings[-1])
    if degenerate:
        families = undefine_code_metrics(families)
        warnings.append(f"the SAE of cycle {cycle} is degenerate: none of its {sae.d_sae} latents fires on the "
                        f"{split} split; its code-based metrics are undefined (null)")
        log.warning("cycle %d: %s", cycle, warnings[-1])
    return SplitEvaluation({**metrics, **families}, per_unit, len(held_out.labels_N), degenerate, warnings, sampling)


def run_evaluate(ctx: RunContext, cycle: int, recompute: bool = False) -> dict[str, Any]:
    """Results of cycle N on the test split (`results/cycle_N.json`); an existing results file is reused unless
    `recompute` (scripts/evaluate.py). A damaged or missing results or unit-scores file is recomputed (both
    derive from the checkpoints). Raises DivergenceError (nothing written) when the model's or the SAE's
    numbers are not finite."""
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
    evaluation = evaluate_split(ctx, cycle, EVAL_SPLIT)
    metrics = {**evaluation.metrics, **auxiliary_family(ctx, cycle)}
    results = {
        "cycle": cycle,
        "split": EVAL_SPLIT,
        "num_examples": evaluation.num_examples,
        "model": str(ctx.layout.model(cycle)),
        "sae": str(ctx.layout.sae(cycle)),
        "sae_degenerate": evaluation.degenerate,
        "warnings": evaluation.warnings,
        "sampling": evaluation.sampling,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if ctx.accelerator.is_main_process:
        save_tensors(ctx.layout.unit_scores(cycle), evaluation.per_unit)  # before the JSON, which marks the cycle done
        write_json(path, results)
    if ctx.tracker is not None:
        ctx.tracker.log_cycle(cycle, flatten_metrics(metrics))
    log.info(summary_line(cycle, metrics, evaluation.degenerate))
    return results
