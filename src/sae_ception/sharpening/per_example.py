"""Per-example sharpening: keep each example's own top latents.

How many: `sharpening.top_k` latents when set, else `top_k_pct`% of the SAE width (`SharpeningConfig.num_kept`).
"""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener, top_k_mask


@SHARPENERS.register("per_example")
class PerExampleSharpener(Sharpener):
    def keep_mask(self, codes_NF: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
        return top_k_mask(codes_NF, self.cfg.num_kept(codes_NF.shape[1]))
