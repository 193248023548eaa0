"""Builders of tiny synthetic MNIST-layout folders for the data tests."""

import numpy as np
import pytest

from sae_ception.data import write_idx


def make_pair(folder, prefix: str, n: int, seed: int, gz: bool = True, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Write `prefix`-images/labels IDX files of `n` random images (labels cycle 0..9) and return the arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


@pytest.fixture
def pair_writer():
    return make_pair
