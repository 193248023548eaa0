import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_ception.data import DatasetConfig, load_splits, write_idx
from sae_ception.data.mnist import read_pairs
from sae_ception.errors import ArtifactError

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def load(path, seed=0, **kwargs):
    return load_splits(DatasetConfig(name="mnist", path=str(path), **kwargs), seed=seed)


def test_both_pairs_use_t10k_as_test(tmp_path, pair_writer):
    pair_writer(tmp_path, "train", 200, seed=1, gz=False)
    test_images, test_labels = pair_writer(tmp_path, "t10k", 50, seed=2)
    s = load(tmp_path, val_fraction=0.1)
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 50)
    assert s.input_shape == (6, 6)
    assert torch.equal(s.test.y, torch.from_numpy(test_labels.astype(np.int64)))
    assert torch.allclose(s.test.x, torch.from_numpy(test_images.reshape(50, -1) / np.float32(255)))


def test_only_one_pair_is_carved_with_a_warning(tmp_path, pair_writer, caplog):
    pair_writer(tmp_path, "t10k", 100, seed=3)
    with caplog.at_level(logging.WARNING, logger="sae_ception.data"):
        s = load(tmp_path, val_fraction=0.1, test_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (70, 10, 20)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("only the t10k pair found in" in r.getMessage() and "70/10/20" in r.getMessage() for r in warnings)


@pytest.mark.parametrize("sub", ["MNIST/raw", "raw"])
def test_nested_layouts(tmp_path, pair_writer, sub):
    pair_writer(tmp_path / sub, "train", 40, seed=4)
    pair_writer(tmp_path / sub, "t10k", 20, seed=5)
    assert len(load(tmp_path).test) == 20


def test_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match=r"dataset.path=.*nope does not exist") as info:
        load(tmp_path / "nope")
    assert "\n" not in str(info.value)


def test_folder_without_idx_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # half a pair is not a pair
    with pytest.raises(ArtifactError, match="dataset.path=.* holds no complete MNIST IDX pair.*t10k-labels-idx1-ubyte"):
        load(tmp_path)


def test_mismatched_counts(tmp_path, pair_writer):
    pair_writer(tmp_path, "t10k", 30, seed=6)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(ArtifactError, match="dataset.path: .*30 images but .*29 labels"):
        read_pairs(tmp_path)


def test_bad_magic_in_folder(tmp_path, pair_writer):
    pair_writer(tmp_path, "t10k", 30, seed=6, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x99\x03" + bytes(12))
    with pytest.raises(ArtifactError, match="dataset.path: .* is not an IDX file"):
        load(tmp_path)


def test_relative_path_without_hydra(tmp_path, pair_writer, monkeypatch):
    pair_writer(tmp_path / "data", "t10k", 30, seed=7)
    monkeypatch.chdir(tmp_path)
    assert len(load("data").test) == 6


def test_real_shared_t10k():
    if not SHARED_MNIST.is_dir():
        pytest.skip("needs ../shared/data/mnist (real MNIST t10k split) beside the project")
    s = load(SHARED_MNIST)
    assert len(s.train) + len(s.val) + len(s.test) == 10_000
    assert s.input_shape == (28, 28) and s.train.x.shape[1] == 784
    labels = torch.cat([s.train.y, s.val.y, s.test.y])
    assert labels.min() == 0 and labels.max() == 9 and len(labels.unique()) == 10
    assert 0 <= s.train.x.min() and s.train.x.max() <= 1


def test_relative_path_under_hydra_resolves_against_original_cwd(tmp_path, pair_writer, monkeypatch):
    import hydra.utils
    from hydra.core.hydra_config import HydraConfig

    pair_writer(tmp_path / "launch" / "data", "t10k", 30, seed=8)
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")  # Hydra's run folder; the data sits beside where the user launched
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(hydra.utils, "to_absolute_path", lambda p: str(tmp_path / "launch" / p))
    s = load("data")
    assert str(tmp_path / "launch" / "data") in s.source
