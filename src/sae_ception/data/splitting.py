"""Seeded, stratified carving of train/val/test, shared by every dataset so splits mean the same everywhere."""

from typing import Optional

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from sae_ception.data.base import DatasetConfig, DataSplits, Split
from sae_ception.errors import ConfigError

Arrays = tuple[np.ndarray, np.ndarray]  # (images (N, ...), labels (N,))


def carve(indices: np.ndarray, labels: np.ndarray, count: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, `count` held out), stratified by label when every class can be represented."""
    if count <= 0:
        return indices, indices[:0]
    if count >= len(indices):
        return indices[:0], indices
    y = labels[indices]
    classes, counts = np.unique(y, return_counts=True)
    stratifiable = counts.min() >= 2 and min(count, len(indices) - count) >= len(classes)
    rest, held = train_test_split(indices, test_size=count, random_state=rng, stratify=y if stratifiable else None)
    return rest, held


def build_splits(
    cfg: DatasetConfig, seed: int, train: Arrays, test: Optional[Arrays], scale: float, origin: str
) -> DataSplits:
    """Carve val (and test, when `test` is None) from `train`, subsample train, and scale x by 1/`scale`."""
    x, y = train
    rng = np.random.RandomState(seed % 2**32)
    n = len(y)
    rest = np.arange(n)
    if test is None:
        if round(cfg.test_fraction * n) == 0:
            raise ConfigError(
                f"dataset.test_fraction={cfg.test_fraction} leaves no test examples out of {n} (this source has no "
                "separate test split); use a value in (0, 1)"
            )
        rest, test_idx = carve(rest, y, round(cfg.test_fraction * n), rng)
        rest, val_idx = carve(rest, y, round(cfg.val_fraction * n), rng)
        how = f"train/val/test = {len(rest)}/{len(val_idx)}/{len(test_idx)} carved from its {n} examples"
    else:
        rest, val_idx = carve(rest, y, round(cfg.val_fraction * n), rng)
        how = f"val = {len(val_idx)} carved from its {n} train examples, test = its separate {len(test[1])}"
    if len(rest) == 0:
        raise ConfigError(
            f"dataset.val_fraction={cfg.val_fraction} and dataset.test_fraction={cfg.test_fraction} "
            f"leave no training examples out of {n}; lower them"
        )
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(rest):
        _, rest = carve(rest, y, cfg.max_train_examples, rng)
        how += f", train subsampled to {len(rest)} (dataset.max_train_examples)"
    test_split = _split(x, y, test_idx, scale) if test is None else _split(*test, np.arange(len(test[1])), scale)
    return DataSplits(
        train=_split(x, y, rest, scale),
        val=_split(x, y, val_idx, scale),
        test=test_split,
        num_classes=cfg.num_classes,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        source=f"{origin}; {how} (stratified, seed {seed})",
    )


def _split(x: np.ndarray, y: np.ndarray, idx: np.ndarray, scale: float) -> Split:
    features = np.ascontiguousarray(x[idx].reshape(len(idx), int(np.prod(x.shape[1:]))), dtype=np.float32) / np.float32(scale)
    return Split(x=torch.from_numpy(features), y=torch.from_numpy(y[idx].astype(np.int64)))
