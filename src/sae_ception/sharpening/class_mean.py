"""The class-mean control: each example's target is the mean activation of its class under model N.

A supervised target that uses the labels but no SAE: if it does as well as SAE-ception, the SAE adds nothing.
The means are over the training examples given (those the auxiliary loss is trained on).
"""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener


@SHARPENERS.register("class_mean")
class ClassMeanSharpener(Sharpener):
    control = True
    uses_top_k = False

    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """targets[i] = mean of acts_ND[j] over the j with labels_N[j] == labels_N[i]. [N, D], raw space, at
        least float32 (sums accumulate in float64, `batch_size` rows at a time, so memory-mapped activations
        stream). `sae` and `generator` are unused."""
        labels_N = labels_N.long()
        num_classes = int(labels_N.max()) + 1
        sums_CD = torch.zeros(num_classes, acts_ND.shape[1], dtype=torch.float64)
        for acts_BD, labels_B in zip(acts_ND.split(batch_size), labels_N.split(batch_size)):
            sums_CD.index_add_(0, labels_B, acts_BD.to(torch.float64))
        counts_C = torch.bincount(labels_N, minlength=num_classes).clamp_min(1)
        means_CD = (sums_CD / counts_C[:, None]).to(torch.promote_types(acts_ND.dtype, torch.float32))
        return means_CD[labels_N]
