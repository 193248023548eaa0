"""Weight-level access to an MLP classifier for surgery: its Linear layers and every hidden layer's activation.

Surgery reads and writes weights, so it needs a model made of Linear layers (models/mlp.py); other classifiers
are refused in one line by the methods that need this."""

from __future__ import annotations

import torch
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.models.mlp import MLPClassifier


def linear_layers(model: nn.Module, setting: str = "model_a.name") -> list[nn.Linear]:
    """[hidden layer 1, ..., hidden layer L, head]: each hidden block's Linear, then the output Linear.
    Weight shapes (out, in); hidden layer l's units are the rows of layer l and the columns of layer l+1."""
    if not isinstance(model, MLPClassifier):
        raise ConfigError(f"{setting}: weight surgery reads the Linear layers of an MLP classifier (model=mlp_*), "
                          f"not a {type(model).__name__}")
    return [block[0] for block in model.blocks] + [model.head]


@torch.no_grad()
def hidden_activations(model: MLPClassifier, x: torch.Tensor, batch_size: int = 1024) -> list[torch.Tensor]:
    """Every hidden layer's post-ReLU output for inputs x (N, D) in eval mode: a list of L tensors (N, width_l),
    float32 on the CPU, computed batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    outputs: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    for start in range(0, len(x), batch_size):
        h = x[start:start + batch_size].to(device).flatten(1)
        for index, block in enumerate(model.blocks):
            h = block(h)
            outputs[index].append(h.float().cpu())
    return [torch.cat(parts) if parts else torch.zeros(0, block[0].out_features)
            for parts, block in zip(outputs, model.blocks)]


def penultimate(model: MLPClassifier, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The last hidden layer's output (N, width): the features the head reads."""
    return hidden_activations(model, x, batch_size)[-1]
