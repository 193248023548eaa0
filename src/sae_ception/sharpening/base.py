"""Sharpeners turn SAE N's codes of the training examples into one target activation per example.

A sharpener is one class behind the `sharpening.type` registry. The base encodes every example, keeps a
mask of latents per example (the subclass chooses it) and decodes; controls override `make_targets`.
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from sae_ception.errors import ConfigError
from sae_ception.registry import Registry

SHARPENERS: Registry = Registry("sharpening strategy", "sharpening.type")


@dataclass
class SharpeningConfig:
    type: str = "per_class"
    top_k_pct: float = 10.0  # percentage of the SAE width kept per example; must be in (0, 100]
    top_k: Optional[int] = None  # latents kept per example (absolute); when set it replaces top_k_pct

    def __post_init__(self) -> None:
        if not 0 < self.top_k_pct <= 100:
            raise ConfigError(f"sharpening.top_k_pct={self.top_k_pct} must be in (0, 100] (a percentage of the SAE width)")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"sharpening.top_k={self.top_k} must be a positive integer (latents kept per example), "
                              "or null to use sharpening.top_k_pct")

    def validate_for(self, d_sae: int) -> None:
        """Checks that need the SAE width: `top_k` must be in 1..d_sae. Raises a one-line ConfigError."""
        if self.top_k is not None and self.top_k > d_sae:
            raise ConfigError(f"sharpening.top_k={self.top_k} is larger than the SAE width {d_sae} (sae.d_sae); "
                              f"valid: 1..{d_sae}")

    def num_kept(self, d_sae: int) -> int:
        """How many latents are kept: `top_k` when set (ConfigError if > d_sae), else ceil(pct% of the width),
        so any positive percentage keeps >= 1."""
        if self.top_k is not None:
            self.validate_for(d_sae)
            return self.top_k
        return max(1, min(d_sae, math.ceil(self.top_k_pct * d_sae / 100 - 1e-9)))

    def kept_description(self) -> str:
        """`top 25 latents` or `top 10%`, for logs."""
        return f"top {self.top_k} latents" if self.top_k is not None else f"top {self.top_k_pct:.3g}%"


class Sharpener:
    """Base: encode, keep a mask of latents per example, decode. Subclasses choose the mask."""

    config_class = SharpeningConfig
    control: ClassVar[bool] = False  # True for controls: they are not a valid `sharpening.reference`
    uses_top_k: ClassVar[bool] = True  # whether top_k / top_k_pct shape the targets (for `describe`)

    def __init__(self, cfg: SharpeningConfig):
        self.cfg = cfg

    def describe(self) -> str:
        """One phrase for logs, e.g. `per_class, top 25 latents` or `class_mean`."""
        return f"{self.cfg.type}, {self.cfg.kept_description()}" if self.uses_top_k else self.cfg.type

    def keep_mask(self, codes_NF: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def make_targets(
        self, sae, acts_ND: torch.Tensor, labels_N: torch.Tensor, generator: torch.Generator, batch_size: int = 4096
    ) -> torch.Tensor:
        """Target activation per example, [N, D] raw space: decode(code * mask). Batched to bound memory."""
        codes_NF = encode_batched(sae, acts_ND, batch_size)
        mask_NF = self.keep_mask(codes_NF, labels_N)
        return decode_batched(sae, codes_NF * mask_NF, batch_size)


def encode_batched(sae, acts_ND: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SAE codes [N, F] of raw activations [N, D], encoded `batch_size` rows at a time."""
    return torch.cat([sae.encode(chunk) for chunk in acts_ND.split(batch_size)])


def decode_batched(sae, codes_NF: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Raw-space decodings [N, D] of codes [N, F] (decoder bias included), `batch_size` rows at a time."""
    return torch.cat([sae.decode(chunk) for chunk in codes_NF.split(batch_size)])


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 on the k largest entries of each row, 0.0 elsewhere (ties broken by index, deterministically)."""
    idx = torch.topk(scores, k, dim=-1, sorted=False).indices
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)
