"""Stage 4+5: sharpen SAE N's codes of the training examples into targets, retrain into model N+1.

Each candidate weight lambda in `cycle.aux_loss_weight` (one number, or a list) trains one model with
task loss + lambda * aux_loss(activation, target), starting from model N (`cycle.init=continue`) or from a fresh
model with the baseline's seed and schedule (`cycle.init=scratch`, the paper's protocol). Every candidate starts
from the same weights and sees the same data order, so candidates differ only by lambda. The candidate with the
best **validation** accuracy becomes model N+1 (`select_by_validation`; ties go to the earlier lambda in the
list); the test split is evaluated for every candidate and saved beside it, never used to choose.

`results/auxiliary_cycle_N.json` records, per candidate, lambda, validation and test figures, the objective's
terms before and after training (task loss, auxiliary loss, lambda * aux and its ratio to the task loss) and the
budget (gradient steps, labelled examples seen); and for the search as a whole, the chosen lambda and the summed
budget. A killed search resumes from the candidates already finished.

Non-finite targets (an SAE that decodes to NaN or inf) or a retraining that diverges stop the stage with one
line before anything is saved: model N, SAE N and cycle N's results stay as they were."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sae_ception.errors import ArtifactError
from sae_ception.models import Classifier, load_model, save_model
from sae_ception.run import RunContext
from sae_ception.sharpening import build_sharpener
from sae_ception.stages.activations import activations_for_cycle
from sae_ception.stages.artifacts import model_for_cycle, new_model, require_model, sae_for_cycle
from sae_ception.sae.trainer import diverged
from sae_ception.training.classifier import (AuxiliaryTargets, ClassifierSchedule, evaluate_classifier, lr_setting_of,
                                             objective_terms, train_classifier, weighted_terms)
from sae_ception.utils.batching import num_batches
from sae_ception.utils.io import checkpoint_exists, read_json, write_json
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)


@dataclass
class CandidateStart:
    """Where every candidate of one cycle starts: the same weights (a fresh copy per candidate), schedule and data
    order, so candidates differ by lambda only."""

    init: str  # cycle.init
    schedule: ClassifierSchedule

    def begin(self, ctx: RunContext, cycle: int) -> tuple[Classifier, torch.Generator]:
        """The starting model and the data-order generator. `scratch` repeats the baseline's seeding exactly (seed,
        then build the model), so lambda = 0 retrains the baseline step for step."""
        if self.init == "scratch":
            generator = seed_everything(ctx.seed_for(0, "baseline"))
            return new_model(ctx), generator
        model = model_for_cycle(ctx, cycle)
        return model, seed_everything(ctx.seed_for(cycle, "auxiliary"))


def candidate_start(ctx: RunContext) -> CandidateStart:
    """`scratch`: the baseline's schedule (model.epochs, model.lr, model.keep_best), as the paper's code retrains;
    `continue`: cycle.epochs, cycle.lr (or model.lr) and cycle.keep_best. (The config refuses `scratch` with an
    imported `inputs.model`, whose seed and schedule are not this run's.)"""
    cfg = ctx.cfg
    if cfg.cycle.init == "scratch":
        schedule = ClassifierSchedule.from_model_config(cfg.model, cfg.model.epochs, cfg.model.lr, cfg.model.keep_best)
        log.info("cycle.init=scratch: every candidate is a fresh model from the baseline's seed, trained with the "
                 "baseline's schedule (model.epochs=%d, model.lr=%g, model.keep_best=%s); cycle.epochs, cycle.lr and "
                 "cycle.keep_best apply to cycle.init=continue only", cfg.model.epochs, cfg.model.lr, cfg.model.keep_best)
    else:
        schedule = ClassifierSchedule.from_model_config(cfg.model, cfg.cycle.epochs, cfg.cycle.lr or cfg.model.lr,
                                                        cfg.cycle.keep_best)
    return CandidateStart(cfg.cycle.init, schedule)


def select_by_validation(candidates: list[dict]) -> int:
    """Index of the candidate with the highest validation accuracy (ties: the earlier one). Reads `val` only: a
    candidate's `test` figures are reported, never used to choose."""
    best = 0
    for index, candidate in enumerate(candidates):
        if candidate["val"]["accuracy"] > candidates[best]["val"]["accuracy"]:
            best = index
    return best


def training_center(acts_ND: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Mean activation [D] of model N over the training examples (float64 sums in chunks: bounded memory)."""
    total_D = torch.zeros(acts_ND.shape[1], dtype=torch.float64)
    for start in range(0, len(acts_ND), chunk):
        total_D += acts_ND[start:start + chunk].double().sum(0)
    return (total_D / max(len(acts_ND), 1)).float()


def run_auxiliary(ctx: RunContext, cycle: int) -> Path:
    cfg, target = ctx.cfg, ctx.layout.model(cycle + 1)
    if checkpoint_exists(target):
        log.info("cycle %d: found %s, skipping auxiliary training (resume)", cycle, target)
        return target
    sae = sae_for_cycle(ctx, cycle)
    require_model(ctx, cycle)  # model N must exist (and fit) under either init
    train_acts = activations_for_cycle(ctx, cycle)["train"]
    generator = seed_everything(ctx.seed_for(cycle, "sharpen"))
    sharpener = build_sharpener(cfg.sharpening)
    if not sharpener.uses_top_k and cfg.sharpening.top_k is not None:
        log.warning("cycle %d: sharpening.top_k=%d is not used by sharpening.type=%s (it keeps no latents)", cycle,
                    cfg.sharpening.top_k, cfg.sharpening.type)
    if len(cfg.cycle.aux_loss_weights) > 1 and len(ctx.splits.val.y) == 0:
        raise ArtifactError(f"cycle.aux_loss_weight={cfg.cycle.aux_loss_weight} is chosen on validation accuracy, but "
                            "the validation split is empty; give the dataset validation examples or one weight")
    targets_ND = sharpener.make_targets(sae, train_acts.acts_ND, train_acts.labels_N, generator)
    if not bool(torch.isfinite(targets_ND).all()):
        raise diverged(cfg.sae, f"SAE training of cycle {cycle}",
                       f"(its sharpened targets for auxiliary training hold NaN or inf; {ctx.layout.sae(cycle)})")
    center_D = training_center(train_acts.acts_ND)

    start = candidate_start(ctx)
    weights = cfg.cycle.aux_loss_weights
    log.info("cycle %d: auxiliary training (%s sharpening, %s loss, init=%s) for %d epochs, lambda %s", cycle,
             sharpener.describe(), cfg.cycle.aux_loss, cfg.cycle.init, start.schedule.epochs,
             ", ".join(f"{w:g}" for w in weights))
    candidates, best_model = [], None  # only the best candidate so far stays in memory (models may be large)
    start_losses: dict[str, float] = {}  # every candidate starts from the same model: its losses are measured once
    for index, weight in enumerate(weights):
        aux = AuxiliaryTargets(targets_ND, weight, cfg.cycle.aux_loss, center_D)
        record, model = _train_candidate(ctx, cycle, index, aux, start, keep=len(weights) > 1,
                                         start_losses=start_losses)
        candidates.append(record)
        if select_by_validation(candidates) == index:
            best_model = model
    chosen = select_by_validation(candidates)
    if ctx.accelerator.is_main_process:
        # the search record first: model N+1's checkpoint marks the stage done, so it is written last
        write_json(ctx.layout.auxiliary_record(cycle), _search_record(ctx, cycle, candidates, chosen))
        model = best_model
        if model is None:  # a candidate finished before a resume: read back from its folder
            model = new_model(ctx, pretrained_weights=False)
            load_model(ctx.layout.aux_candidate(cycle, chosen), model, setting=f"candidate {chosen} of cycle {cycle}")
        save_model(model, target, extra={"stage": "auxiliary", "from_cycle": cycle, **candidates[chosen]})
        shutil.rmtree(ctx.layout.aux_candidate(cycle, 0).parent, ignore_errors=True)
    ctx.accelerator.wait_for_everyone()
    log.info("cycle %d: model %d val accuracy %.4f, saved %s", cycle, cycle + 1, candidates[chosen]["val"]["accuracy"],
             target)
    if len(weights) > 1:
        log.info("cycle %d: chose lambda %g by validation accuracy (%.4f; candidates: %s); model %d saved %s", cycle,
                 weights[chosen], candidates[chosen]["val"]["accuracy"],
                 ", ".join(f"{c['weight']:g}: {c['val']['accuracy']:.4f}" for c in candidates), cycle + 1, target)
    return target


def _train_candidate(ctx: RunContext, cycle: int, index: int, aux: AuxiliaryTargets, start: CandidateStart,
                     keep: bool, start_losses: dict[str, float]) -> tuple[dict, Optional[Classifier]]:
    """Train one candidate; returns its record and, when `keep`, after saving it as a candidate (a search of several
    lambdas resumes from those), its model. A candidate a resumed search already finished is read back: (record,
    None), its weights stay in its folder."""
    cfg = ctx.cfg
    folder = ctx.layout.aux_candidate(cycle, index)
    record_path = folder.parent / f"{folder.name}.json"
    if keep and checkpoint_exists(folder):
        found = _read_candidate(record_path, aux.weight)
        if found is not None:
            log.info("cycle %d: found candidate lambda %g (%s), skipping it (resume)", cycle, aux.weight, folder)
            return found, None

    model, generator = start.begin(ctx, cycle)
    if not start_losses:  # the first candidate trained in this invocation measures the shared start
        start_losses.update(objective_terms(model, ctx.splits.train, aux, ctx.accelerator, cfg.eval_batch_size))
    before = weighted_terms(start_losses["task_loss"], start_losses["aux_loss"], aux.weight)
    steps_per_run = start.schedule.epochs * num_batches(len(ctx.splits.train.y), start.schedule.batch_size)
    model, info = train_classifier(
        model, ctx.splits.train, ctx.splits.val, start.schedule,
        accelerator=ctx.accelerator, generator=generator, stage="auxiliary",
        aux=aux, trainable=tuple(cfg.cycle.trainable),
        log_fn=ctx.log_fn("auxiliary", step_offset=(cycle * len(cfg.cycle.aux_loss_weights) + index) * steps_per_run),
        show_progress=cfg.progress, eval_batch_size=cfg.eval_batch_size,
        what=f"auxiliary training of cycle {cycle}" + (f" (lambda {aux.weight:g})" if keep else ""), lr_setting=lr_setting_of(cfg, cycle + 1)[0],
    )
    after = objective_terms(model, ctx.splits.train, aux, ctx.accelerator, cfg.eval_batch_size)
    val = evaluate_classifier(model, ctx.splits.val, ctx.accelerator, cfg.eval_batch_size)
    test = evaluate_classifier(model, ctx.splits.test, ctx.accelerator, cfg.eval_batch_size)  # reported, never chosen on
    record = {
        "weight": aux.weight, "val": val, "test": test,
        "objective_start": before, "objective_end": after,
        "kept_epoch": info["kept_epoch"], "gradient_steps": info["steps"], "examples_seen": info["examples_seen"],
    }
    log.info("cycle %d: lambda %g: %s loss %.4g -> %.4g, lambda*aux/task %.3g -> %.3g; val acc %.4f, test acc %.4f",
             cycle, aux.weight, aux.loss, before["aux_loss"], after["aux_loss"], before["aux_to_task_ratio"],
             after["aux_to_task_ratio"], val["accuracy"], test["accuracy"])
    if ctx.tracker is not None:
        ctx.tracker.log_step("auxiliary_objective", {
            "cycle": cycle, "weight": aux.weight, "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            **{f"start_{k}": v for k, v in before.items()}, **{f"end_{k}": v for k, v in after.items()}},
            (cycle * len(cfg.cycle.aux_loss_weights) + index + 1) * steps_per_run)
    if keep and ctx.accelerator.is_main_process:
        write_json(record_path, record)  # before the checkpoint, which marks the candidate done
        save_model(model, folder, extra={"stage": "auxiliary", "from_cycle": cycle, **record})
    ctx.accelerator.wait_for_everyone()
    return record, model


def _read_candidate(path: Path, weight: float) -> Optional[dict]:
    """A finished candidate's record, or None (missing, damaged or for another lambda: train it again)."""
    try:
        record = read_json(path)
    except ArtifactError:
        return None
    return record if isinstance(record, dict) and record.get("weight") == weight else None


def _search_record(ctx: RunContext, cycle: int, candidates: list[dict], chosen: int) -> dict:
    cfg = ctx.cfg
    return {
        "cycle": cycle,
        "aux_loss": cfg.cycle.aux_loss,
        "init": cfg.cycle.init,
        "sharpening": cfg.sharpening.type,
        "selection": "validation accuracy (ties: earlier lambda); test figures reported, never used to choose",
        "chosen_index": chosen,
        "chosen_weight": candidates[chosen]["weight"],
        "candidates": candidates,
        "budget": {
            "candidates": len(candidates),
            "gradient_steps": sum(c["gradient_steps"] for c in candidates),
            "examples_seen": sum(c["examples_seen"] for c in candidates),
        },
    }


def auxiliary_metrics(record: dict) -> dict[str, float]:
    """The `auxiliary` metric family of cycle N+1's results: the chosen candidate's objective before and after its
    training, lambda, and the budget of the chosen model and of the whole search."""
    chosen = record["candidates"][record["chosen_index"]]
    out = {"weight": chosen["weight"]}
    for when in ("start", "end"):
        out |= {f"{key}_{when}": value for key, value in chosen[f"objective_{when}"].items()}
    return out | {
        "val_accuracy": chosen["val"]["accuracy"],
        "gradient_steps": chosen["gradient_steps"], "examples_seen": chosen["examples_seen"],
        "candidates": record["budget"]["candidates"],
        "search_gradient_steps": record["budget"]["gradient_steps"],
        "search_examples_seen": record["budget"]["examples_seen"],
    }
