"""Re-evaluate a run folder without training: every cycle with a model and an SAE, or one of them.

    python scripts/evaluate.py run_dir=outputs/2026-11-21/19-00-00
    python scripts/evaluate.py run_dir=outputs/my_run eval_cycle=2

The run's own config.yaml supplies every setting; only wandb, device, progress and eval_* come from
this command line. Results, summary.csv and the table are rewritten.
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run_entrypoint("evaluate", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors(run_settings_only=True):
        main()
