"""Linear probes: how much label information a representation keeps, read out by a linear classifier."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def linear_probe_accuracy(
    train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor, seed: int, max_iter: int = 500
) -> float:
    """Test accuracy of a standardised multinomial logistic regression fitted on the training split.

    NaN where undefined: fewer than two classes in the training split (nothing to tell apart), no test
    examples, or no features. A class with one example, a constant feature (standardised to 0) or a single
    test example are fine."""
    if len(torch.unique(train_y)) < 2 or len(test_y) == 0 or train_X.ndim != 2 or train_X.shape[1] == 0:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_X.double().numpy(), train_y.numpy())
    return float(np.mean(probe.predict(test_X.double().numpy()) == test_y.numpy()))
