"""Sharpening strategies behind a registry keyed by `sharpening.type`."""

from sae_ception.sharpening import per_class, per_example, random_target  # noqa: F401  (register)
from sae_ception.sharpening.base import SHARPENERS, Sharpener, SharpeningConfig, top_k_mask


def build_sharpener(cfg: SharpeningConfig) -> Sharpener:
    return SHARPENERS.get(cfg.type)(cfg)


__all__ = ["SHARPENERS", "Sharpener", "SharpeningConfig", "build_sharpener", "top_k_mask"]
