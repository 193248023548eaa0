"""Interpretability metrics of one representation pair: the dense target layer and the SAE's codes.

Each family is computed for both, on held-out data; the linear probes are fitted on the training split.
"""

from __future__ import annotations

import torch

from sae_ception.evaluation.clustering import clustering_metrics
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy


@torch.no_grad()
def encode_all(sae, acts_ND: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE codes of every row, on the CPU (computed in batches on the SAE's device)."""
    device = sae.W_dec_FD.device
    return torch.cat([sae.encode(chunk.to(device)).float().cpu() for chunk in acts_ND.split(batch_size)])


def representation_metrics(
    train: dict[str, torch.Tensor], train_labels: torch.Tensor,
    test: dict[str, torch.Tensor], test_labels: torch.Tensor, seed: int,
) -> dict[str, dict[str, float]]:
    """`train`/`test` map a representation name ("dense", "sae") to its [N, units] matrix."""
    families: dict[str, dict[str, float]] = {"probe": {}}
    for name, test_X in test.items():
        families[f"monosemanticity_{name}"] = monosemanticity_metrics(test_X, test_labels)
        families[f"clustering_{name}"] = clustering_metrics(test_X, test_labels, seed=seed)
        families["probe"][f"{name}_accuracy"] = linear_probe_accuracy(train[name], train_labels, test_X, test_labels, seed)
    return families
