"""The `dataset` config group: registered loaders that return seeded train/val/test splits."""

from sae_ception.data import digits, mnist, text  # noqa: F401  (register)
from sae_ception.data.base import DATASETS, DatasetConfig, DataSplits, DatasetSource, Split, load_splits
from sae_ception.data.idx import read_idx, write_idx

__all__ = ["DATASETS", "DataSplits", "DatasetConfig", "DatasetSource", "Split", "load_splits", "read_idx", "write_idx"]
