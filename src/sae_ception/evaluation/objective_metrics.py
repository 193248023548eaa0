"""The metrics a run can hand to a hyperparameter search as its objective (`objective=family/name`).

They are the `family/name` keys of a cycle's results (`flatten_metrics` in report.py) that describe the model
and its SAE on held-out data: performance, SAE quality, linear probes, monosemanticity and clustering of the
dense layer and of the SAE codes. The `auxiliary` family is left out: it records how a model was trained (its
lambda, its training losses), not how well it does. Which metrics exist is fixed by the evaluation code; a
test checks this list against a real evaluation, so a new metric there fails it until it is named here.

The objective is always measured on the validation split (stages/objective.py), never on the test split that
`results/cycle_N.json` reports. `check_search` checks an Optuna sweep against it when the settings are read,
and `check_sweeper` the sweeper's own settings (direction, n_trials, n_jobs, max_failure_rate): in each job, and
first in the sweep's own process before the study is created (sweep_errors.py).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, Optional

from omegaconf import ListConfig

from sae_ception.errors import ConfigError
from sae_ception.evaluation.monosemanticity import QUANTILES
from sae_ception.evaluation.paper_metrics import VARIANTS
from sae_ception.evaluation.report import ABSOLUTE, better_direction

PERFORMANCE = ("accuracy", "loss", "f1_macro", "f1_weighted", "spliced_accuracy", "spliced_loss",
               "spliced_accuracy_drop")
SAE_QUALITY = ("mse", "mse_normalized", "explained_variance", "l0", "l1", "dead_fraction", "always_on_fraction")
MONOSEMANTICITY = (
    *(f"{score}_{stat}" for score in ("csi", "u") for stat in ("mean", *(f"q{int(q * 100):02d}" for q in QUANTILES))),
    "num_units", "dead_units", "never_or_always_firing_units", "csi_live_units", "u_live_units",
    *(f"{variant}_{stat}" for variant in VARIANTS for stat in ("mean", "live_units")),
)
CLUSTERING = ("ari_kmeans", "ari_argmax", "silhouette_labels", "silhouette_kmeans", "davies_bouldin",
              "calinski_harabasz", "silhouette_sample_size", "kmeans_sample_size", "argmax_clusters", "argmax_zero_rows")
REPRESENTATIONS = ("dense", "sae")  # the target layer, and the SAE's codes of it

FAMILIES: dict[str, tuple[str, ...]] = {
    "performance": PERFORMANCE,
    "sae": SAE_QUALITY,
    "probe": tuple(f"{rep}_accuracy" for rep in REPRESENTATIONS),
    **{f"monosemanticity_{rep}": MONOSEMANTICITY for rep in REPRESENTATIONS},
    **{f"clustering_{rep}": CLUSTERING for rep in REPRESENTATIONS},
}
OBJECTIVE_METRICS: tuple[str, ...] = tuple(f"{family}/{name}" for family, names in FAMILIES.items() for name in names)
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def check_objective(metric: str) -> None:
    """Raise ConfigError (one line: the closest valid name, then every valid one by family) unless `metric`
    is one of OBJECTIVE_METRICS."""
    if metric in OBJECTIVE_METRICS:
        return
    from sae_ception.config import closest  # config.py imports this module

    family = metric.split("/", 1)[0]
    hint = closest(metric, list(OBJECTIVE_METRICS))
    if family == "auxiliary":
        hint = ("; the auxiliary family records how a model was trained, not how well it does (the model's "
                "validation accuracy is performance/accuracy)")
    by_names: dict[tuple[str, ...], list[str]] = {}
    for fam, names in FAMILIES.items():
        by_names.setdefault(names, []).append(fam)
    valid = "; ".join(f"{fams[0] if len(fams) == 1 else '{' + ','.join(fams) + '}'}/{{{','.join(names)}}}"
                      for names, fams in by_names.items())
    raise ConfigError(f"objective={metric!r} is not a metric the search can use{hint} (valid, as family/name: {valid})")


def objective_direction(metric: str) -> Optional[str]:
    """"maximize" or "minimize": which way the metric is better (report.py's DIRECTIONS); None when it has no
    better way (a count, L0) or is better closer to 0 (`spliced_accuracy_drop`)."""
    name = metric.split("/", 1)[1]
    if name in ABSOLUTE:
        return None
    return {1: "maximize", -1: "minimize"}.get(better_direction(name))


def objective_needs(metric: str) -> tuple[bool, tuple[str, ...]]:
    """(whether the performance family is needed, which representations' families are) to compute `metric`:
    the SAE-quality family is always computed (it says whether the SAE is degenerate)."""
    family, name = metric.split("/", 1)
    if family == "performance":
        return True, ()
    if family == "probe":
        return False, (name.removesuffix("_accuracy"),)
    rep = family.rsplit("_", 1)[1] if family != "sae" else None
    return False, (rep,) if rep else ()


def _sweeper() -> Optional[Any]:
    """Hydra's sweeper settings (`hydra.sweeper`) when this job runs inside a --multirun sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().sweeper
    return None


DIRECTIONS = ("maximize", "minimize")  # what Optuna accepts, in lower case


def _direction_name(direction: Any) -> Any:
    """Optuna's direction as written (`maximize`), from a string, the sweeper's Direction enum (its default is
    Direction.minimize) or a list of either (several objectives: a list is returned); anything else unchanged."""
    if isinstance(direction, (str, Enum)):
        return direction.name if isinstance(direction, Enum) else direction
    if isinstance(direction, (list, tuple, ListConfig)):
        return [_direction_name(d) for d in direction]
    return direction


def search_direction(direction: Any) -> str:
    """The one direction of an Optuna search (`maximize` / `minimize`, or a list of one of them); anything else
    is refused (ConfigError, one line naming hydra.sweeper.direction and the valid values): another case
    (`MINIMIZE`, which Optuna refuses with a traceback), a typo, or several directions (a multi-objective study,
    while a job returns one value)."""
    name = _direction_name(direction)
    shown = f"[{','.join(map(str, name))}]" if isinstance(name, list) else name
    if isinstance(name, list) and len(name) > 1:
        raise ConfigError(f"hydra.sweeper.direction={shown} asks for several objectives, but a job returns one "
                          "value (its objective); give one direction: maximize or minimize")
    if isinstance(name, list) and len(name) == 1:
        name = name[0]
    if name not in DIRECTIONS:
        from sae_ception.config import closest  # config.py imports this module

        hint = closest(str(name).lower(), list(DIRECTIONS)) if isinstance(name, str) else ""
        raise ConfigError(f"hydra.sweeper.direction={shown} is not a direction{hint} (valid: maximize, minimize, "
                          "in lower case)")
    return name


def check_sweeper(settings: Mapping[str, Any]) -> None:
    """Refuse (ConfigError, one line) Optuna sweeper settings (`hydra.sweeper.*`) the sweep would fail on, with
    a traceback or a misleading message, or loop on: an invalid direction (`search_direction`), n_trials or
    n_jobs not a positive integer (0 trials ends in Optuna's "No trials are completed yet", 0 trials at once in
    a ZeroDivisionError), a max_failure_rate outside [0, 1] (an AssertionError). Called in the sweep's own
    process before the study is created (sweep_errors.py) and again by each job (`check_search`)."""
    search_direction(settings.get("direction", "minimize"))
    for key, what in (("n_trials", "the number of trials (runs) the search makes"),
                      ("n_jobs", "the number of trials asked for at once")):
        value = settings.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}={value} must be a positive integer: {what}")
    rate = settings.get("max_failure_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate={rate} must be a number in [0, 1]: the share of a batch "
                          "of trials that may fail before the search stops")


def check_search(metric: Optional[str]) -> None:
    """Inside an Optuna sweep (`hydra/sweeper=optuna`), refuse (ConfigError, one line) jobs that would return
    nothing (`objective` null), sweeper settings `check_sweeper` refuses (an invalid direction, several of them,
    no trials) and a direction opposite to the metric's better way (maximising a loss). Outside one, nothing is
    checked."""
    sweeper = _sweeper()
    if sweeper is None or sweeper.get("_target_") != OPTUNA_SWEEPER:
        return
    if metric is None:
        raise ConfigError("hydra/sweeper=optuna optimises what each job returns, but objective=null; set "
                          "objective=family/name (e.g. objective=performance/accuracy) on scripts/train_cycle.py, "
                          "the script that measures and returns it, or use experiment=optuna_search")
    check_sweeper(sweeper)
    direction = search_direction(sweeper.get("direction"))
    wanted = objective_direction(metric)
    if wanted is not None and direction != wanted:
        better = "higher" if wanted == "maximize" else "lower"
        raise ConfigError(f"hydra.sweeper.direction={direction}, but objective={metric} is better {better}; "
                          f"set hydra.sweeper.direction={wanted}")
