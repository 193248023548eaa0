"""Concept transfer between models: teach model A (trained on classes 0-3) the class 4 that model B learned
(from classes 2-5), by weight surgery or by training, and compare every method with fair baselines.

    python scripts/transfer_concept.py                                  # digits, every method, one seed
    python scripts/transfer_concept.py dataset=mnist dataset.path=../shared/data/mnist
    python scripts/transfer_concept.py concept.methods=[none,copy_head,cascade] transfer.cascade.ratios=[16,4,4,2]
    python scripts/transfer_concept.py model@model_a=mlp_wide model@model_b=mlp_wide model_a.epochs=2 model_b.epochs=2
    python scripts/transfer_concept.py --multirun seed=0,1,2,3,4        # then: scripts/compare.py multirun/<date>/<time>
    python scripts/transfer_concept.py run_dir=outputs/2026-11-30/09-00-00   # resume: A, B and finished methods are kept

The run trains A and B once (checkpoints/model_a, model_b), applies each method of concept.methods to a copy of
A, and prints one table (method x transfer / preservation / specificity / budget), written with every number to
results/transfer.json (one results/methods/<method>.json each), with plots/transfer_confusion.png and the
resolved config.yaml. Bad settings (the target in A's classes, no shared class, a shape-bound method on models of
different shapes, more target images than the data has) stop the run in one line before anything is written.
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint
from sae_ception.sweep_errors import one_line_plugin_errors


@hydra.main(version_base="1.3", config_path="../configs", config_name="transfer_concept")
def main(cfg: DictConfig) -> None:
    run_entrypoint("transfer_concept", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors(), one_line_plugin_errors():
        main()
