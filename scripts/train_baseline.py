"""Train the cycle-0 model (or import `inputs.model=PATH` as model 0) into the run folder.

    python scripts/train_baseline.py run_dir=outputs/my_run
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run_entrypoint("train_baseline", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors():
        main()
