"""What the `shuffled` and `random` controls share: the real targets they are matched to.

`sharpening.reference` names the sharpener (any registered non-control type, e.g. per_class) whose targets a
control rearranges or matches in centre and norm; that sharpener runs with the same `top_k` / `top_k_pct`.
"""

from dataclasses import dataclass

import torch

from sae_ception.errors import ConfigError
from sae_ception.sharpening.base import SHARPENERS, Sharpener, SharpeningConfig


def reference_types() -> list[str]:
    """Registered sharpeners a control may take as its reference (every one that is not itself a control)."""
    return [name for name in SHARPENERS.names() if not SHARPENERS.get(name).control]


@dataclass
class ReferencedConfig(SharpeningConfig):
    reference: str = "per_class"  # the sharpener whose targets the control is matched to (not a control)

    def __post_init__(self) -> None:
        super().__post_init__()
        valid = reference_types()
        if self.reference not in valid:
            raise ConfigError(f"sharpening.reference={self.reference!r} is not a sharpener a control can be matched "
                              f"to; valid: {', '.join(valid)}")


class ReferencedSharpener(Sharpener):
    """Base of the controls built from a reference sharpener's targets."""

    config_class = ReferencedConfig
    control = True

    def describe(self) -> str:
        return f"{self.cfg.type} of {self.cfg.reference}, {self.cfg.kept_description()}"

    def reference_sharpener(self) -> Sharpener:
        """The reference sharpener, built with this config's top_k / top_k_pct."""
        reference_class = SHARPENERS.get(self.cfg.reference)
        cfg = reference_class.config_class(type=self.cfg.reference, top_k_pct=self.cfg.top_k_pct, top_k=self.cfg.top_k)
        return reference_class(cfg)

    def reference_targets(self, sae, acts_ND: torch.Tensor, labels_N: torch.Tensor, generator: torch.Generator,
                          batch_size: int = 4096) -> torch.Tensor:
        """The reference sharpener's targets [N, D] (raw space), with this config's top_k / top_k_pct."""
        return self.reference_sharpener().make_targets(sae, acts_ND, labels_N, generator, batch_size)
