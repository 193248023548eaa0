"""The old random-target control: each example's target is a random unit vector (no SAE, no matching).

Kept only to reproduce runs made before `random` was matched to the real targets (before issue 12, every
`sharpening=random` run used this). It is not matched in strength: when activations share a large common
component, its starting cosine loss is near 1, far above the real targets'. Use `random` for new runs.
"""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener


@SHARPENERS.register("random_unit")
class RandomUnitSharpener(Sharpener):
    control = True
    uses_top_k = False

    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """g_i / ||g_i||, g_i iid standard normal from `generator`. [N, D], in the dtype of `acts_ND`."""
        targets_ND = torch.randn(acts_ND.shape, generator=generator, dtype=acts_ND.dtype)
        return targets_ND / targets_ND.norm(dim=-1, keepdim=True).clamp_min(1e-12)
