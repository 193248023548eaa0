"""Run SAE-ception end to end: baseline, then `cycle.max_cycles` cycles of SAE -> evaluate -> retrain.

    python scripts/train_cycle.py                          # digits, 3 cycles, CPU-friendly
    python scripts/train_cycle.py experiment=mnist_paper dataset.path=../shared/data/mnist
    python scripts/train_cycle.py --multirun seed=0,1,2 sharpening=per_class,random
    python scripts/train_cycle.py run_dir=outputs/2026-11-21/19-00-00   # resume a killed run
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run_entrypoint("train_cycle", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors():
        main()
