"""Train SAE N on model N of a run folder (or on `inputs.model=PATH`).

    python scripts/train_sae.py run_dir=outputs/my_run cycle.current=0
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run_entrypoint("train_sae", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors():
        main()
