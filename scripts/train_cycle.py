"""Run SAE-ception end to end: baseline, then `cycle.max_cycles` cycles of SAE -> evaluate -> retrain.

    python scripts/train_cycle.py                          # digits, 3 cycles, CPU-friendly
    python scripts/train_cycle.py experiment=mnist_paper dataset.path=../shared/data/mnist
    python scripts/train_cycle.py --multirun seed=0,1,2 sharpening=per_class,random
    python scripts/train_cycle.py run_dir=outputs/2026-11-21/19-00-00   # resume a killed run
    python scripts/train_cycle.py --multirun hydra/launcher=joblib hydra.launcher.n_jobs=2 seed=0,1
    python scripts/train_cycle.py --multirun experiment=optuna_search    # Optuna search of lambda, top-k%, L1

With `objective=family/name` the run ends by measuring that metric of its last cycle on the validation split
(results/objective.json); main returns it, which is what Hydra's Optuna sweeper optimises. An undefined value
is returned as None, not NaN: hydra-optuna-sweeper 1.3 with Optuna 2.10 stops the whole search with a traceback
on NaN ("Values cannot be specified when state is TrialState.FAIL"), while None makes the trial FAILED and the
search go on. A search in which no trial completed, invalid Optuna sweeper settings (a direction in another case,
several directions, n_trials=0: refused before the study is created), an override of an entry of
hydra.sweeper.params, or a SLURM sweep started where there is no SLURM, ends with one line and exit status 2
(sweep_errors.py), not a traceback. Only this script measures an objective: the others refuse `objective`.
"""

import math
from typing import Optional

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint
from sae_ception.sweep_errors import one_line_plugin_errors


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """The objective's value; None when `objective` is null or its value undefined (a FAILED Optuna trial)."""
    value = run_entrypoint("train_cycle", cfg)
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    with one_line_hydra_errors(), one_line_plugin_errors():
        main()
