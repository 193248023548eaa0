"""The shuffled-target control: every example gets ANOTHER example's whole real target.

The reference sharpener's targets (code and mask of the same example) are permuted across examples by a seeded
random derangement, fixed for the whole auxiliary retraining of a cycle. This is close to, but not exactly, what
the paper's code trained with: there, another example's code was masked with THIS example's class features
(`sharpening=paper_shuffled` reproduces that pairing).

Choice of derangement: a uniformly random cyclic order of the N examples, in which each example takes the
target of the next one. It has no fixed point by construction (no rejection loop), and each example's source
is uniform over the N - 1 others; it is uniform over the (N - 1)! single N-cycles, not over all derangements.
"""

import torch

from sae_ception.errors import ArtifactError
from sae_ception.sharpening.base import SHARPENERS
from sae_ception.sharpening.reference import ReferencedSharpener


def random_derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """source_N (int64) with source[i] != i: example order[j] takes from order[j + 1] (cyclically), where
    `order` is a random permutation drawn from `generator`. Needs n >= 2."""
    order_N = torch.randperm(n, generator=generator)
    source_N = torch.empty(n, dtype=torch.long)
    source_N[order_N] = order_N.roll(-1)
    return source_N


@SHARPENERS.register("shuffled")
class ShuffledSharpener(ReferencedSharpener):
    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """targets[i] = reference_targets[source[i]], source a random derangement. [N, D], raw space."""
        if len(acts_ND) < 2:
            raise ArtifactError(f"sharpening=shuffled needs at least 2 training examples (each takes another's "
                                f"target), got {len(acts_ND)}")
        targets_ND = self.reference_targets(sae, acts_ND, labels_N, generator, batch_size)
        return targets_ND[random_derangement(len(targets_ND), generator)]
