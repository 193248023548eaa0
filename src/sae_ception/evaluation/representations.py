"""Interpretability metrics of one representation pair: the dense target layer and the SAE's codes.

Each family is computed for both, on held-out data; the linear probes are fitted on the training split.
`monosemanticity_*` holds the project's CSI and U and, beside them, the paper's and the 2.0 code's variants
(`paper_metrics.py`); `clustering_*` holds k-means and the paper's argmax ARI.

Every family streams over the held-out rows (`rows.RowSource`: memory-mapped activations, or SAE codes stored
sparse on disk), so memory is bounded by a chunk of rows and the fixed-seed samples of `Sampling`, whatever the
split's size: CSI, U and the paper's variants, `ari_argmax`, Davies-Bouldin and Calinski-Harabasz and the
probes' test accuracy read every row; the probe is fitted on a sample of training rows, k-means on a sample
(then assigns every row), the silhouettes and the 2-D PCA for plots use samples. Each sample is the whole split
when the split is no larger, and then every number equals the in-memory computation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy import sparse

from sae_ception.evaluation.clustering_streamed import fixed_sample, streamed_clustering
from sae_ception.evaluation.probes import probe_accuracy
from sae_ception.evaluation.rows import CHUNK_ROWS, Block, DenseRows, RowSource
from sae_ception.utils.batching import code_batch
from sae_ception.evaluation.unit_stats import monosemanticity_family, unit_stats


@dataclass(frozen=True)
class Sampling:
    """How many rows each sampled metric reads (fixed-seed samples; the whole split when it is no larger)."""

    probe_rows: int = 50_000  # training rows a linear probe is fitted on
    kmeans_rows: int = 50_000  # held-out rows k-means is fitted on (it then assigns every row)
    silhouette_rows: int = 10_000  # held-out rows of the silhouettes (scikit-learn's own sample)
    plot_rows: int = 5_000  # held-out rows drawn in the 2-D PCA plot
    chunk_rows: int = CHUNK_ROWS  # rows read at once by the streamed metrics

    def record(self, n_train: int, n_test: int, seed: int) -> dict:
        """What the results file says about the samples: the rows each sampled metric read, and the seed."""
        return {"probe_fit_rows": min(n_train, self.probe_rows), "kmeans_fit_rows": min(n_test, self.kmeans_rows),
                "silhouette_rows": min(n_test, self.silhouette_rows), "plot_rows": min(n_test, self.plot_rows),
                "test_rows": n_test, "train_rows": n_train, "seed": seed}


@dataclass(frozen=True)
class Representation:
    """One representation of the examples: its held-out rows, and how to read rows of the training split."""

    test: RowSource
    train_rows: Callable[[np.ndarray], Block]  # training-row indices -> those rows (dense array or CSR)
    num_train: int
    codes: bool = False  # SAE codes: the probe scales them without centring (probes.py)


def in_memory(train_X: torch.Tensor, test_X: torch.Tensor, codes: bool = False) -> Representation:
    """A representation held as two in-memory [N, U] tensors (`codes`: they are SAE codes)."""
    train = DenseRows(train_X.detach().float().cpu())
    return Representation(DenseRows(test_X.detach().float().cpu()), train.take, len(train_X), codes)


@torch.no_grad()
def encode_rows(sae, rows: np.ndarray, batch_size: int = 4096) -> sparse.csr_matrix:
    """SAE codes of in-memory rows [M, d_in] as a CSR matrix (a batch of dense codes at a time)."""
    param, batch_size = next(sae.parameters()), code_batch(batch_size, sae.d_sae)
    blocks = [sparse.csr_matrix(sae.encode(torch.from_numpy(rows[i:i + batch_size]).to(param.device, param.dtype))
                                .float().cpu().numpy()) for i in range(0, len(rows), batch_size)]
    return sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, sae.d_sae), dtype=np.float32)


@torch.no_grad()
def encode_all(sae, acts_ND: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE codes of every row as a dense tensor on the CPU: small splits only (tests and in-memory references)."""
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


def _dense(block: Block) -> torch.Tensor:
    return torch.from_numpy(block.toarray() if sparse.issparse(block) else np.asarray(block, dtype=np.float32))


def representation_metrics(
    representations: dict[str, Representation], train_labels: torch.Tensor, test_labels: torch.Tensor, seed: int,
    sampling: Sampling = Sampling(), timings: Optional[dict[str, float]] = None,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """The metric families of each representation ("dense", "sae") and per-unit arrays for plots (`<name>_csi`,
    `<name>_u` [U], `<name>_pca_2d` [P, 2] of the plot sample, `labels` [P] of that sample). `timings`, when
    given, receives the seconds each family took (`<family>_<name>`)."""
    timings = {} if timings is None else timings

    def timed(key: str, compute: Callable):
        started = time.perf_counter()
        value = compute()
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started
        return value

    families: dict[str, dict[str, float]] = {"probe": {}}
    n_test = len(test_labels)
    plot_rows = fixed_sample(n_test, sampling.plot_rows, seed)
    per_unit: dict[str, torch.Tensor] = {"labels": test_labels[torch.from_numpy(plot_rows)]}
    fit_rows = {}
    for name, rep in representations.items():
        stats = timed(f"unit_stats_{name}", lambda: unit_stats(rep.test, test_labels, sampling.chunk_rows))
        families[f"monosemanticity_{name}"], scores = timed(f"monosemanticity_{name}", lambda: monosemanticity_family(stats))
        plot_X = _dense(rep.test.take(plot_rows)) if n_test else torch.zeros(0, rep.test.shape[1])
        per_unit |= {f"{name}_csi": scores["csi"], f"{name}_u": scores["u"],
                     f"{name}_pca_2d": timed(f"pca_{name}", lambda: pca_2d(plot_X, seed))}
        families[f"clustering_{name}"] = timed(f"clustering_{name}", lambda: streamed_clustering(
            rep.test, test_labels, stats, seed, sampling.kmeans_rows, sampling.silhouette_rows,
            chunk_rows=sampling.chunk_rows))
        rows = fit_rows.setdefault(rep.num_train, fixed_sample(rep.num_train, sampling.probe_rows, seed))
        families["probe"][f"{name}_accuracy"] = timed(f"probe_{name}", lambda: probe_accuracy(
            rep.train_rows(rows), train_labels[torch.from_numpy(rows)], rep.test, test_labels, seed,
            chunk_rows=sampling.chunk_rows, centre=not rep.codes))
    return families, per_unit
