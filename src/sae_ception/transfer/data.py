"""The images of a concept-transfer run, by class: what the models train on and what the measures read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_ception.data import DataSplits, Split
from sae_ception.errors import ConfigError
from sae_ception.transfer.config import ConceptConfig


def restrict(split: Split, classes: list[int]) -> Split:
    """The examples of `split` whose label is in `classes` (order kept)."""
    keep = torch.isin(split.y, torch.tensor(list(classes)))
    return Split(split.x[keep], split.y[keep])


def class_order(data: "TransferData", cls: int, sample_seed: int) -> torch.Tensor:
    """Class `cls`'s training-image positions in the run's fixed random order (seeded by `sample_seed` and the
    class alone): every method, and the SAEs of transfer/concepts.py, that asks for the first k gets the same k."""
    pool = data.indices("train", cls)
    order = torch.Generator().manual_seed(sample_seed * 1009 + cls)
    return pool[torch.randperm(len(pool), generator=order)]


@dataclass
class TransferData:
    """The dataset's splits seen through the concept: which images each class has in each split."""

    splits: DataSplits
    concept: ConceptConfig

    def indices(self, split: str, cls: int) -> torch.Tensor:
        """Positions (in the split) of the images of class `cls`, ascending."""
        return torch.nonzero(getattr(self.splits, split).y == cls).flatten()

    def count(self, split: str, cls: int) -> int:
        return int((getattr(self.splits, split).y == cls).sum())

    def subset(self, split: str, classes: list[int]) -> Split:
        return restrict(getattr(self.splits, split), classes)

    def require_target_images(self, setting: str, k: int, given_as: str = "") -> None:
        """ConfigError, one line naming `setting` (and `given_as`, e.g. " (as transfer.x.target_images)"), when the
        training split has fewer than k images of the target class (the preflight of every method with
        `target_images`, and TransferContext.target_images)."""
        available = self.count("train", self.concept.target)
        if k > available:
            raise ConfigError(f"{setting}={k}{given_as} is more than the {available} training images of class "
                              f"{self.concept.target}; give at most {available}")
