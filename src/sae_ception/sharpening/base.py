"""Sharpeners turn an example's SAE code into a target activation that keeps only its salient features."""

import math
from dataclasses import dataclass

import torch

from sae_ception.errors import ConfigError
from sae_ception.registry import Registry

SHARPENERS: Registry = Registry("sharpening strategy", "sharpening.type")


@dataclass
class SharpeningConfig:
    type: str = "per_class"
    top_k_pct: float = 10.0  # percentage of the SAE width kept per example; must be in (0, 100]

    def __post_init__(self) -> None:
        if not 0 < self.top_k_pct <= 100:
            raise ConfigError(f"sharpening.top_k_pct={self.top_k_pct} must be in (0, 100] (a percentage of the SAE width)")

    def num_kept(self, d_sae: int) -> int:
        """How many latents `top_k_pct` keeps: ceil(pct% of the width), so any positive percentage keeps >= 1."""
        return max(1, min(d_sae, math.ceil(self.top_k_pct * d_sae / 100 - 1e-9)))


class Sharpener:
    """Base: encode, keep a mask of latents per example, decode. Subclasses choose the mask."""

    config_class = SharpeningConfig

    def __init__(self, cfg: SharpeningConfig):
        self.cfg = cfg

    def keep_mask(self, codes_NF: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def make_targets(
        self, sae, acts_ND: torch.Tensor, labels_N: torch.Tensor, generator: torch.Generator, batch_size: int = 4096
    ) -> torch.Tensor:
        """Target activation per example: decode(code * mask). Encoding runs in batches to bound memory."""
        codes_NF = torch.cat([sae.encode(chunk) for chunk in acts_ND.split(batch_size)])
        mask_NF = self.keep_mask(codes_NF, labels_N)
        return torch.cat([sae.decode(chunk) for chunk in (codes_NF * mask_NF).split(batch_size)])


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 on the k largest entries of each row, 0.0 elsewhere (ties broken by index, deterministically)."""
    idx = torch.topk(scores, k, dim=-1, sorted=False).indices
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)
