import numpy as np
import pytest
import torch

from sae_ception.data import DatasetConfig, load_splits
from sae_ception.errors import ConfigError


def load(seed=0, **kwargs):
    return load_splits(DatasetConfig(name="digits", **kwargs), seed=seed)


def test_shapes_dtypes_and_range():
    s = load()
    assert s.input_shape == (8, 8) and s.num_classes == 10
    for split in (s.train, s.val, s.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split.y), 64)
        assert split.x.min() >= 0 and split.x.max() <= 1
    assert float(s.train.x.max()) == 1.0  # scaled by the true maximum, 16
    assert "load_digits" in s.source


def test_sizes_follow_fractions():
    s = load(val_fraction=0.1, test_fraction=0.2)
    assert (len(s.val), len(s.test)) == (round(0.1 * 1797), round(0.2 * 1797))
    assert len(s.train) + len(s.val) + len(s.test) == 1797


def test_splits_are_disjoint_and_stratified():
    s = load()
    rows = {tuple(r) for r in s.train.x.numpy().round(4)}
    assert not any(tuple(r) in rows for r in s.test.x.numpy().round(4)[:50])
    for split in (s.val, s.test):
        share = np.bincount(split.y.numpy(), minlength=10) / len(split.y)
        assert np.abs(share - np.bincount(s.train.y.numpy(), minlength=10) / len(s.train.y)).max() < 0.02


def test_same_seed_same_splits_other_seed_other_splits():
    a, b, c = load(seed=3), load(seed=3), load(seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_max_train_examples_subsamples_train_only():
    s = load(max_train_examples=100)
    assert len(s.train) == 100 and len(s.test) == round(0.2 * 1797)
    assert np.bincount(s.train.y.numpy(), minlength=10).min() >= 9  # stratified: ~10 per class
    assert "max_train_examples" in s.source
    assert len(load(max_train_examples=5).train) == 5  # fewer than classes: plain random subsample


def test_zero_val_fraction_gives_empty_val():
    s = load(val_fraction=0.0)
    assert len(s.val) == 0 and s.val.x.shape == (0, 64)


def test_path_is_rejected():
    with pytest.raises(ConfigError, match="dataset.path='x' is not used by digits"):
        load(path="x")
