"""The `dataset` config group: its schema, the split containers every stage trains on, and the registry."""

import logging
from dataclasses import dataclass
from typing import Optional, Union

import torch

from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.registry import Registry

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset", "dataset.name")


@dataclass
class DatasetConfig:
    name: str  # a registered dataset: digits, mnist
    path: Optional[str] = None  # local folder to read from; None = the dataset's default source
    val_fraction: float = 0.1  # held out for validation: of train, or of all data when there is no test split
    test_fraction: float = 0.2  # of all data; used only when the source has no separate test split
    max_train_examples: Optional[int] = None  # subsample train (stratified) for quick runs; None = all
    num_classes: int = 10  # labels must lie in [0, num_classes)

    def __post_init__(self) -> None:
        for setting in ("val_fraction", "test_fraction"):
            value = getattr(self, setting)
            if not 0 <= value < 1:
                raise ConfigError(f"dataset.{setting}={value} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"dataset.val_fraction + dataset.test_fraction = {self.val_fraction + self.test_fraction:g} "
                "must be < 1 (something must be left to train on)"
            )
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise ConfigError(f"dataset.max_train_examples={self.max_train_examples} must be a positive integer (or null for all)")
        if self.num_classes < 2:
            raise ConfigError(f"dataset.num_classes={self.num_classes} must be >= 2")


@dataclass
class Split:
    """One split: y int64 (N,); x is float32 (N, features) in [0, 1] for images, a list of N strings for
    raw text, or a dict of (N, L) token tensors once a model's tokenizer has read the text."""

    x: Union[torch.Tensor, list[str], dict[str, torch.Tensor]]
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]  # one example before flattening, e.g. (28, 28); () for text
    source: str  # where the data came from and how it was split, for logs and reports

    @property
    def is_text(self) -> bool:
        return not isinstance(self.train.x, torch.Tensor)

    @property
    def input_dim(self) -> int:
        """Features per example for models that read a flat vector (0 for text)."""
        return 0 if self.is_text else int(self.train.x[0].numel())


class DatasetSource:
    """Base for registered datasets: subclasses set `config_class` and implement `load`."""

    config_class = DatasetConfig

    def load(self, cfg: DatasetConfig, seed: int) -> DataSplits:
        raise NotImplementedError


def load_splits(cfg: DatasetConfig, seed: int) -> DataSplits:
    """Load `cfg.name`'s train/val/test splits; the same seed always gives the same splits."""
    splits = DATASETS.get(cfg.name)().load(cfg, seed)
    present = [s for s in (splits.train, splits.val, splits.test) if len(s)]
    top = max(int(s.y.max()) for s in present)
    low = min(int(s.y.min()) for s in present)
    if low < 0:
        raise ArtifactError(f"dataset {cfg.name}: a label is {low}; labels must be integers in [0, {cfg.num_classes}) "
                            "(dataset.num_classes)")
    if top >= cfg.num_classes:
        raise ConfigError(f"dataset.num_classes={cfg.num_classes} but {cfg.name}'s labels go up to {top}; set it to >= {top + 1}")
    log.info("dataset %s (examples of shape %s): %s", cfg.name, splits.input_shape, splits.source)
    return splits
