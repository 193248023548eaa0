"""Finding a stage's input artifacts: in this run folder, or imported once from an explicit `inputs.*` path."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sae_ception.errors import ArtifactError
from sae_ception.models import Classifier, build_model, load_model, save_model
from sae_ception.run import RunContext
from sae_ception.sae import load_sae
from sae_ception.utils.io import checkpoint_exists, load_checkpoint

log = logging.getLogger(__name__)


def new_model(ctx: RunContext) -> Classifier:
    splits = ctx.splits
    return build_model(ctx.cfg.model, input_dim=splits.train.x[0].numel(), num_classes=splits.num_classes)


def _same_weights(a: Path, b: Path) -> bool:
    state_a, _ = load_checkpoint(a)
    state_b, _ = load_checkpoint(b)
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def _needs_import(source: Path, target: Path, setting: str) -> bool:
    """True when `source` must be copied in; False when this run already holds the same weights."""
    if not source.exists():
        raise ArtifactError(f"{setting}={source} does not exist; give a checkpoint folder (weights.safetensors + config.json)")
    if checkpoint_exists(target):
        if not _same_weights(source, target):
            raise ArtifactError(f"{setting}={source} differs from {target} already in this run; drop {setting} or use a new run_dir")
        return False
    return True


def require_model(ctx: RunContext, cycle: int) -> None:
    """Fail before any work if model N is neither in the run folder nor given (and loadable) as inputs.model."""
    explicit = ctx.cfg.inputs.model if cycle == ctx.cfg.cycle.current else None
    if explicit:
        if not Path(explicit).exists():
            raise ArtifactError(f"inputs.model={explicit} does not exist; give a checkpoint folder (weights.safetensors + config.json)")
        load_model(explicit, new_model(ctx), setting="inputs.model")
    elif not checkpoint_exists(ctx.layout.model(cycle)):
        have = ctx.layout.model_cycles()
        raise ArtifactError(
            f"cycle.current={cycle}: no model for cycle {cycle} in {ctx.layout.root} (cycles with a model: {have or 'none'}); "
            "set run_dir to the run that holds it, or give inputs.model=PATH"
        )


def require_sae(ctx: RunContext, cycle: int) -> None:
    """Fail before any work if SAE N is neither in the run folder nor given as inputs.sae."""
    explicit = ctx.cfg.inputs.sae if cycle == ctx.cfg.cycle.current else None
    if explicit:
        if not Path(explicit).exists():
            raise ArtifactError(f"inputs.sae={explicit} does not exist; give an SAE checkpoint folder")
        _check_sae_width(ctx, load_sae(explicit), f"inputs.sae={explicit}")
    elif not checkpoint_exists(ctx.layout.sae(cycle)):
        raise ArtifactError(
            f"cycle.current={cycle}: no SAE for cycle {cycle} in {ctx.layout.root}; run scripts/train_sae.py first, or give inputs.sae=PATH"
        )


def _check_sae_width(ctx: RunContext, sae, where: str) -> None:
    width = ctx.cfg.model.target_width()
    if sae.d_in != width:
        raise ArtifactError(f"{where} reads {sae.d_in}-dim activations but the model's target layer has {width}")


def model_for_cycle(ctx: RunContext, cycle: int) -> Classifier:
    """Model N of this run (importing `inputs.model` as model N when given for the current cycle)."""
    require_model(ctx, cycle)
    target = ctx.layout.model(cycle)
    explicit = ctx.cfg.inputs.model if cycle == ctx.cfg.cycle.current else None
    if explicit and _needs_import(Path(explicit), target, "inputs.model"):
        model = new_model(ctx)
        load_model(explicit, model, setting="inputs.model")
        save_model(model, target, extra={"imported_from": str(Path(explicit).resolve())})
        log.info("imported model %s as model %d of this run", explicit, cycle)
    model = new_model(ctx)
    load_model(target, model, setting=f"checkpoint of cycle {cycle}")
    return model


def sae_for_cycle(ctx: RunContext, cycle: int):
    """SAE N of this run (importing `inputs.sae` as SAE N when given for the current cycle)."""
    require_sae(ctx, cycle)
    target = ctx.layout.sae(cycle)
    explicit = ctx.cfg.inputs.sae if cycle == ctx.cfg.cycle.current else None
    if explicit and _needs_import(Path(explicit), target, "inputs.sae"):
        load_sae(explicit).save(target, extra={"imported_from": str(Path(explicit).resolve())})
        log.info("imported SAE %s as SAE %d of this run", explicit, cycle)
    sae = load_sae(target)
    _check_sae_width(ctx, sae, str(target))
    return sae
