"""What each script runs: its task and the checks that must pass before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from sae_ception.config import parse_config
from sae_ception.run import RunContext
from sae_ception.errors import ConfigError
from sae_ception.stages.artifacts import new_model, require_model, require_sae
from sae_ception.alignment.config import parse_align_config
from sae_ception.stages.align import align_preflight, run_alignment
from sae_ception.stages.auxiliary import run_auxiliary
from sae_ception.stages.baseline import run_baseline
from sae_ception.stages.cycle import analyze, reevaluate, run_cycles
from sae_ception.stages.objective import check_validation_split, run_objective
from sae_ception.stages.sae import run_sae
from sae_ception.stages.transfer import run_transfer, transfer_preflight
from sae_ception.transfer.config import parse_transfer_config
from sae_ception.training.classifier import trainable_names


@dataclass(frozen=True)
class Entrypoint:
    task: Callable[[RunContext], Any]
    preflight: Optional[Callable[[RunContext], None]] = None
    from_run_folder: bool = False  # read the settings from run_dir/config.yaml (scripts on finished runs)
    parse: Callable[[Any], Any] = parse_config  # the composed Hydra config -> the typed config of the script


def _current(ctx: RunContext) -> int:
    return ctx.cfg.cycle.current


def _check_trainable(ctx: RunContext) -> None:
    """A typo in cycle.trainable must stop the run now, not after the baseline and the first SAE.
    Only parameter names matter, so the model is built on the meta device (no memory, no weights read)."""
    if list(ctx.cfg.cycle.trainable) == ["all"]:
        return
    with torch.device("meta"):
        model = new_model(ctx, pretrained_weights=False)
    trainable_names(model, list(ctx.cfg.cycle.trainable))


def _cycle_preflight(ctx: RunContext) -> None:
    cycle = ctx.cfg.cycle
    if cycle.current > cycle.max_cycles:
        raise ConfigError(f"cycle.current={cycle.current} is past cycle.max_cycles={cycle.max_cycles}; train_cycle runs cycles current..max_cycles")
    if cycle.current > 0 or ctx.cfg.inputs.model:
        require_model(ctx, cycle.current)
    if ctx.cfg.inputs.sae:
        require_sae(ctx, cycle.current)
    _check_trainable(ctx)
    check_validation_split(ctx)


def _train_cycle(ctx: RunContext) -> Optional[float]:
    """scripts/train_cycle.py: every cycle, then the search objective (`objective`) of the last one on the
    validation split; returns it (NaN when undefined), or None when no objective is set."""
    run_cycles(ctx)
    return run_objective(ctx)


def _no_objective(script: str, preflight: Callable[[RunContext], None]) -> Callable[[RunContext], None]:
    """The preflight of a script that measures no objective: `objective` set (on the command line or by an
    experiment such as optuna_search) is refused in one line before anything else is checked, instead of being
    silently ignored; then `preflight`. Scripts that take the run's settings from its folder (evaluate.py) do not
    get this: an objective saved in the run's config.yaml is the run's record, and one on their command line is
    refused by cli.config_from_run_folder."""

    def check(ctx: RunContext) -> None:
        if ctx.cfg.objective is not None:
            raise ConfigError(f"objective={ctx.cfg.objective}: the objective is measured by scripts/train_cycle.py (on "
                              f"the validation split, after its last cycle), not by scripts/{script}.py; drop it here "
                              "(and experiment=optuna_search, which sets it), or run scripts/train_cycle.py")
        preflight(ctx)

    return check


def _baseline_preflight(ctx: RunContext) -> None:
    if ctx.cfg.inputs.model:
        require_model(ctx, 0)


def _evaluate_preflight(ctx: RunContext) -> None:
    if ctx.cfg.eval_cycle is not None:
        require_model(ctx, ctx.cfg.eval_cycle, setting="eval_cycle")
        require_sae(ctx, ctx.cfg.eval_cycle, setting="eval_cycle")


def _auxiliary_preflight(ctx: RunContext) -> None:
    require_model(ctx, _current(ctx))
    require_sae(ctx, _current(ctx))
    _check_trainable(ctx)


ENTRYPOINTS = {
    "train_cycle": Entrypoint(_train_cycle, _cycle_preflight),
    "train_baseline": Entrypoint(run_baseline, _no_objective("train_baseline", _baseline_preflight)),
    "train_sae": Entrypoint(lambda ctx: run_sae(ctx, _current(ctx)),
                            _no_objective("train_sae", lambda ctx: require_model(ctx, _current(ctx)))),
    "train_auxiliary": Entrypoint(lambda ctx: run_auxiliary(ctx, _current(ctx)),
                                  _no_objective("train_auxiliary", _auxiliary_preflight)),
    "evaluate": Entrypoint(reevaluate, _evaluate_preflight, from_run_folder=True),
    "analyze_features": Entrypoint(analyze, _evaluate_preflight, from_run_folder=True),
    "transfer_concept": Entrypoint(run_transfer, transfer_preflight, parse=parse_transfer_config),
    "align_features": Entrypoint(run_alignment, align_preflight, parse=parse_align_config),
}
