"""Sharpening strategies behind a registry keyed by `sharpening.type`: the real ones and the controls."""

from sae_ception.sharpening import (  # noqa: F401  (register)
    bias_only,
    class_mean,
    per_class,
    paper_shuffled,
    per_example,
    random_target,
    random_unit,
    shuffled,
)
from sae_ception.sharpening.base import SHARPENERS, Sharpener, SharpeningConfig, top_k_mask
from sae_ception.sharpening.reference import ReferencedConfig


def build_sharpener(cfg: SharpeningConfig) -> Sharpener:
    return SHARPENERS.get(cfg.type)(cfg)


__all__ = ["SHARPENERS", "ReferencedConfig", "Sharpener", "SharpeningConfig", "build_sharpener", "top_k_mask"]
