"""Linear probes: how much label information a representation keeps, read out by a linear classifier.

The probe is a multinomial logistic regression on standardised features. The target layer's activations are
centred and scaled; SAE codes are scaled only (`centre=False`), since centring would make their sparse matrix
dense. The intercept is unpenalised, so at the optimum centring changes only the intercept; but lbfgs may stop at
`max_iter` before the optimum, where uncentred features with large means give another classifier (codes, mostly
zeros with small means, are not such features). `probe_accuracy` fits on a block of training rows (all of them,
or a fixed-seed sample on large splits) and scores every held-out row a chunk at a time.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sae_ception.evaluation.rows import CHUNK_ROWS, Block, DenseRows, RowSource


def _float64(block: Block) -> Block:
    return block.astype(np.float64) if sparse.issparse(block) else np.asarray(block, dtype=np.float64)


def probe_accuracy(train_X: Block, train_y: torch.Tensor, test: RowSource, test_y: torch.Tensor, seed: int,
                   max_iter: int = 500, chunk_rows: int = CHUNK_ROWS, centre: bool = True) -> float:
    """Accuracy on `test` (every row, read a chunk at a time) of a probe fitted on `train_X` [M, U] (dense array or
    CSR) with labels `train_y` [M]; features are scaled to unit variance, and centred when `centre` (dense only). NaN where undefined: fewer than two classes in the training rows, no test
    rows, or no features. A class with one example, a constant feature or a single test row are fine."""
    if len(torch.unique(train_y)) < 2 or len(test_y) == 0 or train_X.ndim != 2 or train_X.shape[1] == 0:
        return float("nan")
    probe = make_pipeline(StandardScaler(with_mean=centre), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(_float64(train_X), train_y.numpy())
    labels = test_y.numpy()
    correct = sum(int((probe.predict(_float64(block)) == labels[start:start + block.shape[0]]).sum())
                  for start, block in test.chunks(chunk_rows))
    return correct / len(labels)


def linear_probe_accuracy(
    train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor, seed: int,
    max_iter: int = 500, centre: bool = True,
) -> float:
    """`probe_accuracy` of in-memory tensors: fitted on every training row."""
    if train_X.ndim != 2:
        return float("nan")
    return probe_accuracy(train_X.detach().cpu().double().numpy(), train_y, DenseRows(test_X.detach().cpu()), test_y,
                          seed, max_iter, centre=centre)
