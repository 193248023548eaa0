"""What every classifier must offer the pipeline: where the target activation lives, and how to rebuild it."""

from dataclasses import dataclass

from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.registry import Registry

MODELS: Registry = Registry("model", "model.name")


@dataclass
class ModelConfig:
    """Architecture plus the baseline's training schedule (cycle 0)."""

    name: str = "mlp"
    epochs: int = 30  # baseline training epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    keep_best: bool = True  # keep the epoch with the best validation accuracy (else the last)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"model.epochs={self.epochs} must be >= 0")
        if self.batch_size <= 0:
            raise ConfigError(f"model.batch_size={self.batch_size} must be a positive integer")
        if self.lr <= 0:
            raise ConfigError(f"model.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"model.weight_decay={self.weight_decay} must be >= 0")


class Classifier(nn.Module):
    """A classifier whose `target_module()` output is the activation SAE-ception reads and sharpens."""

    config_class = ModelConfig

    def target_module(self) -> nn.Module:
        raise NotImplementedError

    def target_width(self) -> int:
        """Width of the target activation (the SAE's input size)."""
        raise NotImplementedError

    def build_meta(self) -> dict:
        """What `build_model` needs to rebuild this exact architecture from a checkpoint."""
        raise NotImplementedError
