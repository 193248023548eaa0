"""The MLP classifier: hidden blocks of Linear+ReLU, a linear head, one hidden block as the target layer."""

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.models.base import MODELS, Classifier, ModelConfig


@dataclass
class MLPConfig(ModelConfig):
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])  # widths of the hidden layers
    target_layer: int = -1  # which hidden layer's (post-ReLU) output is read; negative counts from the end
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden_sizes:
            raise ConfigError("model.hidden_sizes is empty; give at least one positive width, e.g. [64, 64]")
        for width in self.hidden_sizes:
            if width <= 0:
                raise ConfigError(f"model.hidden_sizes={list(self.hidden_sizes)} has width {width}; every width must be >= 1")
        n = len(self.hidden_sizes)
        if not -n <= self.target_layer < n:
            raise ConfigError(
                f"model.target_layer={self.target_layer} is outside the {n} hidden layers; use {-n}..{n - 1}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")

    def target_width(self) -> int:
        return self.hidden_sizes[self.target_layer]


@MODELS.register("mlp")
class MLPClassifier(Classifier):
    config_class = MLPConfig

    def __init__(self, cfg: MLPConfig, input_dim: int, num_classes: int, pretrained_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.num_classes = num_classes
        widths = [input_dim, *cfg.hidden_sizes]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(cfg.dropout))
            for d_in, d_out in zip(widths[:-1], widths[1:])
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def block_list(self) -> nn.ModuleList:
        return self.blocks

    @classmethod
    def prepare_splits(cls, model_cfg, dataset_cfg, splits, cache_dir=None, write_cache: bool = True):
        if splits.is_text:
            raise ConfigError(f"model.name=mlp reads feature vectors but dataset={dataset_cfg.name} is text; "
                              "use a transformer model (model=minilm, gpt2_small, pythia_70m, ...)")
        return splits

    def build_meta(self) -> dict:
        return {"input_dim": self.input_dim, "num_classes": self.num_classes}
