"""A search's objective: one metric of the last cycle, measured on the validation split, returned to Hydra.

`objective=family/name` (evaluation/objective_metrics.py lists the names) makes scripts/train_cycle.py, once
every cycle is done, evaluate model `cycle.max_cycles` with its SAE on the VALIDATION split, write
`results/objective.json` and return the value; Hydra's Optuna sweeper (`hydra/sweeper=optuna`) optimises what
each job returns. The results files report the test split; a test figure never selects hyperparameters.

- The value is null in objective.json, and NaN from `run_objective`, when the metric is undefined there (an SAE
  none of whose latents fires on the validation rows leaves its code-based metrics undefined, as the test results
  do). scripts/train_cycle.py hands Hydra None for it: the Optuna sweeper then marks the trial FAILED and the
  search goes on (a NaN would stop the whole search with a traceback in hydra-optuna-sweeper 1.3 / Optuna 2.10).
- A rerun of a finished job (a resumed sweep) reuses objective.json when it was measured for the same metric
  and cycle on the same checkpoint files (size and modification time); otherwise it is measured again.
- Before anything is trained, a validation split without examples is refused (`check_validation_split`), as
  are, with the settings (evaluation/objective_metrics.py), an unknown metric, an Optuna sweep without an
  objective and a sweep direction opposite to the metric's better way.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.evaluation.objective_metrics import objective_direction, objective_needs
from sae_ception.run import RunContext
from sae_ception.stages.evaluate import evaluate_split
from sae_ception.utils.io import WEIGHTS_FILE, read_json, write_json
from sae_ception.utils.seeding import seed_everything

log = logging.getLogger(__name__)

OBJECTIVE_SPLIT = "val"


def objective_path(ctx: RunContext) -> Path:
    return ctx.layout.root / "results" / "objective.json"


def check_validation_split(ctx: RunContext) -> None:
    """Refuse (ConfigError, one line) before any training an objective on a validation split without examples.
    (The objective's name and the sweep's direction are checked with the settings: objective_metrics.py.)"""
    metric = ctx.cfg.objective
    if metric is not None and len(ctx.splits.val.y) == 0:
        raise ConfigError(f"objective={metric} is measured on the validation split, which has no examples; "
                          "raise dataset.val_fraction (or dataset.max_val_examples)")


def _stamps(ctx: RunContext, cycle: int) -> dict[str, list[int]]:
    """[size in bytes, modification time in ns] of the weights of model N and SAE N: what the value describes."""
    stamps = {}
    for name, folder in (("model", ctx.layout.model(cycle)), ("sae", ctx.layout.sae(cycle))):
        stat = (folder / WEIGHTS_FILE).stat()
        stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def _recorded(path: Path, metric: str, cycle: int, stamps: dict[str, list[int]]) -> Optional[dict]:
    """The record in objective.json when it is for this metric, cycle and checkpoints (else None, said in a log
    line when a record was there: it is measured again)."""
    if not path.is_file():
        return None
    try:
        record = read_json(path, remedy="it is measured again")
        current = (record["metric"], record["split"], record["cycle"], record["artifacts"])
        value = record["value"]
        if value is not None and not isinstance(value, (int, float)):
            raise TypeError("value is not a number")
    except (ArtifactError, KeyError, TypeError) as ex:
        log.warning("%s is damaged (%s); measuring the objective again", path, str(ex).split("; ")[0])
        return None
    if current != (metric, OBJECTIVE_SPLIT, cycle, stamps):
        log.info("%s is for %s on the %s split at cycle %d of other checkpoints; measuring %s again", path,
                 record["metric"], record["split"], record["cycle"], metric)
        return None
    return record


def measure_objective(ctx: RunContext, metric: str, cycle: int) -> dict[str, Any]:
    """Evaluate model N with SAE N on the validation split (only the metric families `metric` needs) and return
    the record objective.json holds: metric, split "val", cycle, value (None when undefined), direction
    ("maximize" / "minimize" / None), num_examples, sae_degenerate, the checkpoints and their stamps, seconds.
    Raises DivergenceError when the model's or the SAE's numbers there are not finite."""
    started = time.perf_counter()
    seed_everything(ctx.seed_for(cycle, "evaluate"))  # as the test-split evaluation
    performance, representations = objective_needs(metric)
    evaluation = evaluate_split(ctx, cycle, OBJECTIVE_SPLIT, performance=performance,
                                representations=representations, check_own_fit=False)
    family, name = metric.split("/", 1)
    value = evaluation.metrics[family][name]
    return {
        "metric": metric,
        "split": OBJECTIVE_SPLIT,
        "cycle": cycle,
        "value": None if value is None or not math.isfinite(value) else float(value),
        "direction": objective_direction(metric),
        "num_examples": evaluation.num_examples,
        "sae_degenerate": evaluation.degenerate,
        "model": str(ctx.layout.model(cycle)),
        "sae": str(ctx.layout.sae(cycle)),
        "artifacts": _stamps(ctx, cycle),
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_objective(ctx: RunContext) -> Optional[float]:
    """The value of `objective` for the run's last cycle (`cycle.max_cycles`) on the validation split: reused
    from results/objective.json or measured and written there (atomically), logged, and sent to wandb's
    summary. None when no objective is set; NaN when the metric is undefined there."""
    metric = ctx.cfg.objective
    if metric is None:
        return None
    cycle, path = ctx.cfg.cycle.max_cycles, objective_path(ctx)
    record = _recorded(path, metric, cycle, _stamps(ctx, cycle))
    if record is not None:
        log.info("objective: found %s, reusing it (resume)", path)
    else:
        record = measure_objective(ctx, metric, cycle)
        if ctx.accelerator.is_main_process:
            write_json(path, record)
    value = record["value"]
    better = {"maximize": "higher is better", "minimize": "lower is better"}.get(record["direction"], "no better way")
    if value is None:
        why = "the SAE is degenerate there (no latent fires)" if record["sae_degenerate"] else "it is not defined there"
        log.warning("objective %s is undefined on the %s split at cycle %d (%s); an Optuna search counts this job "
                    "as a FAILED trial and goes on", metric, OBJECTIVE_SPLIT, cycle, why)
    else:
        log.info("objective %s = %.6g on the %s split (%d examples) at cycle %d (%s): %s", metric, value,
                 OBJECTIVE_SPLIT, record["num_examples"], cycle, better, path)
    if ctx.tracker is not None:
        ctx.tracker.log_objective(metric, value, OBJECTIVE_SPLIT, cycle)
    return float("nan") if value is None else float(value)
