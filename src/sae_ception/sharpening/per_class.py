"""Per-class sharpening: keep each example's values on its class's top latents by class-mean activation.

How many: `sharpening.top_k` latents when set, else `top_k_pct`% of the SAE width (`SharpeningConfig.num_kept`).
"""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener, top_k_mask


@SHARPENERS.register("per_class")
class PerClassSharpener(Sharpener):
    def keep_mask(self, codes_NF: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
        num_classes = int(labels_N.max()) + 1
        sums_CF = torch.zeros(num_classes, codes_NF.shape[1], dtype=codes_NF.dtype).index_add_(0, labels_N, codes_NF)
        counts_C = torch.bincount(labels_N, minlength=num_classes).clamp_min(1).to(codes_NF.dtype)
        class_means_CF = sums_CF / counts_C[:, None]
        class_mask_CF = top_k_mask(class_means_CF, self.cfg.num_kept(codes_NF.shape[1]))
        return class_mask_CF[labels_N]
