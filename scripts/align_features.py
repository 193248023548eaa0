"""Cross-model feature alignment: map one model's activations and SAE features onto another's (and back), with
orthogonal Procrustes, ridge regression, the reference's MLP "hypernetwork" and crosscoders (L1 and BatchTopK),
beside controls: the mean code, identity and a same-model ceiling (two SAEs of one model).

    python scripts/align_features.py                                       # digits: two MLPs of different seeds
    python scripts/align_features.py align.model_a=outputs/run align.cycle_a=0 align.model_b=outputs/run align.cycle_b=3
    python scripts/align_features.py dataset=sst2 dataset.path=../shared/data/sst2 model@model_a=minilm \\
        align.model_b=outputs/minilm_sst2 align.level=word          # pretrained MiniLM vs MiniLM fine-tuned here
    python scripts/align_features.py --multirun seed=0,1,2

The run writes results/alignment.json (every row and the shared-feature counts), prints the table, draws
plots/alignment_correlations.png and plots/crosscoder_<name>.png, and analysis/pairs.html (matched feature pairs).
Bad settings (a model source that does not exist, a layer out of range, a run made on other data, an SAE from a
run with another seed) stop the run in one line before anything is written.
"""

import hydra
from omegaconf import DictConfig

from sae_ception.cli import one_line_hydra_errors, run_entrypoint
from sae_ception.sweep_errors import one_line_plugin_errors


@hydra.main(version_base="1.3", config_path="../configs", config_name="align_features")
def main(cfg: DictConfig) -> None:
    run_entrypoint("align_features", cfg)


if __name__ == "__main__":
    with one_line_hydra_errors(), one_line_plugin_errors():
        main()
