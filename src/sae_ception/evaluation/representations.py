"""Interpretability metrics of one representation pair: the dense target layer and the SAE's codes.

Each family is computed for both, on held-out data; the linear probes are fitted on the training split.
`monosemanticity_*` holds the project's CSI and U and, beside them, the paper's and the 2.0 code's variants
(`paper_metrics.py`); `clustering_*` holds k-means and the paper's argmax ARI.
"""

from __future__ import annotations

import torch

from sae_ception.evaluation.clustering import clustering_metrics
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics, unit_scores
from sae_ception.evaluation.paper_metrics import paper_monosemanticity_metrics
from sae_ception.evaluation.probes import linear_probe_accuracy


@torch.no_grad()
def encode_all(sae, acts_ND: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE codes of every row, on the CPU (computed in batches on the SAE's device)."""
    device = next(sae.parameters()).device
    return torch.cat([sae.encode(chunk.to(device)).float().cpu() for chunk in acts_ND.split(batch_size)])


def pca_2d(features_NF: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The first two principal-component coordinates, by seeded randomised SVD (a full SVD of
    50k x 4k codes takes a minute; this takes about a second and is exact enough for a picture)."""
    n, f = features_NF.shape
    if n < 2 or f < 2:  # no plane to project on: one example, or one feature
        return torch.full((n, 2), float("nan"))
    centred = features_NF.float() - features_NF.float().mean(0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(centred, q=min(8, centred.shape[1]), niter=4)
    return centred @ v[:, :2]


def representation_metrics(
    train: dict[str, torch.Tensor], train_labels: torch.Tensor,
    test: dict[str, torch.Tensor], test_labels: torch.Tensor, seed: int,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """`train`/`test` map a representation name ("dense", "sae") to its [N, units] matrix. Returns the
    metric families and per-unit arrays for plots (`<name>_csi`, `<name>_u`, `<name>_pca_2d`, `labels`)."""
    families: dict[str, dict[str, float]] = {"probe": {}}
    per_unit: dict[str, torch.Tensor] = {"labels": test_labels}
    for name, test_X in test.items():
        scores = unit_scores(test_X, test_labels)
        per_unit |= {f"{name}_csi": scores["csi"], f"{name}_u": scores["u"], f"{name}_pca_2d": pca_2d(test_X, seed)}
        families[f"monosemanticity_{name}"] = (monosemanticity_metrics(test_X, test_labels, scores=scores)
                                               | paper_monosemanticity_metrics(test_X, test_labels))
        families[f"clustering_{name}"] = clustering_metrics(test_X, test_labels, seed=seed)
        families["probe"][f"{name}_accuracy"] = linear_probe_accuracy(train[name], train_labels, test_X, test_labels, seed)
    return families, per_unit
