"""The concept-transfer run: train models A and B once (artifacts of the run), apply every configured method to a
copy of A, measure each edited model on held-out test images, and report one table, a JSON and a figure.

Resumable: A and B are checkpoints, each method's result is written when it finishes (with its settings; a
rerun skips it unless its settings changed), and the summary is rewritten from the method results."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.models import Classifier, load_model, save_model
from sae_ception.run import RunContext
from sae_ception.transfer.base import TRANSFER_METHODS, TransferMethod
from sae_ception.transfer.concepts import check_saved_saes, concept_saes
from sae_ception.transfer.config import TransferConfig
from sae_ception.transfer.context import TransferContext
from sae_ception.transfer.data import TransferData
from sae_ception.transfer.measures import (ADDED_LATER, BUDGET_ITEMS, MEASURES, accuracy_on, parameters_changed,
                                           transfer_measures)
from sae_ception.transfer.report import format_transfer_table
from sae_ception.transfer.training import new_classifier, train_on_classes
from sae_ception.utils.digest import state_digest
from sae_ception.utils.io import checkpoint_exists, read_json, write_json
from sae_ception.utils.seeding import seed_everything, stage_seed

log = logging.getLogger(__name__)


def _data(ctx: RunContext) -> TransferData:
    return TransferData(ctx.splits, ctx.cfg.concept)


def _methods(cfg: TransferConfig) -> list[TransferMethod]:
    return [TRANSFER_METHODS.get(settings.type)(name, settings) for name, settings in cfg.methods()]


def _uses_saes(cfg: TransferConfig) -> bool:
    return any(method.uses_concept_saes for method in _methods(cfg))


def transfer_preflight(ctx: RunContext) -> None:
    """Everything the data must offer, checked before A or B is trained: training images of every class either
    model learns, test images of A's classes, the target and the distractor; then each method's own checks."""
    if ctx.accelerator.num_processes > 1:
        raise ConfigError(f"scripts/transfer_concept.py runs in one process ({ctx.accelerator.num_processes} were "
                          "launched): its models are small; run it with python, not accelerate launch or torchrun")
    cfg, data = ctx.cfg, _data(ctx)
    concept = cfg.concept
    for setting, classes in (("concept.classes_a", concept.classes_a), ("concept.classes_b", concept.classes_b)):
        empty = [c for c in classes if data.count("train", c) == 0]
        if empty:
            raise ConfigError(f"{setting}: dataset {cfg.dataset.name} has no training image of class "
                              f"{', '.join(map(str, empty))}; choose classes the data has")
    needed = {*concept.classes_a, concept.target, concept.distractor}
    missing = sorted(c for c in needed if data.count("test", c) == 0)
    if missing:
        raise ConfigError(f"concept: the test split of dataset {cfg.dataset.name} has no image of class "
                          f"{', '.join(map(str, missing))}, which the measures need; use more data "
                          "(dataset.max_train_examples, dataset.test_fraction)")
    for method in _methods(cfg):
        method.preflight(data)
    if _uses_saes(cfg):  # B's SAE trains on the run's k target images
        data.require_target_images("concept.target_images", concept.target_images, " (the images B's SAE trains on)")
        check_saved_saes(ctx)
    check_saved_results(ctx)
    for which in ("a", "b"):  # a model this folder already holds must fit its settings (resume)
        path = ctx.layout.source_model(which)
        if checkpoint_exists(path):
            _load(ctx, cfg.model_a if which == "a" else cfg.model_b, path, f"model_{which}")


# --- models A and B -------------------------------------------------------------------------------------------
def _load(ctx: RunContext, model_cfg, path: Path, setting: str) -> Classifier:
    model = new_classifier(ctx, model_cfg)
    load_model(path, model, setting)
    return model


def source_model(ctx: RunContext, which: str) -> Classifier:
    """Model A or B: trained on its classes (validation images of the same classes choose the kept epoch), or
    read back from the run folder. Frozen (eval mode, no gradients), on the CPU."""
    cfg = ctx.cfg
    model_cfg = cfg.model_a if which == "a" else cfg.model_b
    classes = cfg.concept.classes_a if which == "a" else cfg.concept.classes_b
    path = ctx.layout.source_model(which)
    if checkpoint_exists(path):
        log.info("model %s: found %s, skipping (resume)", which.upper(), path)
        model = _load(ctx, model_cfg, path, f"model_{which}")
    else:
        data = _data(ctx)
        model, info = train_on_classes(ctx, model_cfg, data.subset("train", classes), data.subset("val", classes),
                                       ctx.seed_for(0, f"model_{which}"), stage=f"model_{which}",
                                       setting=f"model_{which}")
        save_model(model, path, extra={"stage": f"model_{which}", "classes": list(classes), "val": info["val"],
                                       "steps": info["steps"], "kept_epoch": info["kept_epoch"]})
        log.info("model %s: val accuracy %.4f on classes %s, saved %s", which.upper(),
                 info["val"].get("accuracy", float("nan")), list(classes), path)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


# --- measuring ------------------------------------------------------------------------------------------------
SPLITS = ("test", "val")  # the measures ("measures": test images) and their validation twin ("validation")


def predictions(ctx: RunContext, model: Classifier, split: str = "test") -> torch.Tensor:
    """Predicted class (argmax over every output) of every image of `split` (N,)."""
    logits = model.logits_of(getattr(ctx.splits, split).x, ctx.cfg.eval_batch_size, ctx.accelerator.device)
    return logits.argmax(1)


def measure(ctx: RunContext, model: Classifier, split: str = "test") -> dict:
    """transfer / preservation / specificity / confusion of `model` on `split` (transfer/measures.py)."""
    concept = ctx.cfg.concept
    return transfer_measures(predictions(ctx, model, split), getattr(ctx.splits, split).y, list(concept.classes_a),
                             concept.target, concept.distractor, concept.shown_classes)


def measure_both(ctx: RunContext, model: Classifier, base: dict | None = None) -> tuple[dict, dict]:
    """(test measures, validation measures); with `base` (A's, same layout), each gets preservation_change.
    The validation measures are what a choice between settings (e.g. procrustes_probe's alpha) may look at;
    the test measures are reported. Validation measures are {} when the run has no validation split."""
    both = []
    for split in SPLITS:
        reference = (base or {}).get(split)
        measured = measure(ctx, model, split) if len(getattr(ctx.splits, split).y) else {}
        if measured and reference:
            measured["preservation_change"] = measured["preservation"] - reference["preservation"]
        both.append(measured)
    return both[0], both[1]


def source_measures(ctx: RunContext, model: Classifier, classes: list[int]) -> dict:
    """A or B measured like an edited model, on the test and validation splits, plus its accuracy on its own
    classes (`own_accuracy`): {"test": {...}, "val": {...}}."""
    out = {}
    for split in SPLITS:
        data = getattr(ctx.splits, split)
        if not len(data.y):
            out[split] = {}
            continue
        out[split] = measure(ctx, model, split)
        out[split]["own_accuracy"] = accuracy_on(predictions(ctx, model, split), data.y, list(classes))
    return out


WEAK = 0.5  # a model below this on its own classes, or a B recognising less of its target, is flagged


def weak_models(concept, base: dict, source: dict) -> list[str]:
    """Warnings (test split) when A or B learned too little for a transfer to mean anything."""
    warnings = []
    for name, measured, classes in (("A", base["test"], concept.classes_a), ("B", source["test"], concept.classes_b)):
        if measured["own_accuracy"] < WEAK:
            warnings.append(f"model {name} reaches only {measured['own_accuracy']:.3f} accuracy on its classes "
                            f"{list(classes)}: train it longer or check model_{name.lower()}.* before reading the table")
    if source["test"]["transfer"] < WEAK:
        warnings.append(f"model B recognises only {source['test']['transfer']:.3f} of class {concept.target}'s test "
                        "images: it has little to transfer; train it longer (model_b.epochs) or check model_b.*")
    return warnings


def _digests(model_a: Classifier, model_b: Classifier, saes=None) -> dict:
    digests = {"a": state_digest(model_a), "b": state_digest(model_b)}
    if saes is not None:
        digests.update(sae_a=state_digest(saes.sae_a), sae_b=state_digest(saes.sae_b))
    return digests


def method_seed(ctx: RunContext) -> int:
    """The seed every method starts from (its generator, and torch's global state): the run's seed alone, so a
    method's result does not depend on which other methods run or in which order, and two methods that draw
    alike (finetune_head and finetune_replay) see the same batches."""
    return stage_seed(ctx.cfg.seed, 0, "transfer")


def sample_seed(ctx: RunContext) -> int:
    """The seed of the run's fixed order of each class's training images (TransferContext): every method that
    asks for k target images gets the same k."""
    return stage_seed(ctx.cfg.seed, 1, "transfer")


def method_digests(method: TransferMethod, digests: dict) -> dict:
    """The weights a method's result depends on: A's and B's, and the SAEs' for a method that reads them."""
    keys = ("a", "b", "sae_a", "sae_b") if method.uses_concept_saes else ("a", "b")
    return {key: digests[key] for key in keys}


def run_method(ctx: RunContext, method: TransferMethod, model_a: Classifier, model_b: Classifier,
               base: dict, digests: dict, saes=None) -> dict:
    """Apply one method to a copy of A, measure it and record its budget; A and B (and the SAEs) must come back
    unchanged (their weights' `digests`, {"a", "b"[, "sae_a", "sae_b"]}, are taken once per run)."""
    generator = seed_everything(method_seed(ctx))
    tctx = TransferContext(ctx, method.name, method.cfg, model_a, model_b, _data(ctx), generator, sample_seed(ctx),
                           saes=saes if method.uses_concept_saes else None)
    with ctx.timed(f"transfer/{method.name}", 0):
        edited = method.apply(tctx)
    if _digests(model_a, model_b, saes) != digests:
        raise RuntimeError(f"transfer method {method.name} changed model A or B (or an SAE) in place; it must edit "
                           "a copy")
    edited = edited.cpu().eval()
    budget = tctx.budget
    budget.parameters_changed, budget.parameters_added = parameters_changed(model_a, edited)
    measures, validation = measure_both(ctx, edited, base)
    if ctx.cfg.concept.save_edited:
        save_model(edited, ctx.layout.edited_model(method.name), extra={"stage": f"transfer/{method.name}"})
    elif ctx.layout.edited_model(method.name).exists():  # an earlier computation's, which no longer matches
        shutil.rmtree(ctx.layout.edited_model(method.name))
    return {"method": method.name, "type": method.cfg.type, "settings": asdict(method.cfg),
            "models": method_digests(method, digests), "measures": measures, "validation": validation,
            "budget": budget.as_dict(), "target_image_indices": tctx.target_indices, "diagnostics": tctx.diagnostics}


def _number(value, allow_bool: bool = False) -> bool:
    if isinstance(value, bool):
        return allow_bool
    return isinstance(value, (int, float)) and math.isfinite(value)


def _damage(saved) -> str | None:
    """What makes a method's saved result unusable (None: nothing)."""
    if not isinstance(saved, dict):
        return "not a JSON object"
    for key in ("settings", "measures", "budget"):
        if not isinstance(saved.get(key), dict):
            return f"no {key!r} object"
    for name in MEASURES:
        value = saved["measures"].get(name)
        if not (isinstance(value, list) if name == "confusion" else _number(value)):
            return f"measures.{name} is {json.dumps(value)}, not {'a matrix' if name == 'confusion' else 'a number'}"
    for name in BUDGET_ITEMS:
        if name in ADDED_LATER and name not in saved["budget"]:
            continue  # an earlier version's result: recomputed (_older_format)
        value = saved["budget"].get(name)
        if not _number(value, allow_bool=name == "target_labels"):
            return f"budget.{name} is {json.dumps(value)}, not a number"
    return None


def _older_format(saved: dict) -> str | None:
    """Why a sound result from an earlier version of this product lacks what a reuse checks (None: it does not)."""
    missing = [key for key in ("models", "validation", "diagnostics") if key not in saved]
    missing += [f"budget.{key}" for key in ADDED_LATER if key not in saved["budget"]]
    return f"it was written by an earlier version (no {', '.join(missing)})" if missing else None


def check_saved_results(ctx: RunContext) -> None:
    """Preflight: every listed method's saved result is readable and sound, before anything is written (a
    damaged one is one ArtifactError line naming it)."""
    for method in _methods(ctx.cfg):
        _read_saved(ctx, method)


def _read_saved(ctx: RunContext, method: TransferMethod) -> dict | None:
    path = ctx.layout.method_result(method.name)
    if not path.is_file():
        return None
    remedy = "delete it so the method runs again"
    saved = read_json(path, remedy)
    damage = _damage(saved)
    if damage is not None:
        raise ArtifactError(f"{path} is damaged ({damage}); {remedy}")
    return saved


def _saved_result(ctx: RunContext, method: TransferMethod, digests: dict) -> dict | None:
    """A method's result from an earlier invocation, when its settings and models A and B (their weights'
    digests) are today's, and its edited model is there if the run keeps them; None to (re)compute it (a result
    of an earlier version of the product too). A damaged file is one ArtifactError line."""
    saved = _read_saved(ctx, method)
    if saved is None:
        return None
    path = ctx.layout.method_result(method.name)
    why = _older_format(saved)
    if why is None and saved["settings"] != asdict(method.cfg):
        why = "its settings changed since it was written"
    if why is None and saved["models"] != method_digests(method, digests):
        why = "it was made with other weights of model A or B (or their SAEs)"
    if why is None and ctx.cfg.concept.save_edited and not checkpoint_exists(ctx.layout.edited_model(method.name)):
        why = f"{ctx.layout.edited_model(method.name)} is missing"
    if why is not None:
        log.info("transfer/%s: %s (%s); recomputing", method.name, why, path)
        return None
    log.info("transfer/%s: found %s, skipping (resume)", method.name, path)
    return saved


def run_transfer(ctx: RunContext) -> dict:
    """scripts/transfer_concept.py: A and B, every method, the table, results/transfer.json and the figure."""
    cfg = ctx.cfg
    with ctx.timed("model_a", 0):
        model_a = source_model(ctx, "a")
    with ctx.timed("model_b", 0):
        model_b = source_model(ctx, "b")
    base, source = source_measures(ctx, model_a, cfg.concept.classes_a), source_measures(ctx, model_b, cfg.concept.classes_b)
    warnings = weak_models(cfg.concept, base, source)
    for warning in warnings:
        log.warning("%s", warning)
    saes = None
    if _uses_saes(cfg):
        with ctx.timed("concept_saes", 0):
            saes = concept_saes(ctx, model_a, model_b, sample_seed(ctx))
        warnings += saes.warnings
    results, digests = {}, _digests(model_a, model_b, saes)
    for method in _methods(cfg):
        result = _saved_result(ctx, method, digests)
        if result is None:
            result = run_method(ctx, method, model_a, model_b, base, digests, saes)
            write_json(ctx.layout.method_result(method.name), result)
        results[method.name] = result
        log.info("transfer/%s: transfer %.4f, preservation %.4f, specificity %.4f", method.name,
                 result["measures"]["transfer"], result["measures"]["preservation"], result["measures"]["specificity"])
    summary = {
        "concept": asdict(cfg.concept),
        "models": {"a": {"classes": list(cfg.concept.classes_a), **base["test"], "validation": base["val"]},
                   "b": {"classes": list(cfg.concept.classes_b), **source["test"], "validation": source["val"]}},
        "methods": results,
        "warnings": warnings,
    }
    write_json(ctx.layout.transfer_results(), summary)
    write_json(ctx.layout.root / "results" / "timings.json", ctx.timings)  # seconds per stage, this invocation
    log.info("results (%s):\n%s", ctx.layout.transfer_results(), format_transfer_table(summary))
    figures = []
    if cfg.plots:
        from sae_ception.transfer.plots import plot_confusions

        figures.append(plot_confusions(summary, ctx.layout.plots() / "transfer_confusion.png"))
    if ctx.tracker is not None:
        ctx.tracker.log_transfer(summary, figures)
    return summary
