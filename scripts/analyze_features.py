"""Per-feature reports of a finished run, without training: every cycle with a model and an SAE, or one.

    python scripts/analyze_features.py run_dir=outputs/my_run
    python scripts/analyze_features.py run_dir=outputs/my_run eval_cycle=2 analysis.num_features=32

Writes analysis/cycle_N/feature_report.json: for the most active SAE features, activation rate, mean
activation, label histogram and mode, strongest test examples, and the change in each class logit when
the feature is raised by its mean activation and spliced in; input-gradient maps (image data) or the top
tokens in context (text). analysis/cycle_N/index.html shows it as a self-contained gallery of feature
cards, also logged to wandb as images when wandb is on.
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run_entrypoint("analyze_features", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors(run_settings_only=True):
        main()
