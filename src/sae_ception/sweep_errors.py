"""Errors of Hydra's launcher and sweeper plugins as the product's one line (exit status 2), not a traceback.

They are raised in the sweep's own process, outside any job, so `cli.one_line_hydra_errors` (Hydra's composition
errors) and `cli.run_task` (a job's errors) never see them:
- hydra/launcher=slurm (submitit) on a machine without SLURM: `RuntimeError: Could not detect "srun"`;
- an Optuna search whose every trial failed (each objective undefined): `ValueError: No trials are completed yet.`
  from Optuna's `study.best_trial`.
A sweep folder claimed for a sweep that never started a job is removed again, as for Hydra's own errors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, Optional

from sae_ception.cli import LOG_FORMAT
from sae_ception.run_folder import ClaimSweepFolder

NO_SLURM = 'Could not detect "srun"'  # submitit's SlurmExecutor, when srun is not on PATH
NO_COMPLETED_TRIAL = "No trials are completed yet."  # Optuna's Study.best_trial with no COMPLETE trial


def plugin_error_line(ex: BaseException) -> Optional[str]:
    """The one line for a launcher's or sweeper's error this module knows, else None."""
    if isinstance(ex, RuntimeError) and str(ex).startswith(NO_SLURM):
        return ("hydra/launcher=slurm (or submitit_slurm) submits through SLURM, but this machine has no srun; "
                "run the sweep on the cluster's login node, or here with hydra/launcher=joblib or submitit_local")
    if isinstance(ex, ValueError) and str(ex) == NO_COMPLETED_TRIAL:
        return ("no trial of the Optuna search completed: every job's objective was undefined (each job's "
                "results/objective.json and train_cycle.log say why); nothing to report as best")
    return None


@contextlib.contextmanager
def one_line_plugin_errors() -> Iterator[None]:
    """Around a `@hydra.main` function: `plugin_error_line`'s errors become one line on stdout in the product's
    log format and exit status 2; anything else propagates unchanged."""
    try:
        yield
    except (RuntimeError, ValueError) as ex:
        line = plugin_error_line(ex)
        if line is None:
            raise
        ClaimSweepFolder.release_unused()
        record = logging.getLogger("sae_ception").makeRecord("sae_ception", logging.ERROR, __file__, 0, "error: %s",
                                                             (line,), None)
        sys.stdout.write(logging.Formatter(LOG_FORMAT).format(record) + "\n")
        sys.stdout.flush()
        sys.exit(2)
