"""Errors of Hydra's launcher and sweeper plugins as the product's one line (exit status 2), not a traceback.

They are raised in the sweep's own process, outside any job, so `cli.one_line_hydra_errors` (Hydra's composition
errors) and `cli.run_task` (a job's errors) never see them, or see them without saying what to do:
- hydra/launcher=slurm (submitit) on a machine without SLURM: `RuntimeError: Could not detect "srun"`;
- an Optuna search whose every trial failed (each objective undefined): `ValueError: No trials are completed yet.`
  from Optuna's `study.best_trial`;
- Optuna sweeper settings the sweep would fail on (`objective_metrics.check_sweeper`: a direction in another case
  or misspelt, which Optuna refuses with a traceback, several directions, n_trials=0, which would end in the
  "no trial completed" error above): checked when the sweeper is built, before the study is created or any job
  runs. The sweep's process has no other hook before its sweeper starts: Hydra turns a callback's error into a
  warning, so the check wraps the plugin's constructor, only while `one_line_plugin_errors` is active;
- an override of an entry of `hydra.sweeper.params` (`hydra.sweeper.params.sae.l1_coefficient=...`), which Hydra
  cannot apply (it reads the dots of the entry's name as nesting, and refuses a range for its own settings): the
  line says to give the range as the setting itself (`'sae.l1_coefficient=tag(log, interval(1e-3, 1e-1))'`), which
  replaces that entry; a misspelt setting there is then refused by name when the first job is composed.
A sweep folder claimed for a sweep that never started a job is removed again, as for Hydra's own errors.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import traceback
from pathlib import Path
from typing import Iterator, Optional

from sae_ception.cli import exit_with_error_line, override_key
from sae_ception.errors import ConfigError
from sae_ception.evaluation.objective_metrics import OPTUNA_SWEEPER, check_sweeper

NO_SLURM = 'Could not detect "srun"'  # submitit's SlurmExecutor, when srun is not on PATH
NO_COMPLETED_TRIAL = "No trials are completed yet."  # Optuna's Study.best_trial with no COMPLETE trial
SEARCH_SPACE = "hydra.sweeper.params."


def _search_space_override(ex: BaseException) -> Optional[str]:
    """The command-line override of an entry of hydra.sweeper.params that a composition error is about: Hydra's
    own error naming it, or OmegaConf's AssertionError when the sweeper has no params to nest it in."""
    from hydra.errors import ConfigCompositionException

    given = [arg for arg in sys.argv[1:] if "=" in arg and override_key(arg).startswith(SEARCH_SPACE)]
    if not given:
        return None
    if isinstance(ex, ConfigCompositionException):
        about = f"{ex} {getattr(ex.__cause__, 'full_key', '')}"
        return next((arg for arg in given if SEARCH_SPACE.rstrip(".") in about), None)
    frames = traceback.extract_tb(ex.__traceback__)
    if isinstance(ex, AssertionError) and frames and "omegaconf" in Path(frames[-1].filename).parts:
        return given[0]
    return None


def plugin_error_line(ex: BaseException) -> Optional[str]:
    """The one line for a launcher's or sweeper's error this module knows, else None."""
    cause: Optional[BaseException] = ex
    while cause is not None:  # a check in the sweeper's constructor reaches here inside InstantiationException
        if isinstance(cause, ConfigError):
            return str(cause)
        cause = cause.__cause__
    if isinstance(ex, RuntimeError) and str(ex).startswith(NO_SLURM):
        return ("hydra/launcher=slurm (or submitit_slurm) submits through SLURM, but this machine has no srun; "
                "run the sweep on the cluster's login node, or here with hydra/launcher=joblib or submitit_local")
    if isinstance(ex, ValueError) and str(ex) == NO_COMPLETED_TRIAL:
        return ("no trial of the Optuna search completed: every job's objective was undefined (each job's "
                "results/objective.json and train_cycle.log say why); nothing to report as best")
    override = _search_space_override(ex)
    if override is not None:
        key, value = override.split("=", 1)
        name = override_key(key)[len(SEARCH_SPACE):]
        value = value.strip("'\"")
        return (f"{override}: an entry of hydra.sweeper.params cannot be given on the command line (Hydra reads the "
                f"dots of its name as nesting, and a range there as a sweep of its own settings); give the range as "
                f"the setting itself, '{name}={value}', which replaces that entry of the search space")
    return None


@contextlib.contextmanager
def _optuna_settings_checked() -> Iterator[None]:
    """While active, the Optuna sweeper refuses its invalid settings (`check_sweeper`) when it is built, in the
    sweep's own process: before the study is created and before any job is launched."""
    from hydra.core.plugins import Plugins

    # Hydra builds plugins from the classes its own scan of hydra_plugins loaded (not those an import gives)
    OptunaSweeper = Plugins.instance().class_name_to_class.get(OPTUNA_SWEEPER)
    if OptunaSweeper is None:  # the `sweeps` extra is not installed: hydra/sweeper=optuna is not an option then
        yield
        return
    original = OptunaSweeper.__init__

    @functools.wraps(original)
    def checked(self, *args, **kwargs) -> None:
        settings = inspect.signature(original).bind(self, *args, **kwargs).arguments
        check_sweeper(settings)
        original(self, *args, **kwargs)

    OptunaSweeper.__init__ = checked
    try:
        yield
    finally:
        OptunaSweeper.__init__ = original


@contextlib.contextmanager
def one_line_plugin_errors() -> Iterator[None]:
    """Around a `@hydra.main` function: `plugin_error_line`'s errors become one line on stdout in the product's
    log format and exit status 2; anything else propagates unchanged."""
    try:
        with _optuna_settings_checked():
            yield
    except Exception as ex:  # noqa: BLE001 - only the errors plugin_error_line knows are turned into one line
        line = plugin_error_line(ex)
        if line is None:
            raise
        exit_with_error_line(line)
