"""A search's objective: one metric of the last cycle, measured on the validation split, returned to Hydra.

`objective=family/name` (evaluation/objective_metrics.py lists the names) makes scripts/train_cycle.py, once
every cycle is done, evaluate model `cycle.max_cycles` with its SAE on the VALIDATION split, write
`results/objective.json` and return the value; Hydra's Optuna sweeper (`hydra/sweeper=optuna`) optimises what
each job returns. The results files report the test split; a test figure never selects hyperparameters.

- The value is null in objective.json, and NaN from `run_objective`, when the metric is undefined there (an SAE
  none of whose latents fires on the validation rows leaves its code-based metrics undefined, as the test results
  do). scripts/train_cycle.py hands Hydra None for it: the Optuna sweeper then marks the trial FAILED and the
  search goes on (a NaN would stop the whole search with a traceback in hydra-optuna-sweeper 1.3 / Optuna 2.10).
- objective.json's own record is the objective the run measured or reused last (what its last invocation with
  an objective returned); `other_metrics` keeps, by metric, the records of the other objectives measured on the
  same checkpoints. A rerun of a finished job (a resumed sweep) reuses a record measured for its metric on the
  validation split at its last cycle on the same checkpoint files (size and modification time), from either
  place, so switching `objective` back and forth measures each metric once; the reused record becomes the file's
  own. Otherwise the metric is measured again and a log line says what the file's record differs in (the
  metric, the split, the cycle, or which checkpoint was written again); records of other checkpoints are dropped.
- With `objective=null` the run returns None and neither reads nor changes objective.json: a file left by an
  earlier invocation stays, a record of the metric it names (a log line says so), never this run's objective.
- Before anything is trained, a validation split without examples is refused (`check_validation_split`), as
  are, with the settings (evaluation/objective_metrics.py), an unknown metric, an Optuna sweep without an
  objective, invalid sweeper settings and a sweep direction opposite to the metric's better way. The other
  scripts refuse `objective` (entrypoints.py): only this one measures it.
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


RECORD_KEYS = ("metric", "split", "cycle", "value", "direction", "num_examples", "sae_degenerate", "artifacts")


def _read(path: Path) -> Optional[dict]:
    """objective.json as written (its record, and `other_metrics`: {metric: record}), or None when there is none
    or it is damaged (said in a warning: the objective is measured again)."""
    if not path.is_file():
        return None
    try:
        saved = read_json(path, remedy="it is measured again")
        others = saved.get("other_metrics", {}) if isinstance(saved, dict) else None
        if not isinstance(others, dict):
            raise TypeError("not a record with other_metrics by metric")
        for record in (saved, *others.values()):
            missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
            if record["value"] is not None and not isinstance(record["value"], (int, float)):
                raise TypeError(f"the value of {record['metric']} is not a number")
    except (ArtifactError, KeyError, TypeError) as ex:
        log.warning("%s is damaged (%s); measuring the objective again", path, str(ex).strip("'\"").split("; ")[0])
        return None
    return saved


def _on_these_checkpoints(saved: dict, cycle: int, stamps: dict[str, list[int]]) -> dict[str, dict]:
    """The records in objective.json (its own and other_metrics) measured on the validation split at `cycle` on
    the checkpoints of these stamps, by metric."""
    own = {key: value for key, value in saved.items() if key != "other_metrics"}
    return {record["metric"]: record for record in (*saved.get("other_metrics", {}).values(), own)
            if (record["split"], record["cycle"], record["artifacts"]) == (OBJECTIVE_SPLIT, cycle, stamps)}


def _what_differs(saved: dict, metric: str, cycle: int, stamps: dict[str, list[int]]) -> str:
    """Why objective.json holds no record for `metric` here: what its records differ in from the one wanted (the
    metric, the split, the cycle, or which checkpoint was written again since)."""
    differs = []
    if saved["metric"] != metric:
        differs.append(f"it holds {', '.join([saved['metric'], *saved.get('other_metrics', {})])}, not {metric}")
    if saved["split"] != OBJECTIVE_SPLIT:
        differs.append(f"it was measured on the {saved['split']} split, not {OBJECTIVE_SPLIT}")
    if saved["cycle"] != cycle:
        differs.append(f"it is for cycle {saved['cycle']}, not the last cycle {cycle}")
    elif saved["artifacts"] != stamps:
        changed = [f"{name}_cycle_{cycle}" for name in stamps if saved["artifacts"].get(name) != stamps[name]]
        differs.append(f"{' and '.join(changed)} {'was' if len(changed) == 1 else 'were'} written again since it "
                       "was measured")
    if len(differs) == 1 and saved["metric"] != metric:
        differs[0] += " (measured on these checkpoints)"
    return "; ".join(differs)


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
    summary. None when no objective is set (objective.json is then neither read nor changed); NaN when the
    metric is undefined there."""
    metric = ctx.cfg.objective
    cycle, path = ctx.cfg.cycle.max_cycles, objective_path(ctx)
    if metric is None:
        if path.is_file():
            log.info("objective=null: %s is left from an earlier invocation that set an objective; it is that "
                     "invocation's record, not this run's objective", path)
        return None
    stamps = _stamps(ctx, cycle)
    saved = _read(path)
    records = _on_these_checkpoints(saved, cycle, stamps) if saved is not None else {}
    record = records.pop(metric, None)
    if record is not None:
        log.info("objective: found %s in %s, reusing it (resume)", metric, path)
    else:
        if saved is not None:
            log.info("%s: %s; measuring %s on the %s split at cycle %d", path,
                     _what_differs(saved, metric, cycle, stamps), metric, OBJECTIVE_SPLIT, cycle)
        record = measure_objective(ctx, metric, cycle)
    content = {**record, "other_metrics": records}  # its own record is the objective returned last
    if ctx.accelerator.is_main_process and content != saved:
        write_json(path, content)
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
