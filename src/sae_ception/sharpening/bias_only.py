"""The decoder-bias control: every example's target is the SAE's decoding of the all-zero code.

That is the decoder bias mapped to the raw activation space (b_dec, denormalised): the one part of every
sharpened target that owes nothing to the example's features. One target for all examples.
"""

import torch

from sae_ception.sharpening.base import SHARPENERS, Sharpener


@SHARPENERS.register("bias_only")
class BiasOnlySharpener(Sharpener):
    control = True
    uses_top_k = False

    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """targets[i] = sae.decode(0) for every i. [N, D], raw space. The code's width, dtype and device come
        from encoding one example, so any SAE type works. `labels_N` and `generator` are unused."""
        zero_code_1F = torch.zeros_like(sae.encode(acts_ND[:1]))
        return sae.decode(zero_code_1F).repeat(len(acts_ND), 1)
