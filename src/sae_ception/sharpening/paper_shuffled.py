"""The paper code's accidental pairing, as a control: ANOTHER example's code under THIS example's mask.

In the paper's public code (Alex-Bishka/SAE-ception, DIGIT-MNIST/gen_targets.py with
models_and_data/model_helpers.py `get_sublabel_data`), the SAE codes were gathered through a shuffled data loader
while the labels and images were walked in the original order. The class features (top latents by class-mean
code) were computed on correctly paired codes and labels, so example i's target was
decode(z_{pi(i)} * mask_{class(i)}): the code of another example pi(i), kept on example i's class latents. That
is what the published SAE-ception models were trained towards.

Here pi is a seeded random derangement (as `shuffled`), fixed for the cycle, and the mask is the reference
sharpener's mask of example i (`sharpening.reference`: per_class gives the paper's class mask; per_example gives
example i's own top latents applied to another example's code).
"""

import torch

from sae_ception.errors import ArtifactError
from sae_ception.sharpening.base import SHARPENERS, decode_batched, encode_batched
from sae_ception.sharpening.reference import ReferencedSharpener
from sae_ception.sharpening.shuffled import random_derangement


@SHARPENERS.register("paper_shuffled")
class PaperShuffledSharpener(ReferencedSharpener):
    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """targets[i] = decode(codes[source[i]] * mask[i]), mask the reference sharpener's keep mask of example i
        (on correctly paired codes and labels), source a random derangement. [N, D], raw space."""
        if len(acts_ND) < 2:
            raise ArtifactError(f"sharpening=paper_shuffled needs at least 2 training examples (each takes "
                                f"another's code), got {len(acts_ND)}")
        codes_NF = encode_batched(sae, acts_ND, batch_size)
        mask_NF = self.reference_sharpener().keep_mask(codes_NF, labels_N)
        shuffled_NF = codes_NF[random_derangement(len(codes_NF), generator)]
        return decode_batched(sae, shuffled_NF * mask_NF, batch_size)
