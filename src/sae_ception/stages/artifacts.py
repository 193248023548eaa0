"""Finding a stage's input artifacts: in this run folder, or imported once from an explicit `inputs.*` path
(`inputs.sae` may also be a SAELens folder: sae/saelens_format.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from sae_ception.errors import ArtifactError
from sae_ception.models import Classifier, build_model, load_model, save_model
from sae_ception.run import RunContext
from sae_ception.sae import load_sae
from sae_ception.sae.saelens_format import EXPECTED_FILES, load_any_sae, sae_folder_format, saelens_description
from sae_ception.utils.io import checkpoint_exists, load_checkpoint

log = logging.getLogger(__name__)


def new_model(ctx: RunContext, pretrained_weights: bool = True) -> Classifier:
    """Model of the configured architecture; without pretrained weights when a checkpoint is loaded next."""
    splits = ctx.splits
    return build_model(ctx.cfg.model, input_dim=splits.input_dim, num_classes=splits.num_classes,
                       pretrained_weights=pretrained_weights)


def _same_state(state_a: dict, state_b: dict) -> bool:
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def _same_weights(a: Path, b: Path) -> bool:
    return _same_state(load_checkpoint(a)[0], load_checkpoint(b)[0])


def _explicit(ctx: RunContext, value: Optional[str], cycle: int) -> Optional[Path]:
    """An `inputs.*` path applies to the cycle the script works on (`cycle.current`) only."""
    return Path(value) if value and cycle == ctx.cfg.cycle.current else None


def _check_source(source: Path, target: Path, setting: str, same: Callable[[Path, Path], bool] = _same_weights,
                  expected: str = "a checkpoint folder (weights.safetensors + config.json)") -> None:
    if not source.exists():
        raise ArtifactError(f"{setting}={source} does not exist; give {expected}")
    if checkpoint_exists(target) and not same(source, target):
        raise ArtifactError(f"{setting}={source} differs from {target} already in this run; drop {setting} or use a new run_dir")


def require_model(ctx: RunContext, cycle: int, setting: str = "cycle.current") -> None:
    """Fail before any work unless model N is in the run folder or given as a fitting `inputs.model`."""
    explicit = _explicit(ctx, ctx.cfg.inputs.model, cycle)
    if explicit:
        _check_source(explicit, ctx.layout.model(cycle), "inputs.model")
        load_model(explicit, new_model(ctx, pretrained_weights=False), setting="inputs.model")
    elif not checkpoint_exists(ctx.layout.model(cycle)):
        have = ctx.layout.model_cycles()
        raise ArtifactError(
            f"{setting}={cycle}: no model for cycle {cycle} in {ctx.layout.root} (cycles with a model: {have or 'none'}); "
            "set run_dir to the run that holds it, or give inputs.model=PATH"
        )


def require_sae(ctx: RunContext, cycle: int, setting: str = "cycle.current") -> None:
    """Fail before any work unless SAE N is in the run folder or given as a fitting `inputs.sae`."""
    explicit = _explicit(ctx, ctx.cfg.inputs.sae, cycle)
    if explicit:
        if not explicit.exists():
            raise ArtifactError(f"inputs.sae={explicit} does not exist; give a folder holding {EXPECTED_FILES}")
        sae = _explicit_sae(explicit)  # every check of the folder (config, weights, finite folded weights) runs here
        _check_source(explicit, ctx.layout.sae(cycle), "inputs.sae", same=lambda source, target: _same_state(
            sae.state_dict(), load_checkpoint(target)[0]), expected=f"a folder holding {EXPECTED_FILES}")
        _check_sae_fits(ctx, sae, f"inputs.sae={explicit}")
    elif not checkpoint_exists(ctx.layout.sae(cycle)):
        raise ArtifactError(
            f"{setting}={cycle}: no SAE for cycle {cycle} in {ctx.layout.root}; run scripts/train_sae.py first, or give inputs.sae=PATH"
        )


def _explicit_sae(path: Path):
    """The SAE of an `inputs.sae` folder (this product's checkpoint or a SAELens folder); a folder that is
    neither, damaged (a malformed cfg.json, a truncated weights file) or whose weights are not finite once
    read is one ArtifactError naming the setting, raised by the preflight before the run folder gets a file."""
    try:
        return load_any_sae(path)
    except ArtifactError as ex:
        raise ArtifactError(f"inputs.sae: {ex}") from None


def _check_sae_fits(ctx: RunContext, sae, where: str) -> None:
    width = ctx.cfg.model.target_width()
    if not type(sae).linear_decoder:  # e.g. a concept-transfer run's concept autoencoder
        raise ArtifactError(f"{where} is a {sae.registry_name!r} SAE, which has no linear decoder (no decoder "
                            "directions for sharpening and feature reports); train_cycle.py needs a relu, topk, "
                            "batchtopk, jumprelu or paper_relu SAE")
    if sae.d_in != width:
        raise ArtifactError(f"{where} reads {sae.d_in}-dim activations but the model's target layer has {width}")
    if sae.registry_name != ctx.cfg.sae.type:
        raise ArtifactError(f"{where} is a {sae.registry_name!r} SAE but sae.type={ctx.cfg.sae.type!r}; set sae={sae.registry_name}")


def _import_once(ctx: RunContext, target: Path, save: Callable[[], None], what: str) -> None:
    """Copy an explicit input into the run folder (main process only; every process waits for it)."""
    if ctx.accelerator.is_main_process and not checkpoint_exists(target):
        save()
        log.info("imported %s into this run as %s", what, target)
    ctx.accelerator.wait_for_everyone()


def import_model(ctx: RunContext, cycle: int) -> None:
    """Make sure model N is in the run folder, importing `inputs.model` as model N when given for the current
    cycle. Every process must call it (it waits for the main process's copy): never from main-only code."""
    require_model(ctx, cycle)
    target, explicit = ctx.layout.model(cycle), _explicit(ctx, ctx.cfg.inputs.model, cycle)
    if explicit:
        def save() -> None:
            model = new_model(ctx, pretrained_weights=False)
            load_model(explicit, model, setting="inputs.model")
            save_model(model, target, extra={"imported_from": str(explicit.resolve())})

        _import_once(ctx, target, save, f"inputs.model={explicit}")


def load_cycle_model(ctx: RunContext, cycle: int) -> Classifier:
    """Model N from the run folder (after `import_model`); no collective, so main-only code may call it."""
    model = new_model(ctx, pretrained_weights=False)
    load_model(ctx.layout.model(cycle), model, setting=f"checkpoint of cycle {cycle}")
    return model


def model_for_cycle(ctx: RunContext, cycle: int) -> Classifier:
    """Model N of this run (importing `inputs.model` as model N when given for the current cycle). Every process
    must call it (see `import_model`)."""
    import_model(ctx, cycle)
    return load_cycle_model(ctx, cycle)


def imported_from(folder: Path) -> Optional[str]:
    """Where a checkpoint of this run was imported from (`inputs.model` / `inputs.sae`), None if made here."""
    try:
        return load_checkpoint(folder)[1].get("extra", {}).get("imported_from")
    except ArtifactError:
        return None


def sae_for_cycle(ctx: RunContext, cycle: int):
    """SAE N of this run (importing `inputs.sae` as SAE N when given for the current cycle)."""
    require_sae(ctx, cycle)
    target, explicit = ctx.layout.sae(cycle), _explicit(ctx, ctx.cfg.inputs.sae, cycle)
    if explicit:
        extra, what = {"imported_from": str(explicit.resolve())}, f"inputs.sae={explicit}"
        if sae_folder_format(explicit) == "saelens":
            extra["format"], what = "saelens", f"{what} ({saelens_description(explicit)})"
        _import_once(ctx, target, lambda: load_any_sae(explicit).save(target, extra=extra), what)
    sae = load_sae(target)
    _check_sae_fits(ctx, sae, str(target))
    return sae
