"""The random-target control: each example's target is a random unit vector, so any gain is not the SAE's."""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener


@SHARPENERS.register("random")
class RandomTargetSharpener(Sharpener):
    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        targets_ND = torch.randn(acts_ND.shape, generator=generator, dtype=acts_ND.dtype)
        return targets_ND / targets_ND.norm(dim=-1, keepdim=True).clamp_min(1e-12)
